"""Engine cache keys, layout and lookups (real files; no TensorRT needed)."""
import json
import os

import pytest

from . import tiny_bundle
from jetcap.errors import BundleError
from jetcap.runtime import engine, platform
from jetcap.runtime.manifest import Manifest

SHA = "ab" * 32
PROFILES = {"x": ((1, 4), (1, 4), (8, 4))}
NANO = "NVIDIA Jetson Nano Developer Kit"


def fields(**changes):
    args = dict(onnx_sha256=SHA, trt_version="8.2.1.8", gpu_name=NANO, compute_capability=(5, 3),
                precision="fp16", profiles=PROFILES)
    args.update(changes)
    return engine.engine_key_fields(**args)


def test_key_is_stable():
    # pinned: a change here invalidates every engine cache in the field, so it must be deliberate
    key = engine.engine_cache_key(SHA, "8.2.1.8", NANO, (5, 3), "fp16", PROFILES)
    assert key == "28ec8934f072b0f315aee0fba3b7724e7ffaac27b1890ed6a52938b16d9054ec"
    assert engine.key_of_fields(fields()) == key
    # tuple vs list and version spelling do not matter
    assert engine.engine_cache_key(SHA, (8, 2, 1, 8), NANO, "5.3", "fp16", {"x": [[1, 4], [1, 4], [8, 4]]}) == key


@pytest.mark.parametrize("change", [
    {"onnx_sha256": "cd" * 32},
    {"trt_version": "8.2.3.0"},
    {"gpu_name": "NVIDIA Jetson Xavier NX"},
    {"compute_capability": (7, 2)},
    {"precision": "fp32"},
    {"profiles": {"x": ((1, 4), (2, 4), (8, 4))}},
    {"profiles": {"x": ((1, 4), (1, 4), (16, 4))}},
])
def test_every_field_changes_the_key(change):
    assert engine.key_of_fields(fields(**change)) != engine.key_of_fields(fields())


def test_file_names():
    key = engine.key_of_fields(fields())
    name = engine.engine_file_name("decoder_step", "fp16", key)
    assert name == "decoder_step-fp16-{}.engine".format(key[:16])
    assert engine.sidecar_path("/c/" + name) == "/c/decoder_step-fp16-{}.json".format(key[:16])
    assert engine.default_cache_dir("/bundles/cap") == os.path.join("/bundles/cap", "engines")


def test_store_then_lookup(tmp_path):
    cache = str(tmp_path / "cache")
    stored = engine.store(cache, "model", "fp16", fields(), b"engine-bytes", extra={"built_seconds": 1.5})
    assert os.path.isfile(stored.path) and os.path.isfile(stored.sidecar_path)
    assert sorted(os.listdir(cache)) == sorted([os.path.basename(stored.path), os.path.basename(stored.sidecar_path)])
    found = engine.lookup(cache, "model", "fp16", fields())
    assert found is not None and found.path == stored.path
    assert found.sidecar["engine_bytes"] == len(b"engine-bytes") and found.sidecar["built_seconds"] == 1.5
    with open(found.path, "rb") as handle:
        assert handle.read() == b"engine-bytes"


def test_lookup_misses_for_any_other_field(tmp_path):
    cache = str(tmp_path)
    engine.store(cache, "model", "fp16", fields(), b"x")
    assert engine.lookup(cache, "model", "fp16", fields(trt_version="8.2.3.0")) is None
    assert engine.lookup(cache, "model", "fp32", fields()) is None
    assert engine.lookup(cache, "other", "fp16", fields()) is None


def test_lookup_never_returns_an_engine_whose_sidecar_disagrees(tmp_path):
    cache = str(tmp_path)
    stored = engine.store(cache, "model", "fp16", fields(), b"engine")
    # sidecar edited so its fields no longer match the file name's key (e.g. copied from elsewhere)
    with open(stored.sidecar_path) as handle:
        sidecar = json.load(handle)
    sidecar["fields"]["tensorrt"] = "10.0.0"
    with open(stored.sidecar_path, "w") as handle:
        json.dump(sidecar, handle)
    hit, reason = engine.check_cache(cache, "model", "fp16", fields())
    assert hit is None and "fields differ" in reason


def test_lookup_rejects_truncated_engine_and_broken_sidecar(tmp_path):
    cache = str(tmp_path)
    stored = engine.store(cache, "model", "fp16", fields(), b"0123456789")
    with open(stored.path, "wb") as handle:
        handle.write(b"01234")
    hit, reason = engine.check_cache(cache, "model", "fp16", fields())
    assert hit is None and "size" in reason
    with open(stored.sidecar_path, "w") as handle:
        handle.write("{not json")
    assert engine.check_cache(cache, "model", "fp16", fields()) == (None, "sidecar is not valid JSON")
    os.unlink(stored.sidecar_path)
    assert engine.check_cache(cache, "model", "fp16", fields()) == (None, "cached engine has no sidecar")
    os.unlink(stored.path)
    assert engine.check_cache(cache, "model", "fp16", fields()) == (None, "no cached engine")


def test_store_is_atomic(tmp_path):
    cache = str(tmp_path)
    engine.store(cache, "model", "fp16", fields(), b"abc")
    assert not [n for n in os.listdir(cache) if n.startswith(".tmp-")]


