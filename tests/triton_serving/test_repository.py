"""``jetcap triton-repo``: repository layout for both bundles and every backend, every config.pbtxt parsed
with Triton's own ModelConfig message (tritonclient, from the Triton venv), atomic writes and clear errors."""
import json
import os
import shutil

import pytest
from click.testing import CliRunner

from jetcap.cli import cli
from jetcap.errors import BundleError, UsageError
from jetcap.runtime import engine as engine_cache
from jetcap.runtime.manifest import Manifest
from jetcap.triton.repository import RepositoryOptions, write_repository
from tests.triton_serving.helpers import check_repositories, triton_python_missing

BACKENDS = ("onnxruntime", "python", "python-bls", "tensorrt")


def _fake_target_engines(bundle, cache):
    """Engine-cache entries as ``jetcap build`` leaves them for a Jetson Nano (TensorRT 8.2).  The payload is
    not a TensorRT plan (TensorRT cannot be installed here): these tests only check that triton-repo picks the
    matching cache entries and copies them as model.plan; Triton itself is what loads a plan."""
    manifest = Manifest.load(bundle)
    for graph in manifest.graph_names:
        sha = manifest.variant("fp32")["files"][graph]["sha256"]
        fields = engine_cache.engine_key_fields(sha, "8.2.1", "NVIDIA Tegra X1", (5, 3), "fp32",
                                                manifest.profile(graph))
        engine_cache.store(cache, graph, "fp32", fields, ("engine bytes of " + graph).encode())
    return manifest


@pytest.fixture(scope="module")
def repositories(tmp_path_factory, captioner_bundle, classifier_bundle):
    """``{(family, backend): (repo path, record)}`` for both sample bundles and every backend."""
    root = tmp_path_factory.mktemp("triton-repos")
    out = {}
    for family, bundle in (("captioner", captioner_bundle), ("classifier", classifier_bundle)):
        cache = root / "engines-{}".format(family)
        _fake_target_engines(bundle, cache)
        for backend in BACKENDS:
            repo = root / "{}-{}".format(family, backend)
            options = RepositoryOptions(backend=backend, engine_cache=str(cache), instances=2, queue_delay_us=250)
            out[(family, backend)] = (str(repo), write_repository(bundle, repo, options))
    return out


@pytest.fixture(scope="module")
def parsed(repositories):
    missing = triton_python_missing()
    if missing:
        pytest.skip("Triton's ModelConfig message comes from tritonclient in the Triton venv: " + missing)
    return check_repositories(*[repo for repo, _ in repositories.values()])


def test_every_config_parses_as_triton_model_config(repositories, parsed):
    for (family, backend), (repo, record) in repositories.items():
        summary, problems = parsed[repo]
        assert problems == [], (family, backend, problems)
        assert sorted(summary) == sorted(record["models"]), (family, backend)
        for model, entry in summary.items():
            assert entry["max_batch_size"] == 8 and entry["dynamic_batching"] and entry["queue_delay_us"] == 250
            assert entry["instances"][0][0] == 2


def test_graph_models_dims_and_platforms(repositories, parsed):
    summary = parsed[repositories[("captioner", "onnxruntime")][0]][0]
    enc, step = summary["captioner_encoder"], summary["captioner_decoder_step"]
    assert enc["platform"] == "onnxruntime_onnx" and enc["inputs"] == {"images": [3, 96, 96]}
    assert enc["outputs"]["features"] == [9, 576] and enc["instances"][0][1] == "KIND_AUTO"
    assert step["inputs"]["prev_word"] == [1] and step["outputs"]["log_probs"] == [17]
    entry = summary["captioner"]
    assert entry["backend"] == "python" and entry["parameters"]["mode"] == "bls"
    assert entry["parameters"]["encoder_model"] == "captioner_encoder"
    assert set(entry["inputs"]) == {"image", "images", "beam_size", "max_len"}
    assert entry["outputs"] == {"caption": [1], "score": [1]}
    cls = parsed[repositories[("classifier", "onnxruntime")][0]][0]
    assert cls["classifier_model"]["inputs"] == {"sequence": [-1, 63]}
    assert cls["classifier_model"]["outputs"] == {"logits": [6], "attention": [-1, -1]}
    assert cls["classifier"]["outputs"] == {"label": [1], "index": [1], "probabilities": [6]}


def test_tensorrt_repository_uses_cached_plans(repositories, parsed):
    repo, record = repositories[("captioner", "tensorrt")]
    summary = parsed[repo][0]
    assert summary["captioner_encoder"]["platform"] == "tensorrt_plan"
    assert summary["captioner_encoder"]["instances"][0][1] == "KIND_GPU"
    with open(os.path.join(repo, "captioner_encoder", "1", "model.plan"), "rb") as handle:
        assert handle.read() == b"engine bytes of encoder"
    assert record["models"]["captioner_encoder"]["tensorrt"] == "8.2.1"
    # TensorRT 8 has no INT64 bindings: the step's word input is served (and sent through BLS) as INT32
    with open(os.path.join(repo, "captioner_decoder_step", "config.pbtxt")) as handle:
        text = handle.read()
    assert 'name: "prev_word"\n    data_type: TYPE_INT32' in text
    dtypes = json.loads(summary["captioner"]["parameters"]["served_dtypes"])
    assert dtypes["decoder_step"]["prev_word"] == "int32"


