"""Bundles are untrusted input: one schema check on load, confined paths, checksums of every file.

Each case is a copy of a real exported bundle with one tampering; every one must end in a one-line
BundleError (the CLI: exit 2, no traceback), never in a traceback or a file read outside the bundle.
"""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from jetcap.cli import cli
from jetcap.errors import BundleError
from jetcap.runtime import bundle_schema
from jetcap.runtime.manifest import Manifest
from jetcap.util.fsio import sha256_file


def _copy(bundle, tmp_path, name="tampered"):
    target = tmp_path / name
    shutil.copytree(str(bundle), str(target))
    return target


def _edit(bundle, change):
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return change


def _delete(*keys):
    def change(data):
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return change


CLASSIFIER_CASES = [
    ("variants list", _set("variants", []), "'variants' must be an object"),
    ("variants string", _set("variants", "fp32"), "'variants' must be an object"),
    ("null path", _set("variants", "fp32", "files", "model", "path", None), "must be a relative path"),
    ("absolute path", _set("variants", "fp32", "files", "model", "path", "/etc/passwd"), "is absolute"),
    ("dotdot path", _set("variants", "fp32", "files", "model", "path", "../../etc/passwd"), "leaves the bundle"),
    ("unnormalised path", _set("variants", "fp32", "files", "model", "path", "./model.onnx"), "not normalised"),
    ("batch max -1", _set("axes", "batch", "max", -1), "axes.batch.max must be between"),
    ("batch max text", _set("axes", "batch", "max", "eight"), "must be an integer"),
    ("min above max", _set("axes", "T", "min", 500), "min <= opt <= max"),
    ("dtype", _set("graphs", "model", "inputs", 0, "dtype", "complex999"), "dtype must be one of"),
    ("family", _set("family", "detector"), "'family' must be one of"),
    ("labels dict", _set("labels", {"a": 1}), "'labels' must be a list"),
    ("labels short", _set("labels", ["a", "b"]), "has 2 names but the model outputs 6 classes"),
    ("graph name escape", lambda d: d["graphs"].update({"x/../../../ESCAPED": d["graphs"].pop("model")}),
     "not a valid name"),
    ("unknown axis", _set("graphs", "model", "inputs", 0, "shape", ["batch", "frames", 63]), "neither a size"),
    ("bad sha", _set("variants", "fp32", "files", "model", "sha256", "abc"), "sha256"),
    ("tolerance text", _set("tolerances", "fp32", "atol", "small"), "finite number"),
    ("reference escape", _set("reference", "path", "../x.npz"), "leaves the bundle"),
    ("decoder shape", _set("decoder", {"word_input": 3}), "decoder.word_input"),
    ("lacks graphs", _delete("graphs"), "lacks 'graphs'"),
]


@pytest.mark.parametrize("name, change, message", CLASSIFIER_CASES, ids=[c[0] for c in CLASSIFIER_CASES])
def test_malformed_manifests_are_one_line(classifier_bundle, tmp_path, name, change, message):
    bundle = _copy(classifier_bundle, tmp_path)
    _edit(bundle, change)
    with pytest.raises(BundleError) as info:
        Manifest.load(bundle)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_captioner_preprocessing_and_vocabulary_are_checked(captioner_bundle, tmp_path):
    for change, message in ((_set("preprocessing", "image_size", "big"), "must be a list"),
                            (_set("preprocessing", "std", [0.2, 0.0, 0.2]), "must be positive"),
                            (_set("preprocessing", "resize", "lanczos9"), "resize must be one of"),
                            (_set("vocabulary", "specials", "end", 999), "vocabulary.specials.end")):
        bundle = _copy(captioner_bundle, tmp_path, name="c{}".format(len(os.listdir(str(tmp_path)))))
        _edit(bundle, change)
        with pytest.raises(BundleError, match=message):
            Manifest.load(bundle)