def test_record_device_memory(tmp_path):
    cache = str(tmp_path)
    stored = engine.store(cache, "model", "fp16", fields(), b"abc")
    updated = engine.record_device_memory(stored, 12345)
    assert updated.sidecar["device_memory_bytes"] == 12345
    again = engine.lookup(cache, "model", "fp16", fields())
    assert again is not None and again.sidecar["device_memory_bytes"] == 12345


def test_record_device_memory_in_a_cache_it_cannot_write_keeps_the_value(tmp_path):
    # engines built by another user (sudo jetcap build) or on a read-only mount: the engines still load
    stored = engine.store(str(tmp_path / "cache"), "model", "fp16", fields(), b"abc")
    (tmp_path / "a-file").write_text("not a folder")  # as unwritable as a read-only mount, even for root
    gone = stored._replace(sidecar_path=str(tmp_path / "a-file" / "model.json"))
    lines = []
    updated = engine.record_device_memory(gone, 12345, lines.append)
    assert updated.sidecar["device_memory_bytes"] == 12345
    assert len(lines) == 1 and "kept for this process only" in lines[0]


@pytest.mark.parametrize("sidecar, version, expected", [
    ({}, (8, 2, 1), True),                               # JetPack 4.6: cuBLAS/cuDNN tactic sources on by default
    ({"tactic_libraries": None}, (8, 2, 1), True),
    ({"tactic_libraries": False}, (8, 2, 1), False),     # jetcap build --no-tactic-libraries
    ({}, (10, 3, 0), False),                             # off by default since 10
    ({"tactic_libraries": True}, (10, 3, 0), True),
])
def test_tactic_libraries_of(sidecar, version, expected):
    assert engine.tactic_libraries_of(sidecar, version) is expected


def test_engine_fields_for_uses_the_variant_the_plan_parses(tmp_path):
    bundle, _ = tiny_bundle.make_linear_bundle(str(tmp_path / "b"))
    manifest = Manifest.load(bundle)
    gpu = platform.GpuInfo(NANO, (5, 3), None, True, "jetson")
    fp32_sha = manifest.variant("fp32")["files"]["model"]["sha256"]
    fp16_sha = manifest.variant("fp16")["files"]["model"]["sha256"]
    # TensorRT 8/10 build FP16 from the FP32 ONNX; 11 from the FP16 ONNX
    assert engine.engine_fields_for(manifest, "model", "fp16", "8.2.1.8", gpu)["onnx_sha256"] == fp32_sha
    assert engine.engine_fields_for(manifest, "model", "fp16", "11.0", gpu)["onnx_sha256"] == fp16_sha
    assert engine.engine_fields_for(manifest, "model", "fp16", "8.2.1.8", gpu)["profiles"] == \
        {"x": [[1, 4], [1, 4], [8, 4]]}


def test_find_engines_names_the_build_to_run(tmp_path):
    bundle, _ = tiny_bundle.make_linear_bundle(str(tmp_path / "b"))
    manifest = Manifest.load(bundle)
    gpu = platform.GpuInfo(NANO, (5, 3), None, True, "jetson")
    with pytest.raises(BundleError) as info:
        engine.find_engines(manifest, "fp16", trt_version="8.2.1.8", gpu=gpu)
    assert "jetcap build" in str(info.value) and "--precision fp16" in str(info.value)
    wanted = engine.engine_fields_for(manifest, "model", "fp16", "8.2.1.8", gpu)
    stored = engine.store(engine.default_cache_dir(bundle), "model", "fp16", wanted, b"plan")
    found = engine.find_engines(manifest, "fp16", trt_version="8.2.1.8", gpu=gpu)
    assert found["model"].path == stored.path
    # the same engine is not offered to another TensorRT or GPU
    with pytest.raises(BundleError):
        engine.find_engines(manifest, "fp16", trt_version="8.2.3.0", gpu=gpu)
    with pytest.raises(BundleError):
        engine.find_engines(manifest, "fp16", trt_version="8.2.1.8", gpu=gpu._replace(compute_capability=(7, 2)))


def test_open_tensorrt_runners_points_runners_at_the_cached_engines(tmp_path):
    from jetcap.errors import MissingDependencyError
    from jetcap.runtime.backends import trt_api
    from jetcap.runtime.backends.tensorrt import TensorRTRunner

    bundle, _ = tiny_bundle.make_linear_bundle(str(tmp_path / "b"))
    manifest = Manifest.load(bundle)
    gpu = platform.GpuInfo(NANO, (5, 3), None, True, "jetson")
    wanted = engine.engine_fields_for(manifest, "model", "fp16", "8.2.1.8", gpu)
    stored = engine.store(engine.default_cache_dir(bundle), "model", "fp16", wanted, b"plan")
    runners = engine.open_tensorrt_runners(manifest, "fp16", trt_version="8.2.1.8", gpu=gpu)
    runner = runners["model"]
    assert isinstance(runner, TensorRTRunner) and not runner.is_active
    assert runner.engine_path == stored.path and runner.input_names == ["x"] and runner.output_names == ["y"]
    if not trt_api.tensorrt_available():
        with pytest.raises(MissingDependencyError):
            runner.activate()