def test_python_backends_carry_bundle_and_runtime(repositories):
    repo, _ = repositories[("captioner", "python")]
    version = os.path.join(repo, "captioner", "1")
    assert sorted(os.listdir(os.path.join(version, "bundle"))) == ["decoder_step.onnx", "encoder.onnx", "manifest.json"]
    assert os.path.isfile(os.path.join(version, "jetcap", "runtime", "decoding.py"))
    assert os.path.isfile(os.path.join(version, "jetcap", "triton", "pymodels.py"))
    assert not os.path.exists(os.path.join(version, "jetcap", "models"))  # torch-side code stays out
    bls, _ = repositories[("captioner", "onnxruntime")]
    assert os.listdir(os.path.join(bls, "captioner", "1", "bundle")) == ["manifest.json"]
    cls, _ = repositories[("classifier", "python")]
    with open(os.path.join(cls, "classifier", "labels.txt")) as handle:
        assert handle.read().split() == ["wave", "swipe_left", "swipe_right", "circle", "pinch", "point"]


def test_existing_directory_refused_then_replaced_with_force(tmp_path, classifier_bundle):
    out = tmp_path / "repo"
    write_repository(classifier_bundle, out, RepositoryOptions(backend="python"))
    with pytest.raises(UsageError, match="exists"):
        write_repository(classifier_bundle, out, RepositoryOptions(backend="python"))
    record = write_repository(classifier_bundle, out, RepositoryOptions(backend="onnxruntime", force=True))
    assert sorted(os.listdir(out)) == ["classifier", "classifier_model", "jetcap-repository.json"]
    assert record["backend"] == "onnxruntime"
    assert sorted(os.listdir(tmp_path)) == ["repo"]  # no temporary directories left behind


def test_an_out_dir_that_is_inside_or_contains_the_bundle_is_refused_even_with_force(tmp_path, classifier_bundle):
    bundle = tmp_path / "work" / "bundle"
    shutil.copytree(str(classifier_bundle), str(bundle))
    before = sorted(os.listdir(bundle))
    os.symlink(str(bundle), str(tmp_path / "link"))
    for out in (bundle, tmp_path / "link", bundle / "repo", tmp_path / "work"):
        with pytest.raises(UsageError, match="the bundle"):
            write_repository(str(bundle), str(out), RepositoryOptions(backend="python", force=True))
    assert sorted(os.listdir(bundle)) == before and sorted(os.listdir(tmp_path / "work")) == ["bundle"]


def test_tensorrt_without_engines_is_a_clear_error_and_writes_nothing(tmp_path, classifier_bundle):
    with pytest.raises(BundleError, match="no fp32 TensorRT engine for graph 'model'") as info:
        write_repository(classifier_bundle, tmp_path / "repo",
                         RepositoryOptions(backend="tensorrt", engine_cache=str(tmp_path / "empty")))
    assert "jetcap build" in info.value.hint
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("backend", ["tensorrt", "onnxruntime", "python"])
def test_max_batch_beyond_the_bundles_batch_axis_is_refused(tmp_path, classifier_bundle, backend):
    """Engines are built, and every variant validated, up to the bundle's batch max: never beyond it."""
    with pytest.raises(UsageError, match="exceeds the bundle's largest batch"):
        write_repository(classifier_bundle, tmp_path / "repo", RepositoryOptions(backend=backend, max_batch=64))
    assert not (tmp_path / "repo").exists()


def test_bad_options_are_usage_errors():
    for kwargs in ({"backend": "tflite"}, {"max_batch": 0}, {"instances": 0}, {"instances": 10 ** 8},
                   {"queue_delay_us": -1}):
        with pytest.raises(UsageError):
            RepositoryOptions(**kwargs)


def test_cli_writes_repository_and_json(tmp_path, captioner_bundle):
    runner = CliRunner()
    out = tmp_path / "repo"
    result = runner.invoke(cli, ["triton-repo", str(captioner_bundle), str(out), "--max-batch", "4",
                                 "--instances", "3", "--queue-delay-us", "1000", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["entry_model"] == "captioner" and record["max_batch_size"] == 4
    with open(out / "captioner_encoder" / "config.pbtxt") as handle:
        text = handle.read()
    assert "max_batch_size: 4" in text and "count: 3" in text and "max_queue_delay_microseconds: 1000" in text
    again = runner.invoke(cli, ["triton-repo", str(captioner_bundle), str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def test_cli_commands_have_help():
    runner = CliRunner()
    for name in ("triton-repo", "serve-triton"):
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output


def test_a_graph_model_answers_the_outputs_a_request_names_in_the_graphs_order():
    from jetcap.triton.pymodels import requested_outputs

    names = ["log_probs", "h_new", "c_new", "alpha", "topk_log_probs", "topk_ids"]
    assert requested_outputs(names, ["topk_ids", "h_new", "c_new", "topk_log_probs", "alpha"]) == [
        "h_new", "c_new", "alpha", "topk_log_probs", "topk_ids"]
    assert requested_outputs(names, []) == names and requested_outputs(names, None) == names


def test_a_graph_rewritten_with_a_recomputed_checksum_is_refused(tmp_path, classifier_bundle):
    """The checksum only says the file is the one the manifest names; a rewritten one with its checksum
    recomputed must still be the graph the manifest describes."""
    from jetcap.util.fsio import sha256_file

    bundle = tmp_path / "bundle"
    shutil.copytree(str(classifier_bundle), str(bundle))
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["variants"]["fp32"]["files"]["model"]
    (bundle / entry["path"]).write_bytes(b"")
    entry["sha256"], entry["bytes"] = sha256_file(bundle / entry["path"]), 0
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="is not the model graph the manifest describes: it has no nodes"):
        write_repository(str(bundle), str(tmp_path / "repo"), RepositoryOptions(backend="onnxruntime"))
    assert not (tmp_path / "repo").exists()
