"""`jetcap export` as a user runs it: success, determinism, and every refusal (exit codes, no bundle left)."""
import json
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from jetcap import samples
from jetcap.cli import cli
from jetcap.util.fsio import sha256_file


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_export_is_deterministic_and_json(tmp_path):
    outs = []
    for name in ("a", "b"):
        result = run(["export", str(samples.classifier_checkpoint()), "-o", str(tmp_path / name), "--json"])
        assert result.exit_code == 0, result.output
        summary = json.loads(result.stdout)
        assert summary["validation"] == {"fp32": True}
        outs.append(tmp_path / name)
    for file in ("model.onnx", "reference.npz"):
        assert sha256_file(outs[0] / file) == sha256_file(outs[1] / file)


def test_existing_bundle_needs_force(tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run(["export", str(samples.classifier_checkpoint()), "-o", str(out)])
    assert result.exit_code == 2
    assert "--force" in result.output
    assert (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("args,message", [
    (["--opset", "18"], "dynamo"),
    (["--exporter", "dynamo", "--opset", "13"], "torchscript"),
    (["--max-len", "500"], "positional encoding"),
    (["--int8-task-samples", "0"], "--int8-task-samples must be >= 1"),
    (["--output", "nosuch"], "the built-in classifier family exports its own logits"),
    (["--target", "bogus"], "unknown target"),
    (["--image-size", "0"], "0 is not in the range"),
    (["--opset", "12", "--precision", "int8"], "per-channel Q/DQ nodes (their axis attribute), which need opset >= 13"),
])
def test_bad_options_exit_2(tmp_path, args, message):
    result = run(["export", str(samples.classifier_checkpoint()), "-o", str(tmp_path / "b")] + args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "b").exists()


def test_missing_and_garbage_checkpoints_exit_2(tmp_path):
    result = run(["export", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "not found" in result.output
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x89PNG not a checkpoint")
    result = run(["export", str(garbage), "-o", str(tmp_path / "b")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


def test_validation_failure_exits_1_and_leaves_no_bundle(tmp_path):
    ckpt = torch.load(str(samples.classifier_checkpoint()), weights_only=True)
    ckpt["model_state_dict"]["temporal_weight"] = torch.tensor(float("nan"))  # every output becomes NaN
    broken = tmp_path / "broken.pt"
    torch.save(ckpt, str(broken))
    result = run(["export", str(broken), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1, result.output
    assert "validation failed" in result.output and "NaN" in result.output
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_every_checkpoint_layout_exports(tmp_path):
    """DataParallel prefixes and a bare state_dict with a side label file export like the original."""
    ckpt = torch.load(str(samples.classifier_checkpoint()), weights_only=True)
    wrapped = dict(ckpt, model_state_dict={"module." + k: v for k, v in ckpt["model_state_dict"].items()})
    torch.save(wrapped, str(tmp_path / "ddp.pt"))
    result = run(["export", str(tmp_path / "ddp.pt"), "-o", str(tmp_path / "ddp")])
    assert result.exit_code == 0, result.output
    torch.save(ckpt["model_state_dict"], str(tmp_path / "bare.pt"))
    (tmp_path / "labels.json").write_text(json.dumps(ckpt["classes"]))
    result = run(["export", str(tmp_path / "bare.pt"), "-o", str(tmp_path / "bare"), "--labels",
                  str(tmp_path / "labels.json"), "--num-heads", str(ckpt["config"]["num_heads"])])
    assert result.exit_code == 0, result.output
    assert sha256_file(tmp_path / "ddp" / "model.onnx") == sha256_file(tmp_path / "bare" / "model.onnx")


@pytest.mark.slow
def test_dynamo_exporter_opset_18_captioner(tmp_path):
    out = tmp_path / "dyn"
    proc = subprocess.run([sys.executable, "-m", "jetcap", "export", str(samples.captioner_checkpoint()), "-o", str(out),
                           "--exporter", "dynamo", "--opset", "18", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export"]["opset"] == 18 and manifest["export"]["exporter"] == "dynamo"


def test_max_len_overrides_the_built_in_captioners_own(tmp_path):
    out = tmp_path / "short"
    result = CliRunner().invoke(cli, ["export", str(samples.captioner_checkpoint()), "--max-len", "5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["decoding"]["max_len"] == 5 and manifest["config_sources"]["max_len"] == "--max-len"


USER_CLASSIFIERS = '''
import torch
from torch import nn


class LearnedPositions(nn.Module):
    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 16, 8) * 0.1)  # a learned table: 16 frames at most
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head((x + self.pos[:, : x.shape[1]]).mean(1))


class WithLengths(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x, lengths=None):  # the training pipeline pads clips and passes their lengths
        if lengths is not None:
            mask = torch.arange(x.shape[1])[None, :, None] < lengths[:, None, None]
            return self.head((x * mask).sum(1) / lengths[:, None])
        return self.head(x.mean(1))


class NeedsFrames(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 5)
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # three conv + pool stages: 36 frames at the least
        y = x.transpose(1, 2)
        for _ in range(3):
            y = nn.functional.max_pool1d(torch.relu(self.conv(y)), 2)
        return self.head(y.mean(2))


class PoseProjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.pose_proj = nn.Linear(8, 6)  # "pos..." but no positional table
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.pose_proj(x).mean(1))


class TimeMajor(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)

    def forward(self, x):  # written for (T, batch, F), as nn.LSTM's default layout
        return self.head(x.mean(0))


class HiddenLimit(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = torch.linspace(0, 1, 20)[:, None]  # not a buffer: nothing tells jetcap of 20 frames
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head((x * self.table[: x.shape[1]]).mean(1))
'''


@pytest.fixture(scope="module")
def user_classifiers(tmp_path_factory):
    root = tmp_path_factory.mktemp("user_classifiers")
    (root / "slr_models.py").write_text(USER_CLASSIFIERS)
    import importlib
    import sys

    sys.path.insert(0, str(root))
    try:
        module = importlib.import_module("slr_models")
        for name, cls in vars(module).items():
            if isinstance(cls, type) and issubclass(cls, torch.nn.Module) and cls.__module__ == "slr_models":
                torch.manual_seed(0)
                torch.save(cls().state_dict(), str(root / (name + ".pt")))
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("slr_models", None)
    return root


def user_export(root, name, *args):
    """``jetcap export`` of the classifier ``name`` of the ``user_classifiers`` repository, 8 features a frame."""
    return ["export", str(root / (name + ".pt")), "--code-path", str(root), "--model", "slr_models:" + name,
            "--input-size", "8"] + list(args)


def test_a_learned_positional_table_bounds_max_len(user_classifiers, tmp_path):
    base = user_export(user_classifiers, "LearnedPositions")
    result = run(base + ["-o", str(tmp_path / "long"), "--max-len", "32"])
    assert result.exit_code == 2 and "beyond the model's positional encoding pos of 16 frames" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "long").exists()
    result = run(base + ["-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["axes"]["T"]["max"] == 16


def test_a_layer_named_pose_is_no_positional_table(user_classifiers, tmp_path):
    result = run(user_export(user_classifiers, "PoseProjection", "--max-len", "64", "-o", str(tmp_path / "b")))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["axes"]["T"]["max"] == 64


def test_a_forward_failing_inside_the_range_is_one_line(user_classifiers, tmp_path):
    result = run(user_export(user_classifiers, "HiddenLimit", "--max-len", "32", "-o", str(tmp_path / "b")))
    assert result.exit_code == 2, result.output
    assert "the model's forward fails on sequence (" in result.output and "--max-len" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "b").exists()


def test_labels_that_contradict_the_checkpoint_warn_at_export_and_fail_validate(tmp_path, classifier_bundle):
    ckpt = torch.load(str(samples.classifier_checkpoint()), weights_only=True)
    shuffled = list(reversed(ckpt["classes"]))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(shuffled))
    result = run(["export", str(samples.classifier_checkpoint()), "-o", str(tmp_path / "b"), "--labels", str(labels)])
    assert result.exit_code == 0, result.output  # the file wins, as asked, and export says so
    assert "warning: --labels {} names the classes otherwise than the checkpoint does".format(labels) in \
        result.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["labels"] == shuffled
    assert any("otherwise than the checkpoint" in n for n in manifest["export"]["notes"])
    # the checkpoint of another training run, its classes in another order: the bundle would misname every sign
    ckpt["classes"] = shuffled
    other = tmp_path / "other_run.pt"
    torch.save(ckpt, str(other))
    result = run(["validate", str(classifier_bundle), "--checkpoint", str(other), "--precision", "fp32", "--no-check"])
    assert result.exit_code == 1, result.output
    assert "class names are not the checkpoint's (id 0 is 'wave' in the bundle, 'point' in the checkpoint)" in \
        result.output
    # a bundle exported with --labels validates when given the same file
    result = run(["validate", str(tmp_path / "b"), "--checkpoint", str(samples.classifier_checkpoint()),
                  "--labels", str(labels), "--precision", "fp32", "--no-check"])
    assert result.exit_code == 0, result.output


def test_nested_keypoint_files_calibrate_and_validate_like_predict(tmp_path, classifier_bundle):
    # (T, hands, joints, xyz) files, as MediaPipe pipelines save them: predict flattens them per frame, and
    # so do export --calibration-data and validate --data
    import numpy as np

    folder = tmp_path / "nested"
    folder.mkdir()
    for i, path in enumerate(samples.sample_sequences()[:3]):
        frames = np.load(str(path))
        np.save(str(folder / "clip{}.npy".format(i)), frames.reshape(len(frames), 1, 21, 3))
        (folder / "clip{}.json".format(i)).write_text(json.dumps(frames.reshape(len(frames), 1, 21, 3).tolist()))
    result = run(["validate", str(classifier_bundle), "--data", str(folder), "--precision", "fp32", "--no-check"])
    assert result.exit_code == 0, result.output
    result = run(["export", str(samples.classifier_checkpoint()), "-o", str(tmp_path / "b"),
                  "--calibration-data", str(folder), "--precision", "int8"])
    assert result.exit_code in (0, 1), result.output  # the gate's verdict on 6 clips; never a shape refusal
    assert "expected (T, F)" not in result.output and "Traceback" not in result.output


def test_an_optional_forward_argument_left_at_its_default_is_said(user_classifiers, tmp_path):
    result = run(user_export(user_classifiers, "WithLengths", "--max-len", "32", "-o", str(tmp_path / "b")))
    assert result.exit_code == 0, result.output
    assert "warning: the graph runs forward(x) with its optional argument(s) lengths left at the default" in \
        result.output


def test_min_len_sets_where_the_probe_starts(user_classifiers, tmp_path):
    base = user_export(user_classifiers, "NeedsFrames", "--max-len", "64")
    result = run(base + ["-o", str(tmp_path / "short")])
    assert result.exit_code == 2 and "--min-len/--max-len" in result.output and "Traceback" not in result.output
    result = run(base + ["--min-len", "40", "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["axes"]["T"]["min"] == 40
    result = run(["validate", str(tmp_path / "b"), "--checkpoint", str(user_classifiers / "NeedsFrames.pt"),
                  "--code-path", str(user_classifiers), "--model", "slr_models:NeedsFrames", "--precision", "fp32",
                  "--no-check"])
    assert result.exit_code == 0, result.output  # validate probes from the bundle's shortest T, as export did
    result = run(base + ["--max-len", "0", "-o", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--max-len must be at least 1" in result.output


def test_a_time_major_forward_is_told_why(user_classifiers, tmp_path):
    result = run(user_export(user_classifiers, "TimeMajor", "--max-len", "32", "-o", str(tmp_path / "b")))
    assert result.exit_code == 2, result.output
    assert "for a batch of 2 and" in result.output and "(a time-major forward, (T, batch, F)?)" in result.output
