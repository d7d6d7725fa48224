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


def _assert_refused(bundle, tmp_path, change, message):
    """A copy of ``bundle`` with ``change`` made to its manifest loads as a one-line BundleError with ``message``."""
    bundle = _copy(bundle, tmp_path)
    _edit(bundle, change)
    with pytest.raises(BundleError) as info:
        Manifest.load(bundle)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name, change, message", CLASSIFIER_CASES, ids=[c[0] for c in CLASSIFIER_CASES])
def test_malformed_manifests_are_one_line(classifier_bundle, tmp_path, name, change, message):
    _assert_refused(classifier_bundle, tmp_path, change, message)


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


def _rehash(bundle):
    """Checksums of every variant file as they are now (a tampering that keeps the manifest consistent)."""
    def change(data):
        for variant in data["variants"].values():
            for entry in variant["files"].values():
                path = bundle / entry["path"]
                entry["sha256"], entry["bytes"] = sha256_file(str(path)), path.stat().st_size
    _edit(bundle, change)


CAPTIONER_CASES = [
    ("graph_order nested", _set("graph_order", [["encoder"]]), "graph_order[0]"),
    ("no specials", _delete("vocabulary", "specials"), "lacks 'start'"),
    ("end is start", _set("vocabulary", "specials", "end", 1), "start and end are the same token"),
    ("itos short", lambda d: d["vocabulary"].update(itos=d["vocabulary"]["itos"][:5]), "has 5 words, but"),
    ("no cases", _delete("reference", "cases"), "reference.cases must be an object"),
    ("cases list", _set("reference", "cases", [1]), "reference.cases must be an object"),
    ("empty cases", _set("reference", "cases", {"encoder": [], "decoder_step": []}), "at least 1 entry"),
    ("version true", _set("format_version", True), "format version True"),
    ("scale overflow", _set("preprocessing", "scale", 1e300), "preprocessing.scale must be between"),
    ("std near 0", _set("preprocessing", "std", [1e-300, 1.0, 1.0]), "preprocessing.std must be between"),
]


@pytest.mark.parametrize("name, change, message", CAPTIONER_CASES, ids=[c[0] for c in CAPTIONER_CASES])
def test_captioner_entries_that_used_to_end_in_tracebacks(captioner_bundle, tmp_path, name, change, message):
    _assert_refused(captioner_bundle, tmp_path, change, message)


