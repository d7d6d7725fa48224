"""open_bundle: backend choice and its reason, memory check before loading, errors, closing."""
import json
import re
import shutil

import pytest

from jetcap.errors import BundleError, InsufficientMemoryError, MissingDependencyError, UsageError
from jetcap.runtime.backends.trt_api import tensorrt_available
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.session import choose_backend, open_bundle, sequence_limits, tensorrt_unavailable_reason

no_tensorrt = pytest.mark.skipif(tensorrt_available(), reason="a usable TensorRT is installed here")


@no_tensorrt
def test_auto_falls_back_to_onnxruntime_and_says_why(captioner_bundle):
    with open_bundle(captioner_bundle) as session:
        assert session.backend == "onnxruntime" and session.precision == "fp32"
        assert session.reason.startswith("tensorrt not installed")
        assert session.describe() == "onnxruntime fp32 ({})".format(session.reason)
        assert set(session.runners) == {"encoder", "decoder_step"}
        assert all(runner.is_active for runner in session.runners.values())
        assert session.loaded.estimate.total_bytes > 0 and session.load_seconds > 0
        runners = list(session.runners.values())
    assert session.closed and not any(runner.is_active for runner in runners)
    session.close()  # twice is fine


def test_log_receives_the_loader_summary(classifier_bundle):
    lines = []
    with open_bundle(classifier_bundle, backend="onnxruntime", precision="fp16", log=lines.append) as session:
        assert session.reason == "requested" and session.precision == "fp16"
    assert len(lines) == 1 and "onnxruntime" in lines[0] and "fp16" in lines[0]


@no_tensorrt
def test_forced_tensorrt_without_tensorrt_is_a_missing_dependency(captioner_bundle):
    with pytest.raises(MissingDependencyError) as info:
        open_bundle(captioner_bundle, backend="tensorrt")
    assert info.value.exit_code == 2 and "tensorrt" in str(info.value)


@no_tensorrt
def test_choose_backend(captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    assert choose_backend(manifest, "onnxruntime") == ("onnxruntime", "requested")
    assert choose_backend(manifest, "tensorrt") == ("tensorrt", "requested")
    assert choose_backend(manifest, "auto") == ("onnxruntime", tensorrt_unavailable_reason())
    with pytest.raises(UsageError):
        choose_backend(manifest, "openvino")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_tiny_budget_is_refused_with_the_numbers(captioner_bundle, precision):
    with pytest.raises(InsufficientMemoryError) as info:
        open_bundle(captioner_bundle, backend="onnxruntime", precision=precision, max_memory_mb=1)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert "onnxruntime" in message and "1.0 MiB" in message and "--max-memory-mb" in message
    need = float(re.search(r"needs about ([0-9.]+) MiB", message).group(1))
    assert need > 1.0


@no_tensorrt
def test_auto_does_not_hide_a_memory_refusal(classifier_bundle):
    with pytest.raises(InsufficientMemoryError):
        open_bundle(classifier_bundle, max_memory_mb=1)


def test_a_budget_that_fits_loads(classifier_bundle):
    with open_bundle(classifier_bundle, backend="onnxruntime", max_memory_mb=8192) as session:
        assert session.loaded.decision.fits and session.loaded.decision.limit_source in ("budget", "available")


def test_wrong_family_is_refused_before_loading(classifier_bundle):
    with pytest.raises(UsageError) as info:
        open_bundle(classifier_bundle, family="captioner", max_memory_mb=1)  # no memory error: never got there
    assert "is a classifier bundle, not a captioner" in str(info.value)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="is it a jetcap bundle"):
        open_bundle(tmp_path)
    with pytest.raises(BundleError, match="not found"):
        open_bundle(tmp_path / "missing")


def test_unknown_precision(classifier_bundle):
    with pytest.raises(UsageError, match="unknown precision"):
        open_bundle(classifier_bundle, precision="bf16")


@pytest.fixture
def bundle_copy(classifier_bundle, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(str(classifier_bundle), str(target))
    return target


def test_missing_variant_names_the_available_ones(bundle_copy):
    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    del data["variants"]["fp16"]
    path.write_text(json.dumps(data))
    left = ", ".join(p for p in ("fp32", "int8") if p in data["variants"])
    with pytest.raises(BundleError, match=r"no fp16 variant \(has: {}\)".format(left)):
        open_bundle(bundle_copy, backend="onnxruntime", precision="fp16")


def test_modified_graph_file_is_refused(bundle_copy):
    onnx_file = bundle_copy / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        open_bundle(bundle_copy, backend="onnxruntime")


def test_sequence_limits(classifier_bundle, captioner_bundle):
    manifest = Manifest.load(classifier_bundle)
    width, low, high = sequence_limits(manifest)
    assert width == manifest.config["input_size"]
    assert low == manifest.axes["T"]["min"] and high == manifest.axes["T"]["max"]
    with pytest.raises(UsageError, match="not a classifier"):
        sequence_limits(Manifest.load(captioner_bundle))
