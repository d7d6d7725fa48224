"""Memory-checked loading: the estimates and decisions (pure), real ONNX Runtime loading and refusal,
and the TensorRT refusal through the same pure functions (real TensorRT loading is marked ``trt``)."""
import os

import numpy as np
import pytest

from . import tiny_bundle
from jetcap.errors import InsufficientMemoryError, UsageError
from jetcap.runtime import loader, memory
from jetcap.runtime.backends import trt_api
from jetcap.runtime.manifest import Manifest
from jetcap.util.lazy import available

MIB = 1 << 20
PLENTY = memory.MemoryInfo(mem_available=64 << 30, mem_total=128 << 30)


@pytest.fixture(scope="module")
def linear_bundle(tmp_path_factory):
    bundle, weights = tiny_bundle.make_linear_bundle(str(tmp_path_factory.mktemp("loader") / "bundle"))
    return bundle, weights


# -- pure ----------------------------------------------------------------------------------------
def test_io_bytes_at_max(linear_bundle):
    manifest = Manifest.load(linear_bundle[0])
    # x (8, 4) + y (8, 3) float32 at the largest batch of 8
    assert loader.io_bytes_at_max(manifest.graph("model"), manifest.axes) == (8 * 4 + 8 * 3) * 4


def test_estimate_engine_memory_parts():
    estimate = loader.estimate_engine_memory([
        {"name": "encoder", "file_bytes": 40 * MIB, "device_memory_bytes": 20 * MIB, "io_bytes": 2 * MIB},
        {"name": "decoder_step", "file_bytes": 10 * MIB, "device_memory_bytes": None, "io_bytes": 1 * MIB},
    ])
    parts = dict(estimate.parts)
    assert parts["encoder engine"] == 40 * MIB
    assert parts["encoder activations"] == 20 * MIB
    assert parts["encoder I/O buffers"] == 4 * MIB
    assert parts["decoder_step activations (estimated)"] == loader.MIN_ACTIVATION_BYTES
    assert parts["CUDA + TensorRT runtime"] == loader.TENSORRT_RUNTIME_BYTES
    subtotal = sum(size for label, size in estimate.parts if label != "margin")
    assert parts["margin"] == max(int(subtotal * 0.1), 32 * MIB)
    assert estimate.total_bytes == subtotal + parts["margin"]


def test_tensorrt_runtime_bytes_follow_the_release_and_the_tactic_libraries():
    # the loader counts what the pre-flight counts: cuBLAS + cuDNN loaded by TensorRT 8.2's engines by default
    assert loader.tensorrt_runtime_bytes((8, 2, 1)) == 650 * 10 ** 6
    assert loader.tensorrt_runtime_bytes((8, 2, 1), tactic_libraries=False) == 250 * 10 ** 6
    assert loader.tensorrt_runtime_bytes((10, 3, 0)) == 250 * 10 ** 6
    assert loader.tensorrt_runtime_bytes((8, 2, 1)) > loader.TENSORRT_RUNTIME_BYTES


def test_estimate_onnx_memory_parts():
    estimate = loader.estimate_onnx_memory([{"name": "model", "file_bytes": 10 * MIB, "io_bytes": MIB}])
    parts = dict(estimate.parts)
    assert parts["model weights + graph"] == 20 * MIB
    assert parts["model arena + I/O"] == loader.ONNXRUNTIME_ARENA_BYTES + 2 * MIB
    assert estimate.total_bytes == sum(parts.values())


@pytest.mark.parametrize("need, available, budget, fits, source", [
    (100, 200, None, True, "available"),
    (300, 200, None, False, "available"),
    (100, 200, 50, False, "budget"),
    (100, 200, 150, True, "budget"),
    (100, None, None, True, None),      # nothing known: do not refuse
    (100, None, 99, False, "budget"),
    (100, 50, 500, False, "available"),  # the smaller limit wins
])
def test_check_budget(need, available, budget, fits, source):
    decision = loader.check_budget(loader.MemoryEstimate(need, [("x", need)]), available, budget)
    assert decision.fits is fits and decision.limit_source == source and decision.need_bytes == need


def test_tensorrt_refusal_with_tiny_budget_gives_numbers_and_advice():
    estimate = loader.estimate_engine_memory([
        {"name": "encoder", "file_bytes": 40 * MIB, "device_memory_bytes": None, "io_bytes": MIB}])
    with pytest.raises(InsufficientMemoryError) as info:
        loader.require_fits(estimate, available=3 << 30, budget=8 * MIB, backend="tensorrt", what="the engines")
    text = str(info.value)
    assert info.value.exit_code == 2
    assert "budget of 8.0 MiB" in text and "encoder engine 40.0 MiB" in text
    assert "--workspace-mb" in text and "fp16" in text and "multi-user.target" in text


