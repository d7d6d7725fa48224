"""A real tritonserver (PyTriton's build, Python backend, CPU) on 127.0.0.1 serving both sample bundles:
health, KServe v2 inference over HTTP and gRPC equal to ``jetcap caption``/``jetcap predict``, dynamic
batching under 16 concurrent clients, clean SIGTERM shutdown, and ``jetcap serve-triton`` end to end.

The server and its clients run in the Triton venv (numpy < 2) through subprocesses; skipped with the reason
where that venv is missing or its tritonserver cannot run on this machine."""
import json
import os
import signal
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from click.testing import CliRunner

from jetcap import samples
from jetcap.cli import cli
from jetcap.runtime.inference import read_images
from jetcap.runtime.manifest import Manifest
from jetcap.triton.repository import RepositoryOptions, write_repository
from tests.triton_serving.helpers import ROOT, TRITON_PYTHON, triton_env, tritonserver_unrunnable

pytestmark = pytest.mark.slow

CLIENTS = 16
BEAM = 3


def _sample_images():
    folder = os.path.join(os.path.dirname(samples.__file__), "data", "images")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".png"))[:4]


def _sample_sequences():
    folder = os.path.join(os.path.dirname(samples.__file__), "data", "sequences")
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".npy"))


@pytest.fixture(scope="module")
def runnable():
    reason = tritonserver_unrunnable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def served(runnable, tmp_path_factory, captioner_bundle, classifier_bundle):
    """Run the driver once: four repositories (in-process and BLS, both families) in one server."""
    root = tmp_path_factory.mktemp("triton-serve")
    repos = []
    for bundle, backend, name in ((captioner_bundle, "python", "captioner"),
                                  (classifier_bundle, "python", "classifier"),
                                  (captioner_bundle, "python-bls", "cap_bls"),
                                  (classifier_bundle, "python-bls", "cls_bls")):
        repo = root / name
        # 20 ms: on a loaded 2-core CI runner the 16 clients' requests (one Python process) can arrive
        # further apart than 2 ms, and then every batch held one request
        write_repository(bundle, repo, RepositoryOptions(backend=backend, name=name, queue_delay_us=20000))
        repos.append(str(repo))
    (root / "work").mkdir()
    batch = read_images(_sample_images(), Manifest.load(captioner_bundle).preprocessing)
    np.save(str(root / "images.npy"), batch.arrays)
    spec = {"beam_size": BEAM, "preprocessed": str(root / "images.npy"), "repositories": repos,
            "workdir": str(root / "work"), "images": _sample_images(),
            "sequences": _sample_sequences(), "captioners": ["captioner", "cap_bls"],
            "classifiers": ["classifier", "cls_bls"], "concurrent_model": "captioner", "clients": CLIENTS,
            "requests_per_client": 4}
    spec_path, out_path = root / "spec.json", root / "out.json"
    spec_path.write_text(json.dumps(spec))
    driver = os.path.join(os.path.dirname(__file__), "triton_driver.py")
    result = subprocess.run([str(TRITON_PYTHON), driver, str(spec_path), str(out_path)], capture_output=True,
                            text=True, env=triton_env(), timeout=480)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out_path.read_text())


def test_health_and_ready(served):
    assert served["health"] == {"live": 200, "ready": 200}
    assert set(served["models_ready"].values()) == {200}
    assert served["server_metadata"]["name"] == "triton"
    listen = served["command"]
    for flag in ("--http-address", "--grpc-address", "--metrics-address"):
        assert listen[listen.index(flag) + 1] == "127.0.0.1"


def test_captions_equal_jetcap_caption(served, captioner_bundle):
    result = CliRunner().invoke(cli, ["caption", str(captioner_bundle), "--backend", "onnxruntime", "--json"]
                                + _sample_images())
    assert result.exit_code == 0, result.output
    expected = [entry["caption"] for entry in json.loads(result.stdout)]
    assert all(expected)
    for key in ("captioner/http", "captioner/grpc", "cap_bls/http", "cap_bls/grpc"):
        assert served["captions"][key] == expected, key


def test_beam_search_and_preprocessed_batch_equal_jetcap_caption(served, captioner_bundle):
    result = CliRunner().invoke(cli, ["caption", str(captioner_bundle), "--backend", "onnxruntime", "--beam",
                                      str(BEAM), "--json"] + _sample_images())
    assert result.exit_code == 0, result.output
    expected = [entry["caption"] for entry in json.loads(result.stdout)]
    greedy = served["captions"]["captioner/http"]
    for model in ("captioner", "cap_bls"):
        assert served["beam_captions"][model] == expected, model
        assert served["batch_captions"][model] == greedy, model


def test_labels_equal_jetcap_predict(served, classifier_bundle):
    result = CliRunner().invoke(cli, ["predict", str(classifier_bundle), "--backend", "onnxruntime", "--json"]
                                + _sample_sequences())
    assert result.exit_code == 0, result.output
    predictions = json.loads(result.stdout)
    expected = [entry["label"] for entry in predictions]
    names = Manifest.load(classifier_bundle).labels
    for key in ("classifier/http", "classifier/grpc", "cls_bls/http", "cls_bls/grpc"):
        assert served["labels"][key] == expected, key
        for probs, entry in zip(served["probabilities"][key], predictions):
            assert max(abs(p - entry["probabilities"][name]) for p, name in zip(probs, names)) < 1e-5, key


def test_bad_input_is_an_error_response(served):
    assert served["bad_input_error"] and "not a readable image" in served["bad_input_error"]


def test_dynamic_batching_under_concurrent_clients(served):
    stats = served["concurrency"]
    assert stats["errors"] == []
    assert stats["inferences"] == stats["requests"] == CLIENTS * 4
    assert stats["average_batch"] > 1.0, stats


def test_clean_shutdown_on_sigterm(served):
    assert served["shutdown_code"] == 0, served["log_tail"]
    assert served["shutdown_seconds"] < 20


def test_serve_triton_command_end_to_end(runnable, classifier_bundle):
    command = [str(TRITON_PYTHON), "-m", "jetcap.cli", "serve-triton", str(classifier_bundle), "--port", "0",
               "--grpc-port", "0", "--metrics-port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=triton_env(),
                               cwd=str(ROOT))
    try:
        line = process.stdout.readline()  # printed once ready (the command's ready timeout bounds the wait)
        assert line.startswith("http="), process.stderr.read() if process.poll() is not None else line
        fields = dict(part.split("=", 1) for part in line.split())
        assert fields["model"] == "classifier" and fields["http"].startswith("127.0.0.1:")
        with urllib.request.urlopen("http://{}/v2/models/classifier/ready".format(fields["http"]), timeout=10) as r:
            assert r.status == 200
        began = time.time()
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.stderr.read()
        assert time.time() - began < 30
        assert "tritonserver exited with code 0" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
