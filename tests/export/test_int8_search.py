"""Accuracy-aware INT8 and partial bundles, exported as a user runs them (real ONNX Runtime, real files).

The sample captioner calibrated by ``percentile``/``entropy`` is the test case: fully quantized, its decoder step's
attention is ruined (``alpha`` cosine ~0.1-0.9 on the real cases, measured), so the search must find the
layer that does it and keep it float; with the search bounded to 0 % of the MACs the variant fails."""
import json

import numpy as np
from click.testing import CliRunner

from jetcap import samples
from jetcap.cli import cli
from jetcap.export.calibration import calibrate
from jetcap.export.int8_search import SearchOptions, plan_for, search_float_layers
from jetcap.models.registry import Tolerance
from jetcap.util.npz import load_npz

INT8 = Tolerance(atol=1.5, rtol=0.5, min_cosine=0.99)


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _feeds(bundle, graph):
    reference = load_npz(bundle / "reference.npz")
    prefix = "sweep/{}/real_batch8/in/".format(graph)
    return [{k[len(prefix):]: v for k, v in reference.items() if k.startswith(prefix)}]


def test_search_keeps_the_harmful_layer_float(captioner_bundle):
    src = captioner_bundle / "decoder_step.onnx"
    feeds = _feeds(captioner_bundle, "decoder_step")
    ranges = calibrate(src, feeds, "entropy")  # on these 8 rows entropy clips the attention scores hardest
    plan = plan_for(src, ("decode_step", "/fc/"))
    result = search_float_layers(src, feeds, ranges, plan, INT8, SearchOptions())
    entry = result.entry
    assert entry["error_all_int8"] > 1 and entry["worst_output_all_int8"] == "alpha"
    assert result.passed and entry["error"] <= 1
    assert result.float_nodes == [k["node"] for k in entry["kept_float"]]
    assert any("full_att" in n for n in result.float_nodes)  # the attention score layer
    assert 0 < entry["float_mac_fraction"] <= 0.25
    for kept in entry["kept_float"]:
        assert kept["error_quantized_alone"] > 1 and "rank" in kept["reason"]
    assert {f["node"] for f in entry["forced_float"]} >= {n for n in plan.forced_float}

    bounded = search_float_layers(src, feeds, ranges, plan, INT8, SearchOptions(max_float_fraction=0.0))
    assert not bounded.passed and bounded.float_nodes == []
    assert "no prefix" in bounded.entry["note"]

    clean = search_float_layers(src, feeds, calibrate(src, feeds, "minmax"), plan, INT8, SearchOptions())
    assert clean.passed and not clean.entry["searched"] and clean.float_nodes == []  # nothing to fix: no search


def test_export_search_records_float_layers_and_passes_check(tmp_path):
    out = tmp_path / "bundle"
    result = run(["export", str(samples.captioner_checkpoint()), "-o", str(out), "--precision", "int8",
                  "--calibration-method", "percentile", "--calibration-data", str(samples.sample_dir() / "images")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    int8 = manifest["variants"]["int8"]
    calibration = int8["calibration"]
    assert calibration["method"] == "percentile" and calibration["real_data"] is True
    assert calibration["data"] == str(samples.sample_dir() / "images")
    assert calibration["graphs"]["encoder"]["feeds"] == 8  # the folder's 8 images, not the built-in top-up
    assert calibration["graphs"]["encoder"]["params"]["percentile"] == 99.99
    # 8 images cannot spare 16 task images apart from the 32 calibration ones: shared, and recorded so
    stability = manifest["task_data"].pop("fp32_stability")  # the model's own captions under tiny noise
    assert stability["count"] == 8 and stability["pixel_noise"] == 0.001
    assert manifest["task_data"] == {"source": str(samples.sample_dir() / "images"), "count": 8, "stored": 8,
                                     "held_out_from_calibration": False,
                                     "int8_search": {"source": str(samples.sample_dir() / "images"), "count": 8,
                                                     "held_out_from_verdict": False}}
    search = int8["quantization"]["search"]["graphs"]["decoder_step"]
    assert search["searched"] and search["passed"]
    assert int8["quantization"]["float_layers"]["decoder_step"] == [k["node"] for k in search["kept_float"]]
    assert manifest["validation"]["int8"]["passed"]
    assert manifest["preflight"]["ok"]  # jetcap check (TensorRT 8.2 rules) at the end of export
    assert run(["check", str(out)]).exit_code == 0


def test_keep_passing_writes_the_variants_that_passed(tmp_path):
    args = [str(samples.captioner_checkpoint()), "--precision", "fp16", "--precision", "int8",
            "--calibration-method", "percentile", "--int8-max-float-fraction", "0"]
    strict = run(["export"] + args + ["-o", str(tmp_path / "strict")])
    assert strict.exit_code == 1
    assert "--keep-passing" in strict.output
    assert not (tmp_path / "strict").exists()  # the default stays all-or-nothing

    out = tmp_path / "partial"
    result = run(["export"] + args + ["-o", str(out), "--keep-passing"])
    assert result.exit_code == 1, result.output
    assert "left out of the bundle (failed their check): int8" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["variants"]) == ["fp16", "fp32"]
    failed = manifest["failed_variants"]["int8"]
    assert failed["failures"] and "decoder_step" in failed["failures"][0]
    assert failed["calibration"]["method"] == "percentile"
    assert not list(out.glob("*.int8.onnx"))
    assert run(["check", str(out)]).exit_code == 0
    from jetcap.runtime.manifest import Manifest

    assert Manifest.load(out).precisions == ["fp32", "fp16"]
    images = samples.sample_images()[:1]
    captioned = run(["caption", str(out), str(images[0]), "--precision", "fp16"])
    assert captioned.exit_code == 0, captioned.output
    assert "\t" in captioned.output
    missing = run(["caption", str(out), str(images[0]), "--precision", "int8"])
    assert missing.exit_code == 2 and "int8 variant failed its checks at export" in missing.output
