"""INT8 calibration takes effect: minmax, entropy and percentile each give the graph their ranges make,
on real data (the sample images and the decoder states recorded while captioning them)."""
import numpy as np
import onnx
import pytest

from jetcap.export.calibration import NUM_BINS, FeedReader, calibrate, entropy_threshold, percentile_threshold
from jetcap.export.int8 import quantize_int8
from jetcap.util.fsio import sha256_file
from jetcap.util.npz import load_npz

METHODS = ("minmax", "entropy", "percentile")


def _real_feeds(bundle, graph):
    """The bundle's real-data sweep inputs of ``graph`` (batch 8), split into single-row feeds."""
    reference = load_npz(bundle / "reference.npz")
    prefix = "sweep/{}/real_batch8/in/".format(graph)
    batch = {k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}
    assert batch, "no real sweep case for {}".format(graph)
    return [{k: np.ascontiguousarray(v[i:i + 1]) for k, v in batch.items()} for i in range(8)]


def _activation_scales(path):
    model = onnx.load(str(path))
    return {t.name: float(onnx.numpy_helper.to_array(t)) for t in model.graph.initializer
            if t.name.endswith("_scale") and not t.dims}


# the decoder step's 8 real rows give only ~2 000 values per tensor: its 99.99th percentile is the maximum
@pytest.mark.parametrize("graph,percentile", [("encoder", 99.99), ("decoder_step", 99.9)])
def test_three_methods_give_three_graphs(captioner_bundle, tmp_path, graph, percentile):
    src = captioner_bundle / "{}.onnx".format(graph)
    feeds = _real_feeds(captioner_bundle, graph)
    ranges = {m: calibrate(src, feeds, m, percentile=percentile) for m in METHODS}
    absmax = ranges["minmax"].absmax
    assert ranges["minmax"].thresholds == absmax
    for method in ("entropy", "percentile"):
        thresholds = ranges[method].thresholds
        assert set(thresholds) == set(absmax)
        assert all(thresholds[t] <= absmax[t] * (1 + 1e-6) for t in thresholds)
        clipped = [t for t in thresholds if thresholds[t] < 0.999 * absmax[t]]
        assert clipped, "{} clipped no range of {}".format(method, graph)
    assert ranges["entropy"].thresholds != ranges["percentile"].thresholds

    files = {}
    for method in METHODS:
        dst = tmp_path / "{}.{}.onnx".format(graph, method)
        notes = quantize_int8(src, dst, FeedReader(feeds), method, ranges=ranges[method])
        assert "{} calibration over 8 feeds".format(method) in notes[0]
        files[method] = dst
    assert len({sha256_file(p) for p in files.values()}) == 3  # entropy used to equal minmax byte for byte
    scales = {m: _activation_scales(p) for m, p in files.items()}
    shared = set(scales["minmax"]) & set(scales["entropy"]) & set(scales["percentile"])
    assert shared
    for method in ("entropy", "percentile"):  # activation scale = threshold / 127, never above minmax's
        assert all(scales[method][s] <= scales["minmax"][s] * (1 + 1e-6) for s in shared)
        assert any(scales[method][s] < 0.999 * scales["minmax"][s] for s in shared)


def test_minmax_is_onnxruntimes_own(captioner_bundle, tmp_path):
    """jetcap's min/max ranges give the very graph ONNX Runtime's MinMax calibrator gives."""
    from onnxruntime import quantization as quant

    from jetcap.export.int8 import QDQ_EXTRA_OPTIONS, QUANTIZED_OPS, int8_plan

    src = captioner_bundle / "encoder.onnx"
    feeds = _real_feeds(captioner_bundle, "encoder")
    ours = tmp_path / "ours.onnx"
    quantize_int8(src, ours, FeedReader(feeds), "minmax")
    theirs = tmp_path / "theirs.onnx"
    plan = int8_plan(onnx.load(str(src)))
    quant.quantize_static(str(src), str(theirs), FeedReader(feeds), quant_format=quant.QuantFormat.QDQ,
                          op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=plan.candidates,
                          per_channel=True, activation_type=quant.QuantType.QInt8,
                          weight_type=quant.QuantType.QInt8, calibrate_method=quant.CalibrationMethod.MinMax,
                          extra_options=dict(QDQ_EXTRA_OPTIONS, CalibTensorRangeSymmetric=True))
    assert _activation_scales(ours) == pytest.approx(_activation_scales(theirs), rel=1e-6)


def test_entropy_threshold_clips_outliers_and_matches_the_full_search():
    rng = np.random.default_rng(0)
    for scale in (1.0, 3.0):
        values = np.abs(np.concatenate([rng.normal(0, scale, 200000), [40.0 * scale]]))  # one far outlier
        hist = np.histogram(values, bins=NUM_BINS, range=(0, values.max()))[0]
        threshold = entropy_threshold(hist, values.max())
        assert 2 * scale < threshold < 0.5 * values.max()
        # the coarse-to-fine search lands within a few bins of the exhaustive one
        exhaustive = _exhaustive_entropy(hist, values.max())
        assert abs(threshold - exhaustive) <= 16 * values.max() / NUM_BINS
    hist = np.zeros(NUM_BINS, dtype=np.int64)
    hist[:100] = 1000  # all mass in the first 100 bins: nothing to clip beyond the 128-bin minimum
    assert entropy_threshold(hist, 10.0) == pytest.approx(10.0 * 128.5 / NUM_BINS)


def test_percentile_threshold():
    hist = np.zeros(NUM_BINS, dtype=np.int64)
    hist[:1000] = 1
    hist[-1] = 1  # 1 of 1001 samples at the top: the 99.9th percentile drops it
    assert percentile_threshold(hist, 1.0, 99.9) == pytest.approx(1000 / NUM_BINS)
    assert percentile_threshold(hist, 1.0, 100.0) == 1.0


def _exhaustive_entropy(hist, absmax):
    from jetcap.export import calibration

    stride = calibration.ENTROPY_STRIDE
    try:
        calibration.ENTROPY_STRIDE = 1
        return calibration.entropy_threshold(hist, absmax)
    finally:
        calibration.ENTROPY_STRIDE = stride
