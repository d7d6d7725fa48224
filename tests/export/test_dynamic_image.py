"""`jetcap export --dynamic-image-size`: the captioner's input height/width and feature-pixel count
as dynamic axes, run by ONNX Runtime at every size of the range and validated; refusals exit 2."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from jetcap import samples
from jetcap.cli import cli
from jetcap.models.captioner import DecoderStepGraph, EncoderGraph, MobileNetCaptioningModel
from jetcap.models.checkpoint import load_checkpoint

MIN, OPT, MAX = 64, 96, 160  # the sample captioner is trained at 96


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def pixels(size):
    return (-(-size // 32)) ** 2


@pytest.fixture(scope="module")
def dynamic_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("dynimg") / "bundle"
    result = run(["export", str(samples.captioner_checkpoint()), "-o", str(out), "--dynamic-image-size",
                  "--min-image-size", str(MIN), "--max-image-size", str(MAX), "--precision", "fp16",
                  "--precision", "int8", "--calibration-samples", "8", "--max-batch", "2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["validation"] == {"fp32": True, "fp16": True, "int8": True}
    return out


def test_manifest_records_the_image_axes(dynamic_bundle):
    manifest = json.loads((dynamic_bundle / "manifest.json").read_text())
    sizes = {"min": MIN, "opt": OPT, "max": MAX}
    assert manifest["axes"]["height"] == sizes and manifest["axes"]["width"] == sizes
    assert manifest["axes"]["num_pixels"] == {k: pixels(v) for k, v in sizes.items()}
    encoder, step = manifest["graphs"]["encoder"], manifest["graphs"]["decoder_step"]
    assert encoder["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert encoder["outputs"][0]["shape"][:2] == ["batch", "num_pixels"]
    assert {t["name"]: t["shape"][1] for t in step["inputs"] if len(t["shape"]) == 3} == {
        "features": "num_pixels", "projected": "num_pixels"}
    assert manifest["config"]["dynamic_image_size"] is True
    # the runtime keeps resizing to the opt size; the range is recorded for callers
    assert manifest["preprocessing"]["image_size"] == [OPT, OPT]
    assert manifest["preprocessing"]["image_size_range"] == [MIN, MAX]
    # each graph's sweep covers only its own axes, at min/opt/max
    cases = manifest["reference"]["cases"]
    assert {tuple(sorted(c["axes"])) for c in cases["encoder"]} == {("batch", "height", "width")}
    assert {c["axes"]["height"] for c in cases["encoder"]} == {MIN, OPT, MAX}
    assert {tuple(sorted(c["axes"])) for c in cases["decoder_step"]} == {("batch", "num_pixels")}
    assert {c["axes"]["num_pixels"] for c in cases["decoder_step"]} == {pixels(MIN), pixels(OPT), pixels(MAX)}


def test_onnxruntime_runs_every_size_like_pytorch(dynamic_bundle):
    model = load_checkpoint(samples.captioner_checkpoint()).model.eval()
    encoder = ort.InferenceSession(str(dynamic_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(dynamic_bundle / "decoder_step.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.RandomState(0)
    for size in (MIN, OPT, MAX):
        images = rng.normal(0.0, 1.0, size=(2, 3, size, size)).astype(np.float32)
        features, projected, h, c = encoder.run(None, {"images": images})
        assert features.shape == (2, pixels(size), 576) and projected.shape[1] == pixels(size)
        words = np.array([1, 2], dtype=np.int64)
        log_probs, alpha = step.run(["log_probs", "alpha"], {"prev_word": words, "h": h, "c": c,
                                                             "features": features, "projected": projected})
        assert alpha.shape == (2, pixels(size))
        with torch.no_grad():
            expected = EncoderGraph(model)(torch.from_numpy(images))
            expected_step = DecoderStepGraph(model)(torch.from_numpy(words), *[torch.from_numpy(a) for a in (
                h, c, features, projected)])
        np.testing.assert_allclose(features, expected[0].numpy(), atol=1e-3, rtol=1e-3)
        np.testing.assert_allclose(log_probs, expected_step[0].numpy(), atol=1e-3, rtol=1e-3)
        np.testing.assert_allclose(alpha, expected_step[3].numpy(), atol=1e-4, rtol=1e-3)


def test_validate_passes_on_the_dynamic_bundle(dynamic_bundle):
    result = run(["validate", str(dynamic_bundle), "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    assert "height160_width160" in result.output or "num_pixels25" in result.output


def test_adaptive_pooling_captioner_is_refused(tmp_path):
    ckpt = torch.load(str(samples.captioner_checkpoint()), weights_only=True)
    config = dict(ckpt["config"], grid=7, embed_dim=8, decoder_dim=16, attention_dim=8)
    model = MobileNetCaptioningModel(vocab_size=config["vocab_size"], embed_dim=8, decoder_dim=16, attention_dim=8,
                                     backbone=config["backbone"], grid=7)
    tiny = tmp_path / "grid7.pt"
    torch.save({"model_state_dict": model.state_dict(), "config": config, "word_map": ckpt["word_map"]}, str(tiny))
    result = run(["export", str(tiny), "-o", str(tmp_path / "b"), "--dynamic-image-size"])
    assert result.exit_code == 2, result.output
    assert "adaptive pooling" in result.output and "grid=7" in result.output
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("checkpoint,args,message", [
    ("captioner", ["--min-image-size", "64"], "need --dynamic-image-size"),
    ("captioner", ["--dynamic-image-size", "--min-image-size", "128"], "--min-image-size <= --image-size"),
    ("captioner", ["--dynamic-image-size", "--min-image-size", "16"], "32 <="),
    ("classifier", ["--dynamic-image-size"], "captioners only"),
    ("captioner", ["--dynamic-image-size", "--precision", "int8", "--calibration-method", "entropy"],
     "needs --calibration-method minmax"),
])
def test_bad_image_size_options_exit_2(tmp_path, checkpoint, args, message):
    path = getattr(samples, checkpoint + "_checkpoint")()
    result = run(["export", str(path), "-o", str(tmp_path / "b")] + args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "b").exists()
