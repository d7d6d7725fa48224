"""The device path works where torch and onnx cannot be imported (a Jetson with only onnxruntime/TensorRT).

Each check runs a fresh interpreter whose import system refuses torch, torchvision, onnx, onnxscript and
onnxslim (a meta-path finder that raises ImportError and records every attempt), then runs the real
``jetcap`` command line in it.
"""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from jetcap import samples
from jetcap.export.tasks import unpad
from jetcap.runtime.manifest import Manifest
from jetcap.util.npz import load_npz

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCKED = ("torch", "torchvision", "onnx", "onnxscript", "onnxslim")
MARKER = "BLOCKED-IMPORTS:"

PRELUDE = textwrap.dedent("""
    import sys

    BLOCKED = {blocked!r}
    attempts = []


    class RefuseHeavyImports(object):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                attempts.append(name)
                raise ImportError("import of {{}} blocked: this interpreter has no torch/onnx".format(name))
            return None


    sys.meta_path.insert(0, RefuseHeavyImports())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]

    code = 0
    if sys.argv[1:2] == ["--try-import"]:  # used to check the blocker itself
        try:
            __import__(sys.argv[2])
        except ImportError as exc:
            print("refused: {{}}".format(exc))
            code = 3
    else:
        from jetcap.cli import main

        try:
            main(sys.argv[1:])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    sys.stderr.write("{marker}" + ",".join(attempts + loaded) + "\\n")
    sys.exit(code)
""").format(blocked=BLOCKED, marker=MARKER)


def run_blocked(tmp_path, *args):
    """Run ``jetcap ARGS`` in an interpreter without torch/onnx; returns (rc, stdout, stderr, blocked imports)."""
    script = tmp_path / "no_torch_jetcap.py"
    script.write_text(PRELUDE)
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, str(script)] + [str(a) for a in args], cwd=str(tmp_path), env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    lines = proc.stderr.splitlines()
    markers = [line for line in lines if line.startswith(MARKER)]
    assert len(markers) == 1, proc.stderr
    blocked = [name for name in markers[0][len(MARKER):].split(",") if name]
    return proc.returncode, proc.stdout, "\n".join(l for l in lines if not l.startswith(MARKER)), blocked


@pytest.mark.parametrize("module", ["torch", "onnx", "torch.nn"])
def test_the_blocker_really_blocks(tmp_path, module):
    rc, stdout, _, blocked = run_blocked(tmp_path, "--try-import", module)
    assert rc == 3 and stdout.startswith("refused: import of") and module.split(".")[0] in blocked


def test_the_blocker_lets_onnxruntime_through(tmp_path):
    rc, stdout, _, blocked = run_blocked(tmp_path, "--try-import", "onnxruntime")
    assert rc == 0 and blocked == []


def test_help_works_and_imports_nothing_heavy(tmp_path):
    rc, stdout, stderr, blocked = run_blocked(tmp_path, "--help")
    assert rc == 0, stderr
    assert "caption" in stdout and "predict" in stdout
    assert blocked == []


def test_help_in_a_normal_interpreter_never_imports_torch():
    code = ("import sys\nfrom jetcap.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY:' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in {!r})))".format(BLOCKED))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "HEAVY:"


def test_caption_without_torch_prints_the_reference_captions(tmp_path, captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    reference = load_npz(manifest.reference_path())
    vocab = manifest.vocabulary()
    expected = dict((str(name), vocab.decode(unpad(row)))
                    for name, row in zip(reference["task/names"], reference["task/greedy_tokens"]))
    images = samples.sample_images()
    rc, stdout, stderr, blocked = run_blocked(tmp_path, "caption", captioner_bundle, *images)
    assert rc == 0, stderr
    assert blocked == []
    got = dict(line.split("\t") for line in stdout.splitlines())
    assert got == dict((str(p), expected[p.name]) for p in images)
    assert "onnxruntime fp32" in stderr and "ms per image" in stderr


def test_predict_without_torch_prints_the_reference_labels(tmp_path, classifier_bundle):
    manifest = Manifest.load(classifier_bundle)
    reference = load_npz(manifest.reference_path())
    paths = samples.sample_sequences()
    rc, stdout, stderr, blocked = run_blocked(tmp_path, "predict", classifier_bundle, "--json", *paths)
    assert rc == 0, stderr
    assert blocked == []
    records = json.loads(stdout)
    for i, (record, path) in enumerate(zip(records, paths)):
        probs = reference["task/probs_{:03d}".format(i)]
        assert record["file"] == str(path)
        assert record["label"] == manifest.labels[int(np.argmax(probs))]
        np.testing.assert_allclose([record["probabilities"][l] for l in manifest.labels], probs, atol=1e-4)


def test_bad_input_without_torch_is_still_one_line(tmp_path, classifier_bundle):
    bad = tmp_path / "bad.npy"
    np.save(str(bad), np.full((5, 3), np.nan, np.float32))
    rc, stdout, stderr, blocked = run_blocked(tmp_path, "predict", classifier_bundle, bad)
    assert rc == 2 and stdout == "" and blocked == []
    assert len(stderr.strip().splitlines()) == 1 and stderr.startswith("Error: ")


@pytest.mark.parametrize("command", ["caption", "predict"])
def test_command_help_without_torch(tmp_path, command):
    rc, stdout, stderr, blocked = run_blocked(tmp_path, command, "--help")
    assert rc == 0 and "--backend" in stdout and blocked == []
