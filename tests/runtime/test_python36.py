"""The runtime on a real Python 3.6 (JetPack 4.6's), with the runtime dependencies only: no torch, no
onnx, old numpy/Pillow/click/onnxruntime.  `make test` builds `.venv36` from pyenv's 3.6 when the
machine has one; the source tree is put first on PYTHONPATH so the current code is what runs."""
import json
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PY36 = os.path.join(ROOT, ".venv36", "bin", "python")

pytestmark = pytest.mark.skipif(not os.path.isfile(PY36),
                                reason="no Python 3.6 environment (.venv36: run `make py36` where python3.6 exists)")


def jetcap36(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run([PY36, "-m", "jetcap"] + [str(a) for a in args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, env=env, cwd=ROOT, timeout=600)
    return proc


def test_interpreter_is_36_without_torch():
    proc = subprocess.run([PY36, "-c", "import sys, importlib.util as u; print(sys.version_info[:2], "
                                       "u.find_spec('torch') is None, u.find_spec('onnx') is None)"],
                          stdout=subprocess.PIPE, universal_newlines=True)
    assert proc.stdout.strip() == "(3, 6) True True"


def test_validate_on_python36(classifier_bundle, captioner_bundle):
    for bundle in (classifier_bundle, captioner_bundle):
        proc = jetcap36("validate", bundle, "--precision", "fp32", "--precision", "fp16")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "PASSED" in proc.stdout


def test_caption_and_predict_on_python36(classifier_bundle, captioner_bundle):
    from jetcap import samples
    from jetcap.runtime.manifest import Manifest
    from jetcap.util.npz import load_npz

    images = samples.sample_images()
    proc = jetcap36("caption", captioner_bundle, *images, "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    ref = load_npz(os.path.join(str(captioner_bundle), "reference.npz"))
    vocab = Manifest.load(captioner_bundle).vocabulary()
    expected = {str(n): vocab.decode([t for t in row if t >= 0])
                for n, row in zip(ref["task/names"], ref["task/greedy_tokens"])}
    for item in results:
        name = os.path.basename(item["image"])
        assert item["caption"] == expected[name], name
    proc = jetcap36("predict", classifier_bundle, *samples.sample_sequences(), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
