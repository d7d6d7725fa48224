"""`jetcap validate` end to end: healthy bundles pass at every precision, and the gate can fail.

Each broken bundle is a copy of a healthy one with one real defect (its checksum updated so the
defect, not the integrity check, is what fails).
"""
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from jetcap.cli import cli
from jetcap.util.fsio import sha256_file
from jetcap.util.isolate import probe_onnx_session


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _copy(bundle, tmp_path, name="broken"):
    dst = tmp_path / name
    shutil.copytree(str(bundle), str(dst))
    return dst


def _rehash(bundle, precision, graph):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    entry = manifest["variants"][precision]["files"][graph]
    entry["sha256"] = sha256_file(bundle / entry["path"])
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("bundle_fixture", ["captioner_bundle", "classifier_bundle"])
def test_healthy_bundles_pass_every_precision(request, tmp_path, bundle_fixture):
    bundle = request.getfixturevalue(bundle_fixture)
    junit = tmp_path / "report.xml"
    result = run(["validate", str(bundle), "--junit", str(junit)])
    assert result.exit_code == 0, result.output
    assert "FAIL" not in result.output
    for precision in ("fp32", "fp16", "int8"):
        assert precision in result.output
    suite = ET.parse(str(junit)).getroot()
    assert list(suite.iter("testcase")) and not list(suite.iter("failure"))


