"""Caption vocabularies from what checkpoints and side files hold.

Accepted: a ``{word: id}`` word map (any spelling of the special tokens that
:class:`jetcap.runtime.vocab.Vocabulary` knows: ``<start>``/``<SOS>``, ...), an ``{id: word}`` map,
an id -> word list (``itos``/``vocab``), the manifest form ``{"itos": [...], "specials": {...}}``,
or -- from a trusted pickle -- a vocabulary object with ``stoi``/``word2idx``/``itos``/``idx2word``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Tuple

from jetcap.errors import CheckpointError, UsageError
from jetcap.runtime.vocab import Vocabulary

# Entry names under which checkpoints keep their word maps, most common first.
WORD_MAP_KEYS = ("word_map", "wordmap", "word2idx", "word_to_idx", "stoi", "vocab", "vocabulary", "itos",
                 "idx2word", "rev_word_map", "index_to_word")
_OBJECT_ATTRIBUTES = ("stoi", "word2idx", "word_to_idx", "itos", "idx2word")


def _as_id(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        item = value.item()
        return item if isinstance(item, int) else None
    return None


def vocabulary_from_value(value: Any, source: str) -> Vocabulary:
    """A :class:`Vocabulary` from a word map, an id map, a list, the manifest dict or a vocab object.

    Args:
        value: what the checkpoint entry or side file holds.
        source: where it came from, for messages.
    """
    try:
        if isinstance(value, Vocabulary):
            return value
        if isinstance(value, Mapping):
            if "itos" in value and "specials" in value:
                return Vocabulary.from_dict(dict(value))
            for key in ("word_map", "itos", "stoi", "vocab"):
                if key in value and isinstance(value[key], (Mapping, list, tuple)):
                    return vocabulary_from_value(value[key], "{}[{!r}]".format(source, key))
            if not value:
                raise CheckpointError("{} is an empty word map".format(source))
            if all(_as_id(v) is not None for v in value.values()):
                return Vocabulary.from_word_map({str(k): _as_id(v) for k, v in value.items()})
            ids = {_as_id(k): str(v) for k, v in value.items()}
            if all(i is not None and i >= 0 for i in ids):
                itos = ["<unused{}>".format(i) for i in range(max(int(i or 0) for i in ids) + 1)]
                for i, word in ids.items():
                    itos[int(i or 0)] = word
                return Vocabulary.from_itos(itos)
            raise CheckpointError("{}: a word map must be {{word: id}} or {{id: word}}".format(source))
        if isinstance(value, (list, tuple)):
            if not value:
                raise CheckpointError("{} is an empty word list".format(source))
            return Vocabulary.from_itos([str(w) for w in value])
        for attribute in _OBJECT_ATTRIBUTES:  # vocabulary objects of trusted pickles
            inner = getattr(value, attribute, None)
            if isinstance(inner, (Mapping, list, tuple)) and inner:
                return vocabulary_from_value(inner, "{}.{}".format(source, attribute))
        if callable(getattr(value, "get_itos", None)):  # torchtext.vocab.Vocab
            return vocabulary_from_value(list(value.get_itos()), source + ".get_itos()")
    except UsageError as exc:  # Vocabulary's own complaints (missing <start>/<end>/<pad>, ...)
        raise CheckpointError("{}: {}".format(source, exc.message), hint=exc.hint) from None
    raise CheckpointError("{}: cannot read a vocabulary from a {}".format(source, type(value).__name__))


def vocabulary_from_checkpoint(entries: Mapping[str, Any]) -> Optional[Tuple[Vocabulary, str]]:
    """``(vocabulary, key)`` from the first known word-map entry of a checkpoint dict, or None."""
    for key in WORD_MAP_KEYS:
        if key in entries and entries[key] is not None:
            return vocabulary_from_value(entries[key], "checkpoint[{!r}]".format(key)), key
    return None


def vocabulary_from_file(path: Path, trust_pickle: bool = False, code_path: Optional[Path] = None) -> Vocabulary:
    """A vocabulary from a side file (``--word-map``): JSON in any form :func:`vocabulary_from_value` takes,
    or a pickle (``vocab.pkl`` of a ``Vocabulary`` object, a torch-saved dict), read as a checkpoint is:
    refused unless ``trust_pickle``, its classes found through ``code_path``."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("word map file not found: {}".format(path))
    with open(str(path), "rb") as handle:
        head = handle.read(2)
    if head[:1] == b"\x80" or head == b"PK":  # a pickle protocol 2+ opcode, or torch.save's zip
        from jetcap.models.checkpoint_file import read_checkpoint

        raw = read_checkpoint(path, trust_pickle=trust_pickle, code_path=code_path)
        return vocabulary_from_value(raw.obj, "word map file {}".format(path))
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageError("word map file {} is not valid JSON: {}".format(path, exc), hint=(
            "a word map is a JSON file, or a pickle of a vocabulary (with --trust-pickle) of protocol 2 or later "
            "(an older one: re-save it with pickle.dump(vocab, f, protocol=2), or its word2idx as JSON)")) from None
    return vocabulary_from_value(value, "word map file {}".format(path))


def check_vocabulary_size(vocab: Vocabulary, vocab_size: Optional[int], source: str) -> None:
    """CheckpointError when the word map and the model's output layer disagree on the vocabulary size."""
    if vocab_size is not None and len(vocab) != int(vocab_size):
        raise CheckpointError("{} has {} words but the model's output layer has {}".format(
            source, len(vocab), vocab_size), hint="pass the word map the model was trained with (--word-map)")