def test_unknown_keys_and_a_decoder_entry_are_accepted(captioner_bundle, tmp_path):
    bundle = _copy(captioner_bundle, tmp_path)
    decoder = {"word_input": "prev_word", "log_probs": "log_probs", "attention": None,
               "state": [{"input": "h", "output": "h_new", "init": "h0"}],
               "context": [{"input": "features", "init": "features"}]}
    _edit(bundle, lambda d: d.update({"decoder": decoder, "future_entry": {"x": 1}}) or d["source"].update(
        {"new_key": [1, 2]}))
    assert Manifest.load(bundle).data["decoder"] == decoder


def test_symlink_leaving_the_bundle_is_refused(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    outside = tmp_path / "outside.onnx"
    shutil.copy(str(bundle / "model.onnx"), str(outside))
    os.unlink(str(bundle / "model.onnx"))
    os.symlink(str(outside), str(bundle / "model.onnx"))
    with pytest.raises(BundleError, match="outside the bundle"):
        Manifest.load(bundle)


def test_reference_checksum_is_checked(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    with open(str(bundle / "reference.npz"), "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match="reference data.*checksum"):
        Manifest.load(bundle).reference_path()


def test_external_data_must_be_listed_and_is_checksummed(classifier_bundle, tmp_path):
    onnx = pytest.importorskip("onnx")
    bundle = _copy(classifier_bundle, tmp_path)
    model = onnx.load(str(bundle / "model.onnx"))
    onnx.save_model(model, str(bundle / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data", size_threshold=0)
    entry = {"path": "model.onnx", "sha256": sha256_file(str(bundle / "model.onnx"))}
    _edit(bundle, _set("variants", "fp32", "files", "model", entry))
    manifest = Manifest.load(bundle)
    with pytest.raises(BundleError, match="external data 'model.onnx.data' that the manifest does not checksum"):
        manifest.verify_file("fp32", "model")
    entry["external_data"] = [{"path": "model.onnx.data", "sha256": sha256_file(str(bundle / "model.onnx.data"))}]
    _edit(bundle, _set("variants", "fp32", "files", "model", entry))
    Manifest.load(bundle).verify_file("fp32", "model")
    with open(str(bundle / "model.onnx.data"), "r+b") as handle:  # a tampered weight
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0x55]))
    with pytest.raises(BundleError, match="external data of fp32 model.*checksum"):
        Manifest.load(bundle).verify_file("fp32", "model")


def test_cli_answers_one_line_exit_2(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    _edit(bundle, _set("axes", "batch", "max", "eight"))
    sequence = tmp_path / "s.json"
    sequence.write_text(json.dumps([[0.0] * 63] * 30))
    for args in (["predict", str(bundle), str(sequence)], ["triton-repo", str(bundle), str(tmp_path / "repo")],
                 ["build", str(bundle)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and "malformed manifest" in result.output
    assert not (tmp_path / "repo").exists()


def test_triton_repo_never_writes_outside_its_folder(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    _edit(bundle, _set("variants", "fp32", "files", "model", "path", "../../../../ESCAPED.onnx"))
    result = CliRunner().invoke(cli, ["triton-repo", str(bundle), str(tmp_path / "repo")])
    assert result.exit_code == 2 and "leaves the bundle" in result.output
    result = CliRunner().invoke(cli, ["triton-repo", str(classifier_bundle), str(tmp_path / "repo2"),
                                      "--name", "../../x"])
    assert result.exit_code == 2 and "not a plain name" in result.output
    assert sorted(os.listdir(str(tmp_path))) == ["tampered"]


def test_check_relative_path_rules():
    for good in ("model.onnx", "fp16/encoder.onnx", "a.b-c_d.onnx.data"):
        assert bundle_schema.check_relative_path(good, "p") == good
    for bad in ("", "/abs", "a/../b", "a//b", "./a", "a\\b", "C:x", "a\0b", "..", "a/"):
        with pytest.raises(BundleError):
            bundle_schema.check_relative_path(bad, "p")
