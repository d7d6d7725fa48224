"""Class names and word maps from every form they come in; LabelEncoder pickles read without sklearn."""
import io
import json
import pickle
import pickletools
import sys

import numpy as np
import pytest

from jetcap.errors import CheckpointError, UsageError
from jetcap.models.labels import (
    InertLabelEncoder, check_label_count, labels_from_file, labels_from_value, restricted_loads,
)
from jetcap.models.wordmap import vocabulary_from_file, vocabulary_from_value
from jetcap.runtime.vocab import Vocabulary

from .ckpt_helpers import WORDS, label_encoder_pickle

CLASSES = ["hello", "thanks", "yes"]


def global_references(data):
    """``module name`` pairs the pickle stream references (GLOBAL, or the two strings before STACK_GLOBAL)."""
    refs, strings = [], []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name == "GLOBAL":
            refs.append(arg)
        elif opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            refs.append("{} {}".format(strings[-2], strings[-1]))
    return refs


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_label_encoder_pickle_read_without_sklearn(protocol):
    data = label_encoder_pickle(CLASSES, protocol=protocol)
    assert "sklearn.preprocessing._label LabelEncoder" in global_references(data)  # as real sklearn pickles
    assert "sklearn" not in sys.modules
    encoder = restricted_loads(data)
    assert isinstance(encoder, InertLabelEncoder)
    assert encoder.classes == CLASSES
    assert encoder.state["_sklearn_version"] == "1.5.2"
    assert labels_from_value(data, "test") == CLASSES
    assert "sklearn" not in sys.modules


def test_label_encoder_with_object_array():
    assert labels_from_value(label_encoder_pickle(CLASSES, dtype=object), "test") == CLASSES


def test_unfitted_label_encoder():
    from .ckpt_helpers import make_label_encoder_class, sklearn_modules

    cls = make_label_encoder_class()
    with sklearn_modules(cls):
        data = pickle.dumps(cls())
    with pytest.raises(CheckpointError, match="never fitted"):
        labels_from_value(data, "test")


class Payload:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return open, (self.target, "w")


def test_restricted_unpickler_refuses_anything_else(tmp_path):
    target = tmp_path / "pwned"
    data = pickle.dumps([Payload(target)])
    with pytest.raises(CheckpointError, match="refused global io.open") as info:
        labels_from_value(data, "checkpoint['label_encoder']")
    assert "--labels" in str(info.value)
    assert not target.exists()


def test_restricted_unpickler_refuses_numpy_tricks():
    data = pickle.dumps(np.load)  # a numpy global that is not an array reconstruction
    with pytest.raises(CheckpointError, match="refused global numpy"):
        restricted_loads(data)


def test_garbage_bytes():
    with pytest.raises(CheckpointError, match="not a readable pickle"):
        restricted_loads(b"\x80\x02garbage")


@pytest.mark.parametrize("value", [
    CLASSES, tuple(CLASSES), np.array(CLASSES), {"hello": 0, "thanks": 1, "yes": 2}, {2: "yes", 0: "hello", 1: "thanks"},
    {"0": "hello", "1": "thanks", "2": "yes"}, {"classes": CLASSES}, [b"hello", b"thanks", b"yes"],
])
def test_label_forms(value):
    assert labels_from_value(value, "test") == CLASSES


@pytest.mark.parametrize("value, message", [
    ({"a": 0, "b": 2}, "without gaps"), ([], "empty"), ({}, "empty"), (3, "cannot read class names"),
    (np.zeros((2, 2)), "1-D array"),
])
def test_bad_label_forms(value, message):
    with pytest.raises(CheckpointError, match=message):
        labels_from_value(value, "test")


def test_label_count_and_duplicates():
    check_label_count(CLASSES, 3, "x")
    with pytest.raises(CheckpointError, match="has 3 class names but the model outputs 4"):
        check_label_count(CLASSES, 4, "x")
    with pytest.raises(CheckpointError, match="repeats class names: a"):
        check_label_count(["a", "b", "a"], 3, "x")


@pytest.mark.parametrize("name, content", [
    ("labels.json", json.dumps(CLASSES)),
    ("labels.json", json.dumps({"hello": 0, "thanks": 1, "yes": 2})),
    ("labels.json", json.dumps({"0": "hello", "1": "thanks", "2": "yes"})),
    ("labels.json", json.dumps({"classes": CLASSES, "version": 2})),
    ("labels.txt", "hello\nthanks\n\nyes\n"),
])
def test_label_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    assert labels_from_file(path) == CLASSES


