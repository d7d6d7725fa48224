"""Precision facts, the memory plan, targets/tables, the command line, and what the package imports."""
import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import helper

from jetcap.check import preflight_bundle
from jetcap.check.tables import available_releases, load_table
from jetcap.check.targets import resolve_target
from jetcap.cli import cli
from jetcap.errors import UsageError
from tests.check.helpers import F, init, model, tensor, write_bundle


def _dense(tmp_path, precision="fp32", hidden=64, name="b"):
    weights = np.zeros((hidden, hidden), np.float32)
    proto = model([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
                  [tensor("x", F, ["batch", hidden])], [tensor("y", F, ["batch", hidden])], [init("w", weights)])
    return write_bundle(tmp_path / name, proto, precision=precision,
                        axes={"batch": {"min": 1, "opt": 1, "max": 1024}})


def test_targets_pick_the_tensorrt_of_their_jetpack():
    assert resolve_target(target="nano").tensorrt == (8, 2, 1)
    assert resolve_target(target="xavier").tensorrt == (8, 5, 2)
    assert resolve_target(target="orin").tensorrt == (10, 3)
    assert resolve_target().device.name == "nano"
    assert resolve_target(target="8.6").device is None and resolve_target(tensorrt="10.10").tensorrt == (10, 10)
    with pytest.raises(UsageError):
        resolve_target(target="tx9")


def test_tables_are_chosen_by_parsed_version_and_record_their_source():
    assert load_table("10.10").name == "10.0"  # a string comparison would pick 10.0 < "8.x" wrongly
    assert load_table("8.6.2").name == "8.6" and load_table("11.4").name == "11.0"
    for release in available_releases():
        table = load_table(release)
        assert table.source["repository"] == "onnx/onnx-tensorrt" and table.source["url"].startswith("https://")
        assert table.opset_min <= table.opset_max and "Conv" in table.operators
    assert load_table("8.2").opset_max == 13 and load_table("8.5").opset_max == 17
    with pytest.raises(UsageError, match="JetPack 4.6"):
        load_table("8.0")


def test_int8_on_the_nano_is_refused_with_the_reason(tmp_path):
    bundle = _dense(tmp_path, precision="int8")
    named = preflight_bundle(bundle, target="nano", precisions=["int8"])
    refused = [f for f in named.errors() if f.rule == "precision.refused"]
    assert refused and "no fast INT8" in refused[0].message and "SM 5.3" in refused[0].message
    unnamed = preflight_bundle(bundle, target="nano")
    assert not unnamed.errors() and any(f.rule == "precision.refused" for f in unnamed.warnings())
    assert preflight_bundle(bundle, target="orin-nano", precisions=["int8"])


def test_fp16_without_fast_fp16_is_warned(tmp_path):
    bundle = _dense(tmp_path)
    report = preflight_bundle(bundle, tensorrt="8.2", target=None, precisions=["fp32"])
    assert report.memory is None  # no device: no memory plan, no precision facts
    from jetcap.check.preflight import build_plans
    from jetcap.check.targets import DEVICES, Target
    from jetcap.runtime.manifest import Manifest

    pascal = DEVICES["nano"]._replace(title="GTX 1080", compute_capability=(6, 1))
    _plans, findings = build_plans(Target((8, 2, 1), pascal), Manifest.load(bundle), ["fp16"], True)
    assert any(f.rule == "precision.slow" and "no fast FP16" in f.message for f in findings)


def test_strongly_typed_tensorrt_needs_the_fp16_onnx(tmp_path):
    report = preflight_bundle(_dense(tmp_path), tensorrt="11.0", precisions=["fp32"])
    assert report
    with pytest.raises(UsageError):
        preflight_bundle(_dense(tmp_path, name="c"), tensorrt="11.0", precisions=["fp16"])


def test_memory_plan_says_what_does_not_fit_and_what_to_change(tmp_path):
    bundle = _dense(tmp_path, hidden=1024)
    report = preflight_bundle(bundle, target="nano", ram_mb=1200)
    plan = report.memory
    entry = plan["precisions"][0]
    assert entry["weights_mb"] == pytest.approx(1024 * 1024 * 4 / 1e6, rel=1e-2)
    # MatMul output h (1024 x 1024 floats at the max batch) is the only intermediate tensor
    assert entry["activations_mb"] == pytest.approx(1024 * 1024 * 4 / 1e6, rel=1e-2)
    assert not entry["fits_build"]
    build = [f for f in report.errors() if f.rule == "memory.build"]
    assert build and "--workspace-mb" in build[0].hint and "cuBLAS/cuDNN" in build[0].hint
    roomy = preflight_bundle(bundle, target="nano")
    assert roomy and roomy.memory["precisions"][0]["verdict"] == "fits"
    assert roomy.memory["context_mb"] > preflight_bundle(bundle, target="nano", tactic_libraries=False).memory[
        "context_mb"]


def test_command_exit_codes_and_json(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(cli, ["check", str(_dense(tmp_path)), "--tensorrt", "8.2", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["ok"] is True
    bad = _dense(tmp_path, precision="int8", name="q")
    failing = runner.invoke(cli, ["check", str(bad), "--target", "nano", "--precision", "int8"])
    assert failing.exit_code == 1 and "precision.refused" in failing.output
    missing = runner.invoke(cli, ["check", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and len(missing.output.strip().splitlines()) == 1
    assert runner.invoke(cli, ["check", "--help"]).exit_code == 0


def test_package_imports_without_torch_or_onnx_and_names_onnx_when_absent(tmp_path):
    bundle = _dense(tmp_path)
    code = ("import sys; import jetcap.check, jetcap.commands.check; "
            "assert 'torch' not in sys.modules and 'onnx' not in sys.modules, sorted(sys.modules); "
            "sys.modules['onnx'] = None; "  # as on a Jetson without onnx: importing it fails
            "from jetcap.errors import MissingDependencyError\n"
            "try:\n    jetcap.check.preflight_bundle({!r})\nexcept MissingDependencyError as e:\n    print(e)\n"
            "else:\n    raise SystemExit('no error')").format(str(bundle))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "onnx is required" in out.stdout and "pip install" in out.stdout


def _rehashed(bundle):
    """The manifest's checksums made to match the files as they are now (a consistent tampering)."""
    from jetcap.util.fsio import sha256_file

    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    for variant in manifest["variants"].values():
        for entry in variant["files"].values():
            entry["sha256"], entry["bytes"] = sha256_file(bundle / entry["path"]), (bundle / entry["path"]).stat().st_size
    path.write_text(json.dumps(manifest))


def _swap(bundle):
    encoder, step = bundle / "encoder.onnx", bundle / "decoder_step.onnx"
    data = encoder.read_bytes()
    encoder.write_bytes(step.read_bytes())
    step.write_bytes(data)
    _rehashed(bundle)


def _empty(bundle):
    (bundle / "encoder.onnx").write_bytes(b"")
    _rehashed(bundle)


def _modified(bundle):
    with open(str(bundle / "decoder_step.onnx"), "ab") as handle:
        handle.write(b"\0")


@pytest.mark.parametrize("tamper, rule, message", [
    (_swap, "graph.io", "is not the graph the manifest describes: inputs are"),
    (_empty, "graph.io", "encoder.onnx is not the graph the manifest describes: it has no nodes"),
    (_modified, "file.sha256", "does not match its manifest checksum"),
], ids=["swapped", "empty", "modified"])
def test_a_graph_that_is_not_the_bundles_is_an_error_not_a_plan(captioner_bundle, tmp_path, tamper, rule, message):
    import shutil

    bundle = tmp_path / "tampered"
    shutil.copytree(str(captioner_bundle), str(bundle))
    tamper(bundle)
    report = preflight_bundle(str(bundle), target="nano", precisions=["fp32"])
    errors = [f for f in report.findings if f.severity == "error"]
    assert not report and any(f.rule == rule and message in f.message for f in errors), errors
    assert report.memory is None  # no plan for graphs that are not the bundle's
    result = CliRunner().invoke(cli, ["check", str(bundle), "--target", "nano", "--precision", "fp32"])
    assert result.exit_code == 1 and rule in result.output and "Traceback" not in result.output, result.output


def test_a_graph_output_without_a_shape_is_not_taken_for_another_graph():
    """Other exporters and custom ops leave some outputs without a shape: nothing to compare, no error;
    the same graph with a wrong rank is one."""
    from jetcap.check.preflight import graph_problems

    proto = model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", F, ["batch", 4])],
                  [tensor("y", F, ["batch", 4])])
    spec = {"inputs": [{"name": "x", "shape": ["batch", 4]}], "outputs": [{"name": "y", "shape": ["batch", 4]}]}
    assert graph_problems(proto, spec) == []
    proto.graph.output[0].type.tensor_type.ClearField("shape")
    assert graph_problems(proto, spec) == []
    wrong = {"inputs": spec["inputs"], "outputs": [{"name": "y", "shape": ["batch", 4, 1]}]}
    assert graph_problems(model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", F, ["batch", 4])],
                                [tensor("y", F, ["batch", 4])]), wrong) == ["y has rank 2, the manifest says 3"]