def test_json_report_names_task_checks(captioner_bundle):
    result = run(["validate", str(captioner_bundle), "--precision", "fp32", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = {c["name"] for c in report["checks"]}
    assert {"caption.exact_match", "caption.bleu_drop", "caption_beam3.exact_match"} <= names
    exact = [c for c in report["checks"] if c["name"] == "caption.exact_match"][0]
    assert exact["value"] == 1.0


def test_perturbed_weights_fail(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    model = onnx.load(str(bundle / "model.onnx"))
    heaviest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    array = onnx.numpy_helper.to_array(heaviest)
    noisy = array + np.random.RandomState(0).normal(0, 0.5 * float(np.abs(array).mean()), array.shape).astype(array.dtype)
    heaviest.CopyFrom(onnx.numpy_helper.from_array(noisy, heaviest.name))
    onnx.save(model, str(bundle / "model.onnx"))
    _rehash(bundle, "fp32", "model")
    result = run(["validate", str(bundle), "--precision", "fp32"])
    assert result.exit_code == 1, result.output
    assert "logits" in result.output and "FAIL" in result.output


def test_swapped_outputs_fail(captioner_bundle, tmp_path):
    bundle = _copy(captioner_bundle, tmp_path)
    path = bundle / "decoder_step.onnx"
    model = onnx.load(str(path))
    names = {"h_new": "c_new", "c_new": "h_new"}
    for node in model.graph.node:
        node.output[:] = [names.get(o, o) for o in node.output]
        node.input[:] = [names.get(i, i) for i in node.input]
    onnx.save(model, str(path))
    _rehash(bundle, "fp32", "decoder_step")
    result = run(["validate", str(bundle), "--precision", "fp32"])
    assert result.exit_code == 1, result.output
    assert "h_new" in result.output and "c_new" in result.output


def test_lost_dynamic_axis_fails(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    path = bundle / "model.onnx"
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1  # batch frozen to 1
    onnx.save(model, str(path))
    _rehash(bundle, "fp32", "model")
    result = run(["validate", str(bundle), "--precision", "fp32"])
    assert result.exit_code == 1, result.output
    assert "dynamic axis 'batch'" in result.output


def test_variant_onnxruntime_cannot_load_fails_not_crashes(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    path = bundle / "model.int8.onnx"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated protobuf
    _rehash(bundle, "int8", "model")
    result = run(["validate", str(bundle), "--precision", "int8"])
    assert result.exit_code == 1, result.output
    assert "ONNX Runtime failed" in result.output


def test_a_child_that_segfaults_is_reported(classifier_bundle, tmp_path, monkeypatch):
    """The isolation itself: a real SIGSEGV in the child process becomes a message."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import ctypes\nctypes.string_at(0)\n")
    monkeypatch.setenv("PYTHONPATH", str(site))
    message = probe_onnx_session(classifier_bundle / "model.onnx")
    assert message and "crashed (SIGSEGV)" in message


def test_modified_file_fails_integrity(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    with open(str(bundle / "model.fp16.onnx"), "ab") as handle:
        handle.write(b"\0")
    result = run(["validate", str(bundle), "--precision", "fp16"])
    assert result.exit_code == 1
    assert "checksum" in result.output


def test_usage_errors_exit_2(classifier_bundle, tmp_path):
    assert run(["validate", str(tmp_path / "missing")]).exit_code == 2
    result = run(["validate", str(classifier_bundle), "--backend", "tensorrt"])
    assert result.exit_code == 2 and "tensorrt" in result.output.lower()
    result = run(["validate", str(classifier_bundle), "--tolerance", "logits=abc"])
    assert result.exit_code == 2
    result = run(["validate", str(classifier_bundle), "--tolerance", "logits=1,1,0,0.5"])
    assert result.exit_code != 0 and "outlier_fraction must be in" in result.output
    assert "Traceback" not in result.output


def test_tolerance_override_takes_an_allowance(classifier_bundle):
    result = run(["validate", str(classifier_bundle), "--precision", "fp32", "--backend", "onnxruntime",
                  "--tolerance", "logits=1e-3,1e-3,0.99999,1e-4,1.5", "--json"])
    assert result.exit_code == 0, result.output
    # a fraction alone gets the default cap (2x): a cap of 1 would let nothing out
    result = run(["validate", str(classifier_bundle), "--precision", "fp32", "--backend", "onnxruntime",
                  "--tolerance", "logits=1e-3,1e-3,0.99999,1e-4", "--json"])
    assert result.exit_code == 0, result.output
    from jetcap.commands.validate import _tolerance_option
    from jetcap.validate.metrics import Tolerance

    assert Tolerance.from_any(_tolerance_option(None, None, ["logits=1,1,0,1e-4"])["logits"]).outlier_cap == 2.0
    assert Tolerance.from_any(_tolerance_option(None, None, ["logits=1,1,0,0"])["logits"]).outlier_cap == 1.0


def test_live_checkpoint_reference_and_real_data(classifier_bundle, tmp_path):
    from jetcap import samples

    data = tmp_path / "data"
    data.mkdir()
    for path in samples.sample_sequences():
        shutil.copy(str(path), str(data / path.name))
    result = run(["validate", str(classifier_bundle), "--precision", "fp16", "--checkpoint",
                  str(samples.classifier_checkpoint()), "--data", str(data)])
    assert result.exit_code == 0, result.output


def test_a_fifo_in_the_data_folder_is_refused_not_read_forever(classifier_bundle, tmp_path):
    data = tmp_path / "fifo_data"
    data.mkdir()
    os.mkfifo(str(data / "clip.npy"))  # opening it would block until a writer comes: never
    result = run(["validate", str(classifier_bundle), "--precision", "fp32", "--no-check", "--data", str(data)])
    assert result.exit_code == 2 and "clip.npy is not a regular file" in result.output, result.output


def test_data_files_outside_the_bundles_length_range_are_skipped_and_counted(classifier_bundle, tmp_path):
    from jetcap import samples

    data = tmp_path / "data"
    data.mkdir()
    long = np.zeros((5000, 63), np.float32)
    long[7, 0] = np.nan  # a long recording is skipped for its length, never read
    np.save(str(data / "a_long.npy"), long)
    result = run(["validate", str(classifier_bundle), "--precision", "fp32", "--no-check", "--data", str(data)])
    assert result.exit_code == 2 and "no sequence in the folder has a length the bundle takes (T 20..128)" in \
        result.output, result.output
    for path in samples.sample_sequences():
        shutil.copy(str(path), str(data / path.name))
    result = run(["validate", str(classifier_bundle), "--precision", "fp32", "--no-check", "--data", str(data),
                  "--samples", "3"])
    assert result.exit_code == 0, result.output
    assert "(3 sequences; 1 file(s) skipped, their length outside the bundle's T 20..128: a_long.npy)" in \
        result.output
    for name, frames in (("b_short.json", 5), ("c_empty.npy", 0), ("d_long.json", 200)):
        frames = np.zeros((frames, 63), np.float32)
        if name.endswith(".npy"):
            np.save(str(data / name), frames)
        else:
            (data / name).write_text(json.dumps(frames.tolist()))
    result = run(["validate", str(classifier_bundle), "--precision", "fp32", "--no-check", "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert "4 file(s) skipped, their length outside the bundle's T 20..128: a_long.npy, b_short.json, " \
        "c_empty.npy, ...)" in result.output
    (data / "b_broken.npy").write_bytes(b"not a numpy file")  # unreadable files still fail the run
    result = run(["validate", str(classifier_bundle), "--precision", "fp32", "--no-check", "--data", str(data)])
    assert result.exit_code == 2 and "b_broken.npy" in result.output, result.output


def test_validate_runs_in_a_subprocess_with_exit_codes(classifier_bundle):
    proc = subprocess.run([sys.executable, "-m", "jetcap", "validate", str(classifier_bundle), "--precision", "fp32"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


def test_seed_draws_fresh_inputs_against_live_pytorch(classifier_bundle):
    from jetcap import samples
    from jetcap.runtime.manifest import Manifest
    from jetcap.util.npz import load_npz
    from jetcap.validate.live import live_reference

    manifest = Manifest.load(classifier_bundle)
    stored = load_npz(classifier_bundle / "reference.npz")
    fresh = live_reference(manifest, stored, samples.classifier_checkpoint(), {}, seed=7)
    names = [c["name"] for c in manifest.data["reference"]["cases"]["model"]]
    assert "seed7_random_T20_batch1" in names
    new_input = fresh["sweep/model/seed7_random_T20_batch1/in/sequence"]
    assert not np.array_equal(new_input, stored["sweep/model/random_T20_batch1/in/sequence"])
    result = run(["validate", str(classifier_bundle), "--precision", "fp32", "--checkpoint",
                  str(samples.classifier_checkpoint()), "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert run(["validate", str(classifier_bundle), "--seed", "7"]).exit_code == 2


def _rewrite_reference(bundle, change):
    """``change(arrays)`` applied to the bundle's reference.npz, its checksum updated in the manifest (the
    arrays then disagree with each other, not with the checksum)."""
    from jetcap.util.npz import load_npz, save_npz

    arrays = dict(load_npz(bundle / "reference.npz"))
    change(arrays)
    save_npz(bundle / "reference.npz", arrays)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["reference"]["sha256"] = sha256_file(bundle / manifest["reference"]["path"])
    path.write_text(json.dumps(manifest))


def _add_output(arrays):
    key = next(k for k in arrays if k.startswith("sweep/model/") and "/out/" in k)
    arrays[key.rsplit("/", 1)[0] + "/bogus"] = arrays[key]


@pytest.mark.parametrize("bundle_fixture, change, message", [
    ("classifier_bundle", lambda a: a.update({"task/count": np.asarray(10 ** 9)}), "task/count 1000000000 but holds"),
    ("captioner_bundle", lambda a: a.update({"task/names": a["task/names"][:2]}), "task arrays disagree"),
    ("classifier_bundle", _add_output, "outputs the graph does not: bogus")])
def test_a_reference_whose_arrays_disagree_fails_without_checking_less(request, tmp_path, bundle_fixture, change,
                                                                       message):
    bundle = _copy(request.getfixturevalue(bundle_fixture), tmp_path)
    _rewrite_reference(bundle, change)
    result = run(["validate", str(bundle), "--precision", "fp32", "--no-check"])
    assert result.exit_code != 0 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_preflight_record_that_is_not_an_object_is_not_a_crash(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["preflight"] = "x"
    path.write_text(json.dumps(manifest))
    result = run(["validate", str(bundle), "--precision", "fp32"])
    assert "Traceback" not in result.output and "AttributeError" not in result.output, result.output


def _edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _loosen(manifest):
    manifest["tolerances"]["fp32"].update(atol=1e300, rtol=0.0, min_cosine=-1.0)


def _all_random(manifest):
    for cases in manifest["reference"]["cases"].values():
        for case in cases:
            case["kind"] = "random"


@pytest.mark.parametrize("fixture, change, entry", [
    ("classifier_bundle", lambda m: m["labels"].reverse(), "labels"),
    ("captioner_bundle", lambda m: m["vocabulary"].update(
        itos=m["vocabulary"]["itos"][:4] + m["vocabulary"]["itos"][4:][::-1]), "vocabulary"),  # the words, not specials
    ("captioner_bundle", lambda m: m["preprocessing"].update(mean=[0.0, 0.0, 0.0]), "preprocessing"),
    ("classifier_bundle", _loosen, "tolerances"),
    ("captioner_bundle", _all_random, "reference.cases"),
    ("captioner_bundle", lambda m: m["decoding"].update(beam_size=3), "decoding"),
    ("classifier_bundle", lambda m: m["task_thresholds"]["fp32"].update(min_top1_agreement=0.0), "task_thresholds"),
    ("classifier_bundle", lambda m: m["config"].update(scores="probabilities"), "config.scores"),
], ids=["labels", "vocabulary", "preprocessing", "tolerances", "case kinds", "decoding", "thresholds", "scores"])
def test_manifest_entries_edited_after_export_fail_validation(request, tmp_path, fixture, change, entry):
    """The reference feeds preprocessed tensors and compares token ids and class indices: an edited manifest
    (reversed class names, a permuted vocabulary, another mean, looser tolerances ...) would change every
    answer a user sees, or what validate checks, and pass every other check."""
    bundle = _copy(request.getfixturevalue(fixture), tmp_path)
    _edit_manifest(bundle, change)
    result = run(["validate", str(bundle), "--precision", "fp32", "--no-check"])
    assert result.exit_code == 1 and "entries.unchanged" in result.output, result.output
    assert "changed since export: {}".format(entry) in result.output, result.output


def _entries_detail(bundle):
    """The detail of a passing validation's entries.unchanged check."""
    result = run(["validate", str(bundle), "--precision", "fp32", "--no-check", "--json"])
    assert result.exit_code == 0, result.output
    return [c for c in json.loads(result.stdout)["checks"] if c["name"] == "entries.unchanged"][0]["detail"]


def test_entries_not_recorded_or_known_to_one_jetcap_version_only_are_not_a_failure(classifier_bundle, tmp_path):
    """A bundle exported before the record existed, or by a jetcap that records other entries (the PC and
    the Jetson need not run the same version): said, not failed; a change among the common ones still fails."""
    from jetcap.runtime import bundle_schema

    bundle = _copy(classifier_bundle, tmp_path)
    _rewrite_reference(bundle, lambda arrays: arrays.pop(bundle_schema.ENTRIES_KEY))
    assert "not recorded" in _entries_detail(bundle)

    def skewed(arrays):
        record = json.loads(str(arrays[bundle_schema.ENTRIES_KEY]))
        record["decoder.future_entry"] = "0" * 64  # a later jetcap's entry
        del record["config.scores"]  # an entry this jetcap records and that one did not
        arrays[bundle_schema.ENTRIES_KEY] = np.asarray(json.dumps(record))

    bundle = _copy(classifier_bundle, tmp_path, name="skewed")
    _rewrite_reference(bundle, skewed)
    assert "not checked (known to one jetcap version only): config.scores, decoder.future_entry" in \
        _entries_detail(bundle)
    _edit_manifest(bundle, lambda m: m["labels"].reverse())
    assert run(["validate", str(bundle), "--precision", "fp32", "--no-check"]).exit_code == 1
