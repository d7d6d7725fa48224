"""``jetcap predict``: PyTorch's labels, .npy and JSON inputs, --json, and one clear line per bad input."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from jetcap import samples
from jetcap.cli import cli
from jetcap.runtime.manifest import Manifest
from jetcap.util.npz import load_npz


def run(*args):
    return CliRunner().invoke(cli, ["predict"] + [str(a) for a in args])


@pytest.fixture(scope="module")
def manifest(classifier_bundle):
    return Manifest.load(classifier_bundle)


@pytest.fixture(scope="module")
def expected(manifest):
    """``{sample file name: PyTorch probabilities}`` (the reference holds the sample sequences first)."""
    reference = load_npz(manifest.reference_path())
    out = {}
    for i, path in enumerate(samples.sample_sequences()):
        stored = reference["task/seq_{:03d}".format(i)]
        np.testing.assert_array_equal(stored, np.load(str(path))[:len(stored)])
        out[path.name] = reference["task/probs_{:03d}".format(i)]
    return out


def test_labels_equal_pytorch(classifier_bundle, manifest, expected):
    paths = samples.sample_sequences()
    result = run(classifier_bundle, *paths)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(paths)
    labels = manifest.labels
    for line, path in zip(lines, paths):
        name, label, top = line.split("\t")
        assert name == str(path)
        assert label == labels[int(np.argmax(expected[path.name]))]
        assert len(top.split()) == 3 and top.split()[0].startswith(label + "=")
    assert "ms per sequence" in result.stderr and "fp32" in result.stderr


def test_json_output_and_probabilities(classifier_bundle, manifest, expected):
    path = samples.sample_sequences()[0]
    result = run(classifier_bundle, path, "--json", "--top", 2)
    assert result.exit_code == 0, result.output
    (record,) = json.loads(result.stdout)
    assert set(record) == {"file", "label", "index", "probabilities", "top", "backend", "precision", "latency_ms"}
    probs = np.array([record["probabilities"][label] for label in manifest.labels])
    np.testing.assert_allclose(probs, expected[path.name], atol=1e-4)
    assert [entry["label"] for entry in record["top"]][0] == record["label"] and len(record["top"]) == 2
    assert record["top"][0]["probability"] >= record["top"][1]["probability"]


def test_json_sequences_give_the_same_answer(classifier_bundle, tmp_path):
    path = samples.sample_sequences()[1]
    array = np.load(str(path))
    as_list = tmp_path / "frames.json"
    as_list.write_text(json.dumps(array.tolist()))
    as_dict = tmp_path / "wrapped.json"
    as_dict.write_text(json.dumps({"sequence": array.tolist()}))
    result = run(classifier_bundle, path, as_list, as_dict, "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len({r["label"] for r in records}) == 1
    for record in records[1:]:
        for label, p in record["probabilities"].items():
            assert abs(p - records[0]["probabilities"][label]) < 1e-6


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_other_precisions(classifier_bundle, precision):
    result = run(classifier_bundle, samples.sample_sequences()[0], "--precision", precision, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["precision"] == precision


@pytest.fixture
def bad_inputs(tmp_path, manifest, captioner_bundle):
    width = manifest.config["input_size"]
    shortest, longest = manifest.axes["T"]["min"], manifest.axes["T"]["max"]
    frames = max(20, shortest)
    cases = {}

    def npy(name, array):
        path = tmp_path / name
        np.save(str(path), array)
        return path

    def text(name, content):
        path = tmp_path / name
        path.write_text(content)
        return path

    nan = np.zeros((frames, width), np.float32)
    nan[4, 5] = np.nan
    cases["too long"] = (None, npy("long.npy", np.zeros((longest + 1, width), np.float32)),
                         "has {} frames, more than the bundle's maximum of {}".format(longest + 1, longest))
    cases["wrong width"] = (None, npy("narrow.npy", np.zeros((frames, width - 1), np.float32)),
                            "has {} features per frame, the model expects {}".format(width - 1, width))
    cases["nan"] = (None, npy("nan.npy", nan), "contains NaN or infinite values")
    cases["too short"] = (None, npy("short.npy", np.zeros((shortest - 1, width), np.float32)),
                          "the model needs at least {}".format(shortest))
    cases["wrong rank"] = (None, npy("flat.npy", np.zeros(frames, np.float32)), "expected (T, F)")
    cases["not json"] = (None, text("broken.json", "{not json"), "is not a readable sequence")
    cases["ragged json"] = (None, text("ragged.json", "[[1, 2], [3]]"), "broken")
    cases["pickled npy"] = (None, npy("objects.npy", np.array([{"a": 1}], dtype=object)), "is not a readable sequence")
    cases["missing file"] = (None, tmp_path / "missing.npy", "sequence file not found")
    whole = npy("whole.npy", np.zeros((frames, width), np.float32)).read_bytes()
    (tmp_path / "truncated.npy").write_bytes(whole[:len(whole) // 2])  # a copy cut short
    cases["truncated npy"] = (None, tmp_path / "truncated.npy", "is truncated: its header declares")
    cases["uneven frames"] = (None, text("uneven.json", json.dumps([[0.0] * width, [0.0] * (width - 1)])),
                              "has frames of different lengths")
    cases["captioner bundle"] = (captioner_bundle, samples.sample_sequences()[0],
                                 "is a captioner bundle, not a classifier")
    cases["not a bundle"] = (tmp_path, samples.sample_sequences()[0], "is it a jetcap bundle")
    return cases


CASES = ["too long", "too short", "wrong width", "nan", "wrong rank", "not json", "ragged json", "pickled npy",
         "missing file", "truncated npy", "uneven frames", "captioner bundle", "not a bundle"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_clear_line(classifier_bundle, manifest, bad_inputs, case):
    if case == "too short" and manifest.axes["T"]["min"] < 2:
        pytest.skip("the bundle accepts sequences of one frame")
    bundle, path, message = bad_inputs[case]
    result = run(bundle or classifier_bundle, path)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    if message != "broken":
        assert message in lines[0], lines[0]
    assert "Traceback" not in result.output


def test_a_too_long_sequence_is_refused_before_loading(classifier_bundle, bad_inputs):
    result = run(classifier_bundle, bad_inputs["too long"][1], "--max-memory-mb", 1)
    assert result.exit_code == 2 and "more than the bundle's maximum" in result.stderr
    assert "trim or split the sequence" in result.stderr


def test_too_little_memory(classifier_bundle):
    result = run(classifier_bundle, samples.sample_sequences()[0], "--max-memory-mb", 1)
    assert result.exit_code == 2 and "needs about" in result.stderr and "Traceback" not in result.output


def test_help_documents_the_options():
    result = CliRunner().invoke(cli, ["predict", "--help"])
    assert result.exit_code == 0
    for option in ("--backend", "--precision", "--top", "--json", "--engine-cache", "--max-memory-mb", ".npy"):
        assert option in result.output
