"""Model sources: the user's code with a weights-only checkpoint, refusals as one line (exit 2)."""
import json

import pytest
import torch
from click.testing import CliRunner

from jetcap.cli import cli
from jetcap.errors import CheckpointError, UsageError
from jetcap.models.sources import SourceOptions, resolve_source, source_from_modules

CODE = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width, classes=3):
        super().__init__()
        self.body = nn.Linear(width, 8)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(torch.relu(self.body(x))).mean(dim=1)


def make(width=5):
    return Net(width)


def broken():
    raise RuntimeError("no GPU found")
'''


@pytest.fixture()
def repo(tmp_path):
    (tmp_path / "repo" / "pkg").mkdir(parents=True)
    (tmp_path / "repo" / "pkg" / "__init__.py").write_text("")
    (tmp_path / "repo" / "pkg" / "net.py").write_text(CODE)
    return tmp_path / "repo"


def _weights(tmp_path, width=5, **extra):
    torch.manual_seed(0)
    body, head = torch.nn.Linear(width, 8), torch.nn.Linear(8, 3)
    state = {"body.weight": body.weight, "body.bias": body.bias, "head.weight": head.weight, "head.bias": head.bias}
    path = tmp_path / "ckpt.pt"
    torch.save(dict({"model_state_dict": state}, **extra), str(path))
    return path


def test_class_with_args_from_the_checkpoint_config(tmp_path, repo):
    path = _weights(tmp_path, config={"width": 5, "lr": 0.1})
    source = resolve_source(SourceOptions(checkpoint=path, models={"model": "pkg.net:Net"}, code_path=repo))
    assert source.kind == "user code" and not source.model.training
    assert "checkpoint config (width)" in source.description
    torch.testing.assert_close(source.model.state_dict()["body.weight"], torch.load(str(path))["model_state_dict"]["body.weight"])


def test_factory_and_file_path_specs(tmp_path, repo):
    path = _weights(tmp_path, width=5)
    source = resolve_source(SourceOptions(checkpoint=path, models={"model": str(repo / "pkg" / "net.py") + ":make"}))
    assert type(source.model).__name__ == "Net"


def test_lightning_prefix_is_stripped(tmp_path, repo):
    _weights(tmp_path)
    state = torch.load(str(tmp_path / "ckpt.pt"))["model_state_dict"]
    path = tmp_path / "lit.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "hyper_parameters": {"width": 5}}, str(path))
    source = resolve_source(SourceOptions(checkpoint=path, models={"model": "pkg.net:Net"}, code_path=repo))
    assert "stripped common prefix 'model.'" in " ".join(source.notes)


@pytest.mark.parametrize("spec,args,message", [
    ("pkg.net", None, "MODULE:NAME"),
    ("pkg.nope:Net", None, "importing pkg.nope"),
    ("pkg.net:Nope", None, "defines no 'Nope'"),
    ("pkg.net:Net", None, "no value for width"),
    ("pkg.net:broken", None, "no GPU found"),
    ("pkg.net:Net", {"width": 7}, "do not fit"),
])
def test_refusals_name_what_to_do(tmp_path, repo, spec, args, message):
    path = _weights(tmp_path)
    with pytest.raises((UsageError, CheckpointError), match=message):
        resolve_source(SourceOptions(checkpoint=path, models={"model": spec}, code_path=repo, model_args=args))


def test_user_code_never_unpickles_the_file(tmp_path, repo):
    # the code is trusted, the file is not: a pickled object in it is refused without --trust-pickle
    path = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "payload": CheckpointError("x")}, str(path))
    with pytest.raises(CheckpointError):
        resolve_source(SourceOptions(checkpoint=path, models={"model": "pkg.net:Net"}, code_path=repo,
                                     model_args={"width": 5}))


def test_cli_refusals_are_one_line(tmp_path, repo):
    path = _weights(tmp_path)
    runner = CliRunner()
    for extra in (["--model-args", "[1]"], ["--model-args", "{bad"], ["--model", "a=pkg.net:Net"],
                  ["--model", "model=pkg.net:Net", "--model", "encoder=pkg.net:Net"]):
        result = runner.invoke(cli, ["export", str(path), "-o", str(tmp_path / "b"), "--code-path", str(repo),
                                     "--model", "pkg.net:Net"] + extra if "--model" not in extra else
                               ["export", str(path), "-o", str(tmp_path / "b"), "--code-path", str(repo)] + extra)
        assert result.exit_code == 2, (extra, result.output)
        assert "Traceback" not in result.output
        assert not (tmp_path / "b").exists()


def test_python_api_source_checks_its_arguments():
    with pytest.raises(UsageError, match="nn.Module"):
        source_from_modules("not a model")
    with pytest.raises(UsageError, match="not nn.Modules"):
        source_from_modules({"encoder": torch.nn.Linear(2, 2), "decoder": 3})
    source = source_from_modules(torch.nn.Linear(2, 2), word_map={"<start>": 0, "<end>": 1, "<pad>": 2, "a": 3})
    assert source.kind == "python api" and source.vocab.start_id == 0


def test_model_args_without_model_is_refused(tmp_path):
    with pytest.raises(UsageError, match="goes with --model"):
        resolve_source(SourceOptions(checkpoint=_weights(tmp_path), model_args={"width": 5}))


def test_json_model_args_per_part(tmp_path, repo):
    torch.manual_seed(0)
    enc, dec = torch.nn.Linear(5, 8), torch.nn.Linear(8, 3)
    path = tmp_path / "parts.pt"
    torch.save({"encoder": {"weight": enc.weight, "bias": enc.bias}, "decoder_state_dict": {"weight": dec.weight,
                                                                                           "bias": dec.bias}},
               str(path))
    (repo / "twoparts.py").write_text("from torch import nn\n\ndef enc():\n    return nn.Linear(5, 8)\n\n"
                                           "class Dec(nn.Linear):\n    def __init__(self, n):\n        super().__init__(8, n)\n")
    source = resolve_source(SourceOptions(checkpoint=path, models={"encoder": "twoparts:enc", "decoder": "twoparts:Dec"},
                                          model_args=json.loads('{"decoder": {"n": 3}}'), code_path=repo))
    assert set(source.model) == {"encoder", "decoder"}