def test_tensorrt_on_a_jetson_counts_system_memory():
    info = memory.MemoryInfo(mem_available=900 * MIB, cgroup_version=2, cgroup_limit=2 << 30,
                             cgroup_available=500 * MIB)
    available, text = loader.tensorrt_available_memory(True, info)
    assert available == 500 * MIB and "shares" in text
    available, _ = loader.tensorrt_available_memory(False, info, free_device_bytes=10 << 30)
    assert available == 10 << 30
    with pytest.raises(InsufficientMemoryError, match="available"):
        loader.require_fits(loader.MemoryEstimate(600 * MIB, [("engines", 600 * MIB)]),
                            500 * MIB, None, "tensorrt", available_text=text)


def test_parse_vm_rss():
    assert loader.parse_vm_rss("Name:\tpython\nVmRSS:\t  123456 kB\nVmSwap: 0 kB\n") == 123456 * 1024
    assert loader.parse_vm_rss("Name: x\n") is None
    rss = loader.current_rss_bytes()
    assert rss is None or rss > 0


# -- ONNX Runtime, real --------------------------------------------------------------------------
@pytest.mark.skipif(not available("onnxruntime"), reason="needs onnxruntime")
def test_onnxruntime_refuses_a_tiny_budget_before_loading(linear_bundle):
    bundle, _ = linear_bundle
    with pytest.raises(InsufficientMemoryError) as info:
        loader.load_onnxruntime(bundle, max_memory_mb=1, memory_info=PLENTY)
    text = str(info.value)
    assert "onnxruntime" in text and "budget of 1.0 MiB" in text and "model weights + graph" in text
    assert "--precision" in text


@pytest.mark.skipif(not available("onnxruntime"), reason="needs onnxruntime")
def test_onnxruntime_refuses_when_the_system_has_too_little(linear_bundle):
    bundle, _ = linear_bundle
    scarce = memory.MemoryInfo(mem_available=10 * MIB, mem_total=4 << 30)
    with pytest.raises(InsufficientMemoryError, match="MemAvailable 10.0 MiB"):
        loader.load_onnxruntime(bundle, memory_info=scarce)


@pytest.mark.skipif(not available("onnxruntime"), reason="needs onnxruntime")
def test_onnxruntime_loads_within_budget_and_reports_rss(linear_bundle):
    bundle, weights = linear_bundle
    lines = []
    with loader.load_runners(bundle, "onnxruntime", "fp32", max_memory_mb=4096, log=lines.append,
                             memory_info=PLENTY) as loaded:
        assert loaded.decision.fits and loaded.decision.limit_source == "budget"
        x = np.random.RandomState(0).uniform(-1, 1, (2, 4)).astype(np.float32)
        y = loaded.runners["model"].infer({"x": x})["y"]
        np.testing.assert_allclose(y, np.maximum(x.dot(weights), 0), atol=1e-5)
        if os.path.exists("/proc/self/status"):
            assert isinstance(loaded.rss_delta, int)
        assert lines and "estimated" in lines[0] and "resident memory grew by" in lines[0]
    assert not loaded.runners["model"].is_active


def test_load_runners_rejects_unknown_backend(linear_bundle):
    with pytest.raises(UsageError):
        loader.load_runners(linear_bundle[0], "tvm", "fp32")
    with pytest.raises(UsageError):
        loader.load_onnxruntime(linear_bundle[0], max_memory_mb=0)


# -- TensorRT, real ------------------------------------------------------------------------------
@pytest.mark.trt
@pytest.mark.skipif(not (trt_api.tensorrt_available() and available("pycuda.driver")),
                    reason="needs a real TensorRT installation and pycuda")
def test_tensorrt_loader_records_device_memory_and_refuses_tiny_budget(tmp_path):
    from jetcap.runtime import engine

    bundle, weights = tiny_bundle.make_linear_bundle(str(tmp_path / "bundle"), precisions=("fp32",))
    engine.build_engines(bundle, precision="fp32")
    with pytest.raises(InsufficientMemoryError):
        loader.load_tensorrt(bundle, precision="fp32", max_memory_mb=1)
    with loader.load_tensorrt(bundle, precision="fp32", max_memory_mb=4096) as loaded:
        x = np.ones((2, 4), dtype=np.float32)
        np.testing.assert_allclose(loaded.runners["model"].infer({"x": x})["y"], np.maximum(x.dot(weights), 0),
                                   atol=1e-4)
    cached = engine.find_engines(Manifest.load(bundle), "fp32")["model"]
    assert isinstance(cached.sidecar.get("device_memory_bytes"), int)
    assert os.path.isfile(cached.path)