def test_graph_files_that_are_not_the_manifests_graphs_are_refused_at_load(captioner_bundle, tmp_path):
    from jetcap.runtime.session import open_bundle

    swapped = _copy(captioner_bundle, tmp_path, "swapped")
    files = json.loads((swapped / "manifest.json").read_text())["variants"]["fp32"]["files"]
    _edit(swapped, lambda d: d["variants"]["fp32"]["files"].update(
        encoder=files["decoder_step"], decoder_step=files["encoder"]))
    with pytest.raises(BundleError, match="is not the graph the manifest describes: inputs"):
        open_bundle(swapped, backend="onnxruntime").close()
    truncated = _copy(captioner_bundle, tmp_path, "truncated")
    data = (truncated / "encoder.onnx").read_bytes()
    (truncated / "encoder.onnx").write_bytes(data[:len(data) // 3])
    _rehash(truncated)
    with pytest.raises(BundleError, match="ONNX Runtime cannot load .*encoder.onnx"):
        open_bundle(truncated, backend="onnxruntime").close()


def _nan_classifier(path, width, classes, zeros_only=False):
    """An ONNX classifier whose logits are NaN whatever the input (a broken graph), or with ``zeros_only``
    for an all-zero clip only (0/0: a model normalising by what it sees, with nothing to see)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("ReduceSum", ["sequence", "axis1"], ["summed"], keepdims=0),
             helper.make_node("Slice", ["summed", "zero", "classes", "axis1"], ["first"])]
    if zeros_only:
        nodes += [helper.make_node("Abs", ["first"], ["magnitude"]),
                  helper.make_node("ReduceSum", ["magnitude", "axis1"], ["norm"], keepdims=1),
                  helper.make_node("Div", ["first", "norm"], ["logits"])]
    else:
        nodes.append(helper.make_node("Mul", ["first", "nan"], ["logits"]))
    inits = [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([classes], np.int64), "classes"),
             numpy_helper.from_array(np.array(np.nan, np.float32), "nan")]
    graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info("sequence", TensorProto.FLOAT,
                                                                           ["batch", "T", width])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_nan_results_are_an_error_not_an_answer(classifier_bundle, captioner_bundle, tmp_path):
    import numpy as np

    from jetcap import samples
    from jetcap.runtime.session import open_bundle

    bundle = _copy(classifier_bundle, tmp_path, "nan")
    manifest = Manifest.load(bundle)
    spec = manifest.graph("model")
    if [t["name"] for t in spec["outputs"]] != ["logits"]:  # keep the manifest's outputs: only logits
        _edit(bundle, lambda d: d["graphs"]["model"].update(outputs=[t for t in d["graphs"]["model"]["outputs"]
                                                                    if t["name"] == "logits"]))
    _nan_classifier(bundle / "model.onnx", int(manifest.config["input_size"]), len(manifest.labels))
    _rehash(bundle)
    result = CliRunner().invoke(cli, ["predict", str(bundle), str(samples.sample_sequences()[0]),
                                      "--precision", "fp32"])
    assert result.exit_code == 2 and "not finite numbers" in result.output and "Traceback" not in result.output
    with open_bundle(captioner_bundle, backend="onnxruntime") as session:
        height, width = session.manifest.preprocessing["image_size"]
        with pytest.raises(BundleError, match="produced a nan score"):
            session.caption_pipeline().caption(np.full((2, 3, height, width), np.nan, np.float32))


def test_a_classifier_without_an_answer_for_some_inputs_still_serves(classifier_bundle, tmp_path):
    # a model that masks all-zero frames (missing hands) answers NaN for a clip of nothing else: that
    # request is refused, the server warms up on the bundle's own reference input and stays ready
    import io

    import numpy as np

    from jetcap.errors import UsageError
    from jetcap.runtime.serving import JsonLog, ModelState
    from jetcap.serve.options import ServeOptions

    bundle = _copy(classifier_bundle, tmp_path, "zeros")
    manifest = Manifest.load(bundle)
    width = int(manifest.config["input_size"])
    _edit(bundle, lambda d: d["graphs"]["model"].update(outputs=[t for t in d["graphs"]["model"]["outputs"]
                                                                if t["name"] == "logits"]))
    _nan_classifier(bundle / "model.onnx", width, len(manifest.labels), zeros_only=True)
    _rehash(bundle)
    model = ModelState(bundle, ServeOptions(port=0, precision="fp32"), JsonLog(io.StringIO()))
    model.load()
    try:
        assert model.ready, model.reason
        length = int(manifest.axes["T"]["opt"])
        with pytest.raises(UsageError, match="not finite numbers.*no answer for this input"):
            model.predict(np.zeros((length, width)).tolist())
        assert model.predict(np.ones((length, width)).tolist())["label"] in manifest.labels
        assert model.ready
    finally:
        model.close()


def test_validate_fails_a_reference_that_lost_arrays(captioner_bundle, tmp_path):
    import numpy as np

    bundle = _copy(captioner_bundle, tmp_path, "lost")
    path = bundle / "reference.npz"
    with np.load(str(path)) as data:
        kept = dict((k, data[k]) for k in data.files if not k.endswith("/out/features"))
    np.savez(str(path), **kept)
    _edit(bundle, _set("reference", "sha256", sha256_file(str(path))))
    result = CliRunner().invoke(cli, ["validate", str(bundle), "--precision", "fp32", "--no-check"])
    assert result.exit_code == 1 and "reference.complete" in result.output and "has no features" in result.output
    with np.load(str(path)) as data:
        kept = dict((k, data[k]) for k in data.files if k != "task/names")
    np.savez(str(path), **kept)
    _edit(bundle, _set("reference", "sha256", sha256_file(str(path))))
    result = CliRunner().invoke(cli, ["validate", str(bundle), "--precision", "fp32", "--no-check"])
    assert result.exit_code == 2 and "lacks 'task/names'" in result.output


def test_tolerance_overrides_are_checked(captioner_bundle):
    runner = CliRunner()
    base = ["validate", str(captioner_bundle), "--precision", "fp16", "--no-check"]
    result = runner.invoke(cli, base + ["--tolerance", "nosuch=0.1,0.1"])
    assert result.exit_code == 2 and "not among the bundle's outputs" in result.output
    result = runner.invoke(cli, base + ["--tolerance", "log_probs=1,1", "--tolerance", "log_probs=2,2"])
    assert result.exit_code == 2 and "given twice" in result.output
    result = runner.invoke(cli, base + ["--tolerance", "log_probs=inf,0"])
    assert result.exit_code == 2 and "finite" in result.output
    result = runner.invoke(cli, base + ["--tolerance", "log_probs=10,10", "--json"])
    checks = json.loads(result.stdout)["checks"]
    cosine = [c for c in checks if c["name"] == "log_probs.cosine" and c["graph"] == "decoder_step"]
    assert cosine and all(c["threshold"] == 0.999 for c in cosine)  # the precision's, not 0


def test_exported_files_have_the_umasks_mode_not_mkstemps_0600(captioner_bundle):
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("manifest.json", "reference.npz", "encoder.onnx"):
        mode = os.stat(str(captioner_bundle / name)).st_mode & 0o777
        assert mode == 0o666 & ~mask, (name, oct(mode))
    assert os.stat(str(captioner_bundle)).st_mode & 0o777 == 0o777 & ~mask  # mkdtemp's 0700 would lock others out


def test_a_manifest_that_links_outside_the_bundle_is_refused(classifier_bundle, tmp_path):
    bundle = _copy(classifier_bundle, tmp_path)
    outside = tmp_path / "elsewhere.json"
    (bundle / "manifest.json").rename(outside)
    os.symlink(str(outside), str(bundle / "manifest.json"))
    with pytest.raises(BundleError, match="leads outside the bundle"):
        Manifest.load(bundle)


def test_the_warm_up_sequence_needs_no_reference_data(classifier_bundle, tmp_path):
    # predict never reads reference.npz: a server must not need it either (a seeded sequence instead)
    from jetcap.runtime.serving import warmup_sequence

    bundle = _copy(classifier_bundle, tmp_path, "noref")
    manifest = Manifest.load(bundle)
    width, axis = int(manifest.config["input_size"]), manifest.axes["T"]
    from_reference = warmup_sequence(manifest, axis["min"], axis["max"], width)
    (bundle / "reference.npz").unlink()
    fallback = warmup_sequence(Manifest.load(bundle), axis["min"], axis["max"], width)
    assert fallback.shape == (axis["opt"], width) and fallback.dtype.name == "float32" and fallback.any()
    assert from_reference.shape[1] == width and not (from_reference.shape == fallback.shape and
                                                     (from_reference == fallback).all())


@pytest.mark.parametrize("fixture, change, message", [
    ("captioner_bundle", _set("preprocessing", "image_size", [64, 64]),
     "preprocessing.image_size [64, 64] disagrees with the encoder graph's input images"),
    ("captioner_bundle", _set("decoding", "beam_size", 1024), "decoding.beam_size must be between 1 and 8"),
    ("classifier_bundle", _set("config", "input_size", 10), "config.input_size 10 disagrees with the model graph"),
    ("captioner_bundle", _set("family", "classifier"), "classifier bundle lacks 'labels'"),
], ids=["image size", "beam", "input size", "family"])
def test_entries_every_request_would_fail_on_are_refused_by_validate_serve_and_triton(request, tmp_path, fixture,
                                                                                       change, message):
    """A manifest whose own entries disagree with its graphs: validate used to pass it (the reference feeds
    preprocessed tensors), caption then refused every image; now each command refuses it in one line."""
    bundle = _copy(request.getfixturevalue(fixture), tmp_path)
    _edit(bundle, change)
    runner = CliRunner()
    for args in (["validate", str(bundle), "--precision", "fp32", "--no-check"],
                 ["triton-repo", str(bundle), str(tmp_path / "repo"), "--backend", "python"]):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
    with pytest.raises(BundleError) as info:  # what serve-engine, caption, predict and bench do at load
        manifest = Manifest.load(bundle)
        bundle_schema.require_entries(manifest, "caption" if manifest.family == "captioner" else "predict")
    assert message in str(info.value)