def test_label_encoder_and_list_pickle_files(tmp_path):
    (tmp_path / "encoder.pkl").write_bytes(label_encoder_pickle(CLASSES, protocol=5))
    assert labels_from_file(tmp_path / "encoder.pkl") == CLASSES
    (tmp_path / "list.pickle").write_bytes(pickle.dumps(CLASSES))
    assert labels_from_file(tmp_path / "list.pickle") == CLASSES


def test_npy_label_files(tmp_path):
    np.save(str(tmp_path / "classes.npy"), np.array(CLASSES))
    assert labels_from_file(tmp_path / "classes.npy") == CLASSES
    np.save(str(tmp_path / "objects.npy"), np.array(CLASSES, dtype=object), allow_pickle=True)
    with pytest.raises(CheckpointError, match="cannot be read without pickle"):
        labels_from_file(tmp_path / "objects.npy")


def test_missing_and_broken_label_files(tmp_path):
    with pytest.raises(UsageError, match="labels file not found"):
        labels_from_file(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(UsageError, match="not valid JSON"):
        labels_from_file(tmp_path / "bad.json")


# -- word maps -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    {w: i for i, w in enumerate(WORDS)},
    {str(i): w for i, w in enumerate(WORDS)},
    WORDS,
    {"itos": WORDS, "specials": {"start": 1, "end": 2, "pad": 0, "unk": 3}},
    {"word_map": {w: i for i, w in enumerate(WORDS)}},
    {"itos": WORDS},
])
def test_word_map_forms(value):
    vocab = vocabulary_from_value(value, "test")
    assert vocab.itos == WORDS
    assert (vocab.start_id, vocab.end_id, vocab.pad_id, vocab.unk_id) == (1, 2, 0, 3)


def test_vocabulary_objects_of_trusted_pickles():
    class Vocab:  # the shape of the usual hand-written vocabulary class
        def __init__(self):
            self.word2idx = {w: i for i, w in enumerate(WORDS)}
            self.idx2word = dict(enumerate(WORDS))

    assert vocabulary_from_value(Vocab(), "test").itos == WORDS
    assert vocabulary_from_value(Vocabulary.from_itos(WORDS), "test").itos == WORDS


def test_word_map_with_gaps_fills_unused_ids():
    vocab = vocabulary_from_value({"<pad>": 0, "<start>": 1, "<end>": 2, "cat": 4}, "test")
    assert vocab.itos == ["<pad>", "<start>", "<end>", "<unused3>", "cat"]


@pytest.mark.parametrize("word_index, start, end, pad", [
    ({"startseq": 1, "endseq": 2, "a": 3, "cat": 4}, 1, 2, 0),   # a Keras Tokenizer's word_index: 0 is padding
    ({"<s>": 0, "</s>": 1, "cat": 2}, 0, 1, None),               # sentencepiece / fairseq: no padding word
    ({"[start]": 2, "[end]": 3, "": 0, "[UNK]": 1, "cat": 4}, 2, 3, 0),  # TensorFlow's TextVectorization: "" pads
])
def test_other_tutorials_special_tokens(word_index, start, end, pad):
    vocab = vocabulary_from_value(word_index, "test")
    assert (vocab.start_id, vocab.end_id, vocab.pad_id) == (start, end, pad)
    assert vocab.decode([start, vocab.stoi["cat"], end, vocab.stoi["cat"]]) == "cat"


@pytest.mark.parametrize("value, message", [
    ({"a": 0}, "lacks the special token"), ({}, "empty"), ([], "empty"), (3.5, "cannot read a vocabulary"),
    ({"a": "b", "c": 1}, "must be"),
])
def test_bad_word_maps(value, message):
    with pytest.raises(CheckpointError, match=message):
        vocabulary_from_value(value, "test")


def test_word_map_file(tmp_path):
    path = tmp_path / "WORDMAP_coco.json"
    path.write_text(json.dumps({w: i for i, w in enumerate(WORDS)}))
    assert vocabulary_from_file(path).itos == WORDS
    with pytest.raises(UsageError, match="not found"):
        vocabulary_from_file(tmp_path / "missing.json")


def test_restricted_loads_reads_plain_data():
    buffer = io.BytesIO()
    pickle.dump({"classes": CLASSES}, buffer, protocol=2)
    assert restricted_loads(buffer.getvalue()) == {"classes": CLASSES}
