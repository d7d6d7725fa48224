"""The TensorRT version/generation/build-plan decisions (pure; run everywhere)."""
import pytest

from jetcap.errors import MissingDependencyError, UsageError
from jetcap.runtime.backends import trt_api
from jetcap.runtime.backends.trt_api import BINDINGS, NAMED, STRONGLY_TYPED


@pytest.mark.parametrize("text, expected", [
    ("8.2.1.8", (8, 2, 1, 8)),
    ("10.13.0.35", (10, 13, 0, 35)),
    ("8.6.1.post1", (8, 6, 1)),
    ("11.0", (11, 0)),
    (" 8.5.3.1 ", (8, 5, 3, 1)),
    ((8, 2, 1), (8, 2, 1)),
])
def test_parse_version(text, expected):
    assert trt_api.parse_version(text) == expected


@pytest.mark.parametrize("text", ["", "eight", "8", "v8.2"])
def test_parse_version_rejects_garbage(text):
    with pytest.raises(UsageError):
        trt_api.parse_version(text)


def test_versions_compare_as_numbers_not_strings():
    # "10.0" < "8.2" as strings; as versions 10 is newer
    assert trt_api.parse_version("10.0.1") > trt_api.parse_version("8.2.1.8")
    assert trt_api.api_generation("10.0.1") == NAMED
    assert trt_api.api_generation("9.3") == NAMED


@pytest.mark.parametrize("version, generation", [
    ("8.0.1.6", BINDINGS), ("8.2.1.8", BINDINGS), ("8.4.3.1", BINDINGS),
    ("8.5.1.7", NAMED), ("8.6.1.6", NAMED), ("10.0.0.6", NAMED), ("10.13.0.35", NAMED),
    ("11.0.0", STRONGLY_TYPED), ("12.1", STRONGLY_TYPED),
])
def test_api_generation(version, generation):
    assert trt_api.api_generation(version) == generation


def test_api_generation_refuses_tensorrt_7():
    with pytest.raises(UsageError, match="too old"):
        trt_api.api_generation("7.1.3")


def test_workspace_setting_and_network_flags():
    assert trt_api.workspace_setting("8.2.1.8") == "max_workspace_size"
    assert trt_api.workspace_setting("8.4.1") == "memory_pool_limit"
    assert trt_api.workspace_setting("10.13") == "memory_pool_limit"
    assert trt_api.network_flags("8.2.1.8") == ["EXPLICIT_BATCH"]
    assert trt_api.network_flags("9.2") == ["EXPLICIT_BATCH"]
    assert trt_api.network_flags("10.3") == []
    assert trt_api.network_flags("11.1") == ["STRONGLY_TYPED"]


def test_max_onnx_opset():
    assert trt_api.max_onnx_opset("8.2.1.8") == 13
    assert trt_api.max_onnx_opset("10.3") is None


def test_workspace_bytes():
    assert trt_api.workspace_bytes(256) == 256 << 20
    for bad in (0, -5, "lots"):
        with pytest.raises(UsageError):
            trt_api.workspace_bytes(bad)


# -- build plans ---------------------------------------------------------------------------------
def test_fp16_before_11_parses_fp32_onnx_with_fp16_flag():
    for generation in (BINDINGS, NAMED):
        plan = trt_api.build_plan(generation, "fp16", fast_fp16=True, fast_int8=False)
        assert (plan.onnx_variant, plan.flags, plan.strongly_typed, plan.warnings) == ("fp32", ["FP16"], False, [])


def test_fp16_on_11_parses_fp16_onnx_strongly_typed():
    plan = trt_api.build_plan(STRONGLY_TYPED, "fp16", fast_fp16=True, fast_int8=True)
    assert (plan.onnx_variant, plan.flags, plan.strongly_typed) == ("fp16", [], True)


