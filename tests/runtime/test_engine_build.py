"""``build_engines``: input checks everywhere; real builds where TensorRT is installed (marker ``trt``)."""
import json
import os

import numpy as np
import pytest

from . import tiny_bundle
from jetcap.errors import BundleError, MissingDependencyError, UsageError
from jetcap.runtime import engine, platform
from jetcap.runtime.backends import trt_api
from jetcap.runtime.manifest import Manifest
from jetcap.util.lazy import available

HAVE_TRT = trt_api.tensorrt_available()
needs_trt = pytest.mark.skipif(not HAVE_TRT, reason="needs a real TensorRT installation (import tensorrt fails here)")
needs_cuda = pytest.mark.skipif(not (HAVE_TRT and available("pycuda.driver")),
                                reason="needs a real TensorRT installation and pycuda to run engines")


@pytest.fixture(scope="module")
def linear_bundle(tmp_path_factory):
    bundle, weights = tiny_bundle.make_linear_bundle(str(tmp_path_factory.mktemp("linear") / "bundle"))
    return bundle, weights


def test_bad_inputs_are_reported_before_tensorrt_is_needed(linear_bundle, tmp_path):
    bundle, _ = linear_bundle
    with pytest.raises(BundleError, match="not found"):
        engine.build_engines(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="precision"):
        engine.build_engines(bundle, precision="bf16")
    with pytest.raises(UsageError, match="workspace"):
        engine.build_engines(bundle, workspace_mb=0)
    with pytest.raises(BundleError, match="no graph"):
        engine.build_engines(bundle, graphs=["decoder"])


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_build_names_what_to_install(linear_bundle):
    bundle, _ = linear_bundle
    lines = []
    with pytest.raises(MissingDependencyError) as info:
        engine.build_engines(bundle, log=lines.append)
    assert info.value.exit_code == 2
    assert "tensorrt" in str(info.value).lower() and "JetPack" in str(info.value)
    assert not os.path.exists(os.path.join(bundle, "engines"))


def test_opset_newer_than_the_parser_is_refused(tmp_path):
    bundle, _ = tiny_bundle.make_linear_bundle(str(tmp_path / "b"), precisions=("fp32",))
    path = os.path.join(bundle, "manifest.json")
    with open(path) as handle:
        data = json.load(handle)
    data["export"]["opset"] = 17
    with open(path, "w") as handle:
        json.dump(data, handle)
    manifest = Manifest.load(bundle)
    with pytest.raises(UsageError) as info:
        engine.check_opset(manifest, "8.2.1.8")
    assert "opset 17" in str(info.value) and "--opset 13" in str(info.value)
    engine.check_opset(manifest, "10.3.0")  # newer parsers: left to the parser


# -- real TensorRT (Jetson / workstation) --------------------------------------------------------
def _reference(x, weights):
    return np.maximum(x.dot(weights), 0.0)


def _gpu_support():
    gpu = platform.detect_gpu()
    return platform.precision_support(gpu.compute_capability if gpu else None)


@pytest.mark.trt
@needs_trt
def test_build_caches_and_rebuilds_on_force(linear_bundle, tmp_path):
    bundle, _ = linear_bundle
    cache = str(tmp_path / "cache")
    timing = str(tmp_path / "timing.cache")
    lines = []
    first = engine.build_engines(bundle, precision="fp32", cache_dir=cache, timing_cache=timing, log=lines.append)
    assert [e["cached"] for e in first["engines"]] == [False]
    assert os.path.isfile(first["engines"][0]["path"]) and os.path.isfile(timing)
    assert any("built in" in line for line in lines)
    second = engine.build_engines(bundle, precision="fp32", cache_dir=cache)
    assert [e["cached"] for e in second["engines"]] == [True]
    assert second["engines"][0]["path"] == first["engines"][0]["path"]
    forced = engine.build_engines(bundle, precision="fp32", cache_dir=cache, force=True)
    assert [e["cached"] for e in forced["engines"]] == [False]
    manifest = Manifest.load(bundle)
    found = engine.find_engines(manifest, "fp32", cache_dir=cache)
    assert found["model"].path == first["engines"][0]["path"]


@pytest.mark.trt
@needs_trt
@needs_cuda
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("fp16", 2e-2), ("int8", 0.1)])
def test_built_engine_matches_numpy(linear_bundle, tmp_path, precision, atol):
    from jetcap.runtime.backends.tensorrt import TensorRTRunner

    fast_fp16, fast_int8 = _gpu_support()
    if precision == "int8" and fast_int8 is False:
        with pytest.raises(UsageError, match="no fast INT8"):
            engine.build_engines(linear_bundle[0], precision="int8", cache_dir=str(tmp_path))
        pytest.skip("this GPU has no fast INT8 (refusal verified)")
    bundle, weights = linear_bundle
    report = engine.build_engines(bundle, precision=precision, cache_dir=str(tmp_path))
    manifest = Manifest.load(bundle)
    rng = np.random.RandomState(1)
    with TensorRTRunner(report["engines"][0]["path"], manifest.graph("model")) as runner:
        for batch in (1, 3, 8):
            x = rng.uniform(-1, 1, size=(batch, 4)).astype(np.float32)
            y = runner.infer({"x": x})["y"]
            assert y.shape == (batch, 3)
            np.testing.assert_allclose(y, _reference(x, weights), atol=atol)
        with pytest.raises(UsageError, match="optimization profile"):
            runner.infer({"x": np.zeros((9, 4), dtype=np.float32)})
