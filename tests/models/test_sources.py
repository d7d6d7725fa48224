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


VOCAB_CODE = '''
class Vocabulary(object):
    """yunjey/pytorch-tutorial's image-captioning vocabulary, pickled to data/vocab.pkl beside the model."""

    def __init__(self):
        self.word2idx, self.idx2word, self.idx = {}, {}, 0

    def add_word(self, word):
        if word not in self.word2idx:
            self.word2idx[word] = self.idx
            self.idx2word[self.idx] = word
            self.idx += 1
'''

WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle"]


def _vocabulary(repo):
    """A ``build_vocab.Vocabulary`` of the repository's code, as its training script pickles it."""
    import importlib.util

    (repo / "build_vocab.py").write_text(VOCAB_CODE)
    spec = importlib.util.spec_from_file_location("build_vocab", str(repo / "build_vocab.py"))
    module = importlib.util.module_from_spec(spec)
    import sys
    sys.modules["build_vocab"] = module
    try:
        spec.loader.exec_module(module)
        vocab = module.Vocabulary()
        for word in WORDS:
            vocab.add_word(word)
        import pickle
        return pickle.dumps(vocab), vocab
    finally:
        del sys.modules["build_vocab"]


def test_trust_pickle_with_user_code_reads_a_vocabulary_object_beside_the_weights(tmp_path, repo):
    data, vocab = _vocabulary(repo)
    path = _weights(tmp_path)
    import pickle
    import sys
    sys.modules["build_vocab"] = type(sys)("build_vocab")
    sys.modules["build_vocab"].Vocabulary = type(vocab)
    try:
        torch.save(dict(torch.load(str(path)), vocab=pickle.loads(data)), str(path))
    finally:
        del sys.modules["build_vocab"]
    options = dict(checkpoint=path, models={"model": "pkg.net:Net"}, code_path=repo, model_args={"width": 5})
    with pytest.raises(CheckpointError, match="--trust-pickle"):  # the file is not trusted unless told
        resolve_source(SourceOptions(**options))
    source = resolve_source(SourceOptions(trust_pickle=True, **options))
    assert source.vocab.itos == WORDS and "read with --trust-pickle" in " ".join(source.notes)


def test_a_pickled_word_map_file_is_read_with_trust_pickle_only(tmp_path, repo):
    import pickle

    from jetcap.models.wordmap import vocabulary_from_file

    data, _ = _vocabulary(repo)
    (tmp_path / "vocab.pkl").write_bytes(data)
    with pytest.raises(CheckpointError, match="vocab.pkl contains a plain Python pickle .*--trust-pickle"):
        vocabulary_from_file(tmp_path / "vocab.pkl")
    assert vocabulary_from_file(tmp_path / "vocab.pkl", trust_pickle=True, code_path=repo).itos == WORDS
    old = tmp_path / "vocab_p0.pkl"  # a Python 2-era protocol-0 pickle of a word map: text, not JSON
    old.write_bytes(pickle.dumps(dict((w, i) for i, w in enumerate(WORDS)), protocol=0))
    for trust in (False, True):  # not read, even trusted: said how to re-save it
        with pytest.raises(UsageError, match="not valid JSON.*protocol 2 or later"):
            vocabulary_from_file(old, trust_pickle=trust)
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(UsageError, match="not valid JSON.*pickle of a vocabulary"):
        vocabulary_from_file(tmp_path / "bad.json")


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
