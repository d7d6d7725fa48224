"""The model's own caption stability under input noise far below one pixel step, on the real sample bundle."""
import numpy as np

from jetcap.runtime.manifest import Manifest
from jetcap.runtime.pipeline import CaptionPipeline, open_onnxruntime
from jetcap.util.npz import load_npz
from jetcap.validate.stability import PIXEL_NOISE, CaptionStability, caption_stability, pixel_noise

PREPROCESSING = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "scale": 1.0 / 255.0,
                 "layout": "NCHW"}


def test_noise_is_a_share_of_the_pixel_range_added_before_normalisation():
    images = np.zeros((4, 3, 64, 64), dtype=np.float32)
    noisy = pixel_noise(images, 0.01, PREPROCESSING, seed=3)
    pixels = (noisy - images) * np.asarray(PREPROCESSING["std"], dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    assert abs(float(pixels.std()) - 2.55) < 0.05  # 1 % of 0..255
    assert abs(float(pixels.mean())) < 0.05
    assert np.array_equal(noisy, pixel_noise(images, 0.01, PREPROCESSING, seed=3))  # seeded
    assert not np.array_equal(noisy, pixel_noise(images, 0.01, PREPROCESSING, seed=4))


def test_channels_last_layouts_scale_the_last_axis():
    images = np.zeros((2, 64, 64, 3), dtype=np.float32)
    noisy = pixel_noise(images, 0.01, dict(PREPROCESSING, layout="NHWC", std=[0.1, 1.0, 1.0]), seed=1)
    spread = noisy.reshape(-1, 3).std(axis=0)
    assert spread[0] > 9 * spread[1]  # the first channel's std is 10x smaller: its noise 10x larger


def test_summary_and_record():
    result = CaptionStability(0.001, 195, 200)
    assert result.fraction == 0.975
    assert "0.10%" in result.summary() and "195/200" in result.summary()
    assert result.to_dict() == {"pixel_noise": 0.001, "greedy_unchanged": 195, "count": 200, "fraction": 0.975}
    assert CaptionStability(0.001, 0, 0).fraction == 1.0


def test_stability_of_the_sample_captioner(captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    reference = load_npz(captioner_bundle / "reference.npz")
    images = reference["task/images"]
    greedy = [[int(t) for t in row if t >= 0] for row in reference["task/greedy_tokens"]]
    runners = open_onnxruntime(manifest, "fp32")
    for runner in runners.values():
        runner.activate()
    try:
        pipeline = CaptionPipeline(manifest, runners)
        unperturbed = caption_stability(pipeline, images, greedy, level=0.0)
        assert (unperturbed.same, unperturbed.count) == (len(images), len(images))  # FP32 ORT = PyTorch here
        tiny = caption_stability(pipeline, images, greedy)
        assert tiny.level == PIXEL_NOISE and tiny.count == len(images)
        drowned = caption_stability(pipeline, images, greedy, level=2.0)  # noise twice the pixel range
        assert drowned.same < len(images)
    finally:
        for runner in runners.values():
            runner.deactivate()