def test_int8_parses_qdq_onnx():
    plan = trt_api.build_plan(NAMED, "int8", fast_fp16=True, fast_int8=True)
    assert (plan.onnx_variant, plan.flags) == ("int8", ["INT8", "FP16"])
    plan = trt_api.build_plan(NAMED, "int8", fast_fp16=False, fast_int8=True)  # e.g. GTX 1080 (SM 6.1)
    assert plan.flags == ["INT8"]
    plan = trt_api.build_plan(STRONGLY_TYPED, "int8", fast_fp16=True, fast_int8=True)
    assert (plan.onnx_variant, plan.flags, plan.strongly_typed) == ("int8", [], True)
    # TensorRT 11 has no FP16 flag beside INT8: the float layers of the Q/DQ graph run as typed, in FP32
    assert len(plan.warnings) == 1 and "FP32" in plan.warnings[0]


def test_tactic_sources_mask():
    default = 0b11011  # e.g. CUBLAS (0), CUBLAS_LT (1), CUDNN (3), EDGE_MASK_CONVOLUTIONS (4)
    assert trt_api.tactic_sources_mask(default, [0, 1, 3], None) == default
    assert trt_api.tactic_sources_mask(default, [0, 1, 3], False) == 0b10000
    assert trt_api.tactic_sources_mask(0b10000, [0, 1, 3], True) == 0b11011
    assert trt_api.tactic_sources_mask(default, [], False) == default  # a release without those sources


def test_fp32_sets_no_flags():
    for generation in (BINDINGS, NAMED, STRONGLY_TYPED):
        plan = trt_api.build_plan(generation, "fp32", True, True)
        assert (plan.onnx_variant, plan.flags) == ("fp32", [])


def test_int8_without_fast_int8_is_refused_suggesting_fp16():
    with pytest.raises(UsageError) as info:
        trt_api.build_plan(BINDINGS, "int8", fast_fp16=True, fast_int8=False)  # the Nano
    text = str(info.value)
    assert "no fast INT8" in text and "--precision fp16" in text and "--allow-slow-int8" in text


def test_int8_without_fast_int8_can_be_forced_with_a_warning():
    plan = trt_api.build_plan(BINDINGS, "int8", fast_fp16=True, fast_int8=False, force=True)
    assert plan.flags == ["INT8", "FP16"]
    assert any("slower" in w for w in plan.warnings)


def test_fp16_without_fast_fp16_warns():
    plan = trt_api.build_plan(NAMED, "fp16", fast_fp16=False, fast_int8=True)
    assert plan.flags == ["FP16"] and any("no fast FP16" in w for w in plan.warnings)


def test_unknown_platform_builds_without_warning():
    plan = trt_api.build_plan(NAMED, "int8", fast_fp16=None, fast_int8=None)
    assert plan.flags == ["INT8", "FP16"] and plan.warnings == []


def test_bad_precision_and_generation():
    with pytest.raises(UsageError):
        trt_api.build_plan(NAMED, "bf16")
    with pytest.raises(ValueError):
        trt_api.build_plan("implicit", "fp16")


# -- the real module -----------------------------------------------------------------------------
@pytest.mark.skipif(trt_api.tensorrt_available(), reason="TensorRT is installed here")
def test_load_tensorrt_without_tensorrt_names_what_to_install():
    # here `tensorrt` is either absent or only the tensorrt-stubs namespace package: both are "missing"
    with pytest.raises(MissingDependencyError) as info:
        trt_api.load_tensorrt()
    assert info.value.exit_code == 2
    assert "TensorRT ships with JetPack" in str(info.value)
    assert not trt_api.tensorrt_available()


def test_lazy_module_resolves_only_on_use():
    lazy = trt_api.LazyTensorRT()  # creating it imports nothing
    if trt_api.tensorrt_available():
        assert lazy.Builder is trt_api.load_tensorrt().Builder
    else:
        with pytest.raises(MissingDependencyError):
            lazy.Builder


@pytest.mark.trt
@pytest.mark.skipif(not trt_api.tensorrt_available(), reason="needs a real TensorRT installation")
def test_installed_tensorrt_version_is_supported():
    version = trt_api.tensorrt_version()
    assert trt_api.api_generation(version) in trt_api.GENERATIONS
    trt = trt_api.load_tensorrt()
    for name in trt_api.network_flags(version):
        if version < (11,):
            assert hasattr(trt.NetworkDefinitionCreationFlag, name)
