"""``load_checkpoint``: any reasonable training checkpoint -> a family's model, loaded strictly.

Real checkpoints are messy: bare state_dicts or dicts around them, separate encoder/decoder halves,
wrapper prefixes, pruning masks, dynamically quantized weights, whole pickled modules, word maps and
label encoders in every spelling.  This module orchestrates the small steps of
:mod:`jetcap.models.checkpoint_file` (reading safely) and :mod:`jetcap.models.state_dict`
(normalizing) and checks, before building anything, that the model fits in memory and that the
tensors fit the family's model exactly (never a silent ``strict=False``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from jetcap.errors import CheckpointError, InsufficientMemoryError, UsageError
from jetcap.models import registry
from jetcap.models.checkpoint_file import RawCheckpoint, declared_size, read_checkpoint
from jetcap.models.labels import (LABEL_KEYS, check_label_count, labels_from_checkpoint, labels_from_file,
                                 side_labels_warning)
from jetcap.models.registry import ModelFamily
from jetcap.models.state_dict import (
    FitReport, compare, dequantize, extract_state_dict, fold_pruning, low_precision_count, non_tensor_entries,
    strip_common_prefix, strip_wrapper_prefixes, tensor_bytes,
)
from jetcap.models.wordmap import (
    WORD_MAP_KEYS, check_vocabulary_size, vocabulary_from_checkpoint, vocabulary_from_file,
)
from jetcap.runtime.memory import format_bytes, read_memory_info
from jetcap.runtime.vocab import Vocabulary
from jetcap.util.fsio import sha256_file

PathLike = Union[str, Path]

# Container entries holding hyper-parameters as a dict (or an argparse Namespace in trusted pickles).
CONFIG_KEYS = ("config", "model_config", "hparams", "hyper_parameters", "hyperparameters", "args", "opt", "cfg")
# Training bookkeeping stored beside the weights; never a model hyper-parameter.
_BOOKKEEPING = re.compile(r"(^|[_\-. ])(loss|acc|accuracy|bleu\d*|lr|learning|epoch|epochs|step|steps|iter|iteration|"
                          r"seed|batch|time|timestamp|date|version|metric|metrics|score|best|patience|momentum|"
                          r"decay|optimizer|scheduler|improvement)($|[_\-. ])")
# Budget factor: the model's parameters + the loaded state_dict + working margin.
MEMORY_FACTOR = 3


@dataclass
class LoadedModel:
    """A checkpoint loaded into its family's model.

    Attributes:
        family: the model family (``jetcap.models.registry``).
        model: the torch module, weights loaded strictly, in eval mode.
        config: complete hyper-parameters (``family.infer_config`` of the tensors and hints).
        vocab: the captioner's vocabulary, if one was found.
        labels: the classifier's class names (index = class id), if found.
        path: the checkpoint file.
        sha256: hex digest of the checkpoint file.
        layout: what was found, e.g. ``"dict['model_state_dict'] + config + word_map"``.
        notes: what was done to make it load, e.g. ``"stripped prefix 'module.' (52 keys)"``.
        provided: ``{config key: where it came from}`` for the values the checkpoint or the caller gave
            (the rest come from tensor shapes or the family's defaults).
    """

    family: ModelFamily
    model: nn.Module
    config: Dict[str, Any]
    vocab: Optional[Vocabulary]
    labels: Optional[List[str]]
    path: Path
    sha256: str
    layout: str
    notes: List[str] = field(default_factory=list)
    provided: Dict[str, str] = field(default_factory=dict)


def _resolve(path: PathLike, base: Path) -> Path:
    resolved = Path(path).expanduser()
    return resolved if resolved.is_absolute() else base / resolved


# -- hyper-parameters found in the checkpoint ----------------------------------------------------

NOT_A_HINT = object()


def _hint_value(value: Any) -> Any:
    """``value`` if it can be a hyper-parameter (None, a scalar or a short list of scalars), else NOT_A_HINT."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value  # None counts: e.g. the captioner's grid=None (no pooling) differs from the default 7
    if isinstance(value, (list, tuple)) and len(value) <= 64 and all(
            isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
        return list(value)
    return NOT_A_HINT


def _usable_name(name: Any) -> bool:
    return (isinstance(name, str) and not name.startswith("_") and name not in WORD_MAP_KEYS
            and name not in LABEL_KEYS and name not in CONFIG_KEYS and name != "training"
            and not _BOOKKEEPING.search(name.lower()))


def _scalars(mapping: Mapping[str, Any]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name, value in mapping.items():
        if _usable_name(name):
            hint = _hint_value(value)
            if hint is not NOT_A_HINT:
                out[name] = hint
    return out


def _module_hints(modules: Mapping[str, nn.Module]) -> Dict[str, Any]:
    """What pickled module objects tell that their weights do not: the attention heads of a
    MultiheadAttention and the output size of an adaptive pooling near the top (not the global pools
    inside a backbone's squeeze-excitation blocks).  Their scalar attributes (``vocab_size``, ...) are
    not used: the tensors say the same, and names differ between code bases."""
    hints: Dict[str, Any] = {}
    heads, grids = set(), set()
    for module in modules.values():
        for name, sub in module.named_modules():
            if isinstance(sub, nn.MultiheadAttention):
                heads.add(int(sub.num_heads))
            elif isinstance(sub, nn.AdaptiveAvgPool2d) and name.count(".") <= 1:
                raw: Any = sub.output_size
                size = (raw, raw) if isinstance(raw, int) else tuple(raw)
                if len(size) == 2 and size[0] == size[1] and size[0] is not None:
                    grids.add(int(size[0]))
    if len(heads) == 1:
        hints["num_heads"] = heads.pop()
    if len(grids) == 1:
        hints["grid"] = grids.pop()
    return hints


def _checkpoint_hints(entries: Mapping[str, Any], modules: Mapping[str, nn.Module]) -> Tuple[Dict[str, Any], List[str]]:
    """Hyper-parameters stored in the checkpoint, lowest priority first: what pickled modules show,
    top-level scalar entries, then an explicit config dict.  Returns (hints, layout parts)."""
    hints = _module_hints(modules)
    parts: List[str] = []
    top = _scalars(entries)
    if top:
        hints.update(top)
        parts.append("hyper-parameters ({})".format(", ".join(sorted(top))))
    for key in CONFIG_KEYS:
        value = entries.get(key)
        if value is not None and not isinstance(value, Mapping) and hasattr(value, "__dict__"):
            value = vars(value)  # argparse.Namespace and similar (trusted pickles only)
        if isinstance(value, Mapping):
            hints.update(_scalars(value))
            parts.append(key)
    return hints, parts


def checkpoint_labels(entries: Mapping[str, Any]) -> Optional[Tuple[Any, str]]:
    """``(labels, key)`` of the checkpoint's class names (its entries, then its config dicts), or None."""
    return _first_found(labels_from_checkpoint, entries)


def side_labels_notes(side: List[str], entries: Mapping[str, Any], side_name: str) -> List[str]:
    """The warning note, if any, of a side file's class names ``side`` against the checkpoint's own
    (:func:`jetcap.models.labels.side_labels_warning`); a label entry jetcap cannot read is what the side
    file replaces, so it is not compared."""
    try:
        found = checkpoint_labels(entries)
    except (UsageError, CheckpointError):
        return []
    warning = side_labels_warning(side, found, side_name)
    return [warning] if warning else []


def _config_dicts(entries: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    return [entries[k] for k in CONFIG_KEYS if isinstance(entries.get(k), Mapping)]


# -- family, config, fit ------------------------------------------------------------------------------

def _family(family: Union[None, str, ModelFamily]) -> Optional[ModelFamily]:
    if family is None or isinstance(family, ModelFamily):
        return family
    return registry.get_family(family)


def _choose_family(requested: Optional[ModelFamily], state_dict: Dict[str, Any], notes: List[str]
                   ) -> Tuple[ModelFamily, Dict[str, Any]]:
    """The family (given or detected), trying once more without a prefix every key shares."""
    stripped, prefix = strip_common_prefix(state_dict)
    if requested is not None:
        if not requested.matches(requested.normalize_keys(dict(state_dict))) and prefix is not None and \
                requested.matches(requested.normalize_keys(dict(stripped))):
            notes.append("stripped common prefix '{}'".format(prefix))
            return requested, stripped
        return requested, state_dict
    try:
        return registry.detect_family(state_dict), state_dict
    except CheckpointError:
        if prefix is None:
            raise
        try:
            found = registry.detect_family(stripped)
        except CheckpointError:
            pass  # report the error about the keys as they are in the file
        else:
            notes.append("stripped common prefix '{}'".format(prefix))
            return found, stripped
        raise


def _build(family: ModelFamily, config: Dict[str, Any], device: Optional[str] = None) -> nn.Module:
    try:
        if device is None:
            return family.build(config)
        with torch.device(device):
            return family.build(config)
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError, AssertionError, RuntimeError) as exc:
        shown = ", ".join("{}={}".format(k, v) for k, v in sorted(config.items()) if not isinstance(v, list))
        raise CheckpointError("cannot build the {} model with {}: {}: {}".format(
            family.name, shown, type(exc).__name__, exc)) from None


def _fit(family: ModelFamily, config: Dict[str, Any], state_dict: Mapping[str, Any]) -> FitReport:
    """How ``state_dict`` differs from the family's model built with ``config`` (on the meta device);
    a config the family cannot build at all is a report carrying that error."""
    try:
        model = _build(family, config, "meta")
    except CheckpointError as exc:
        return FitReport([], [], [], error=str(exc))
    return compare(state_dict, {k: tuple(v.shape) for k, v in model.state_dict().items()})


@dataclass
class _Attempt:
    """A config tried for a state_dict: the config (None if it could not be inferred) and its fit."""

    hints: Dict[str, Any]
    config: Optional[Dict[str, Any]]
    report: FitReport
    error: Optional[CheckpointError] = None  # why infer_config refused (keeps its hint, e.g. --num-heads)


def _attempt(family: ModelFamily, state_dict: Dict[str, Any], hints: Dict[str, Any]) -> _Attempt:
    try:
        config = family.infer_config(state_dict, hints)
    except CheckpointError as exc:
        return _Attempt(hints, None, FitReport([], [], [], error=exc.message), exc)
    except (TypeError, ValueError, KeyError, AttributeError, IndexError) as exc:  # e.g. a stored None in arithmetic
        error = CheckpointError("cannot work out the {} hyper-parameters from the tensors and {}: {}: {}".format(
            family.name, ", ".join("{}={!r}".format(k, v) for k, v in sorted(hints.items())), type(exc).__name__, exc))
        return _Attempt(hints, None, FitReport([], [], [], error=error.message), error)
    return _Attempt(hints, config, _fit(family, config, state_dict))


def _resolve_config(family: ModelFamily, state_dict: Dict[str, Any], stored: Dict[str, Any],
                    user: Dict[str, Any], notes: List[str]) -> Dict[str, Any]:
    """``family.infer_config`` with the checkpoint's hyper-parameters under the user's.

    Stored values that contradict the tensors (say a training ``max_len`` of 60 where the positional
    encoding holds 128, or a ``None`` where a size is needed) are dropped, with a note, when that makes
    the model fit: values are dropped one by one while the fit does not get worse, then the ones whose
    return still fits are put back.  What cannot be made to fit is a CheckpointError about the config
    as stored, with the diff.
    """
    hints = dict(stored)
    hints.update(user)
    first = current = _attempt(family, state_dict, hints)
    dropped: List[str] = []
    for key in [k for k in stored if k not in user]:
        if current.report:
            break
        trial = _attempt(family, state_dict, {k: v for k, v in current.hints.items() if k != key})
        if trial.config is None:
            continue  # the value is needed (e.g. num_heads)
        if key in trial.config and trial.config[key] == stored[key]:
            continue  # dropping it changes nothing
        if trial.report.size <= current.report.size:
            current = trial
            dropped.append(key)
    if current.report and current.config is not None:
        for key in list(dropped):  # put back what did not need to go
            trial = _attempt(family, state_dict, dict(current.hints, **{key: stored[key]}))
            if trial.report and trial.config is not None:
                current = trial
                dropped.remove(key)
    if not current.report or current.config is None:
        if first.error is not None:
            raise first.error
        if first.report.error:
            raise CheckpointError(first.report.error)
        raise CheckpointError("the checkpoint does not fit the {} model: {}".format(family.name, first.report.describe()),
                              hint="check --family and the hyper-parameters given or stored in the checkpoint")
    if dropped:
        notes.append("ignored stored hyper-parameters that contradict the tensors: " + ", ".join(
            "{}={!r} (tensors say {!r})".format(k, stored[k], current.config.get(k)) for k in dropped))
    return current.config


# -- memory ---------------------------------------------------------------------------------------------

def _memory_budget(max_memory_mb: Optional[float]) -> Tuple[Optional[int], str]:
    if max_memory_mb is not None:
        if max_memory_mb <= 0:
            raise UsageError("--max-memory-mb must be positive, got {}".format(max_memory_mb))
        return int(max_memory_mb * 1024 * 1024), "--max-memory-mb {}".format(max_memory_mb)
    info = read_memory_info()
    return info.available, info.describe()


def _check_memory(path: Path, size: int, what: str, budget: Optional[int], source: str) -> None:
    needed = MEMORY_FACTOR * size
    if budget is not None and needed > budget:
        raise InsufficientMemoryError(
            "loading {} needs about {} ({} x {} of {}: model + state_dict + margin) but only {} is available ({})"
            .format(path, format_bytes(needed), MEMORY_FACTOR, format_bytes(size), what, format_bytes(budget), source),
            hint="close other programs or add swap; --max-memory-mb N sets the budget explicitly")


# -- the entry point -----------------------------------------------------------------------------------

def load_checkpoint(path: PathLike, family: Union[None, str, ModelFamily] = None, *, trust_pickle: bool = False,
                    code_path: Optional[PathLike] = None, word_map: Optional[PathLike] = None,
                    labels: Optional[PathLike] = None, hints: Optional[Mapping[str, Any]] = None,
                    max_memory_mb: Optional[float] = None, base_dir: Optional[PathLike] = None) -> LoadedModel:
    """Load a training checkpoint into its family's model, strictly and safely.

    Args:
        path: the checkpoint (``torch.save`` zip or legacy file, ``.safetensors``; TorchScript archives
            and plain pickles only with ``trust_pickle``).
        family: a family name (or object); None detects it from the keys (``registry.detect_family``).
        trust_pickle: allow ``torch.load(weights_only=False)`` for files that pickle Python objects
            (whole modules, optimizers); without it such files are refused, naming the globals found.
            Default False: only tensors, containers and a few inert data types are read.
        code_path: a folder with the training code, on ``sys.path`` during a trusted load; classes
            pickled from ``__main__`` are looked up in its ``.py`` files.
        word_map: a side JSON word map overriding the checkpoint's (captioner).
        labels: a side file of class names overriding the checkpoint's (classifier): JSON, text, ``.npy``
            or a pickled scikit-learn LabelEncoder (read without scikit-learn and without trusting it).
        hints: hyper-parameters the user set (e.g. ``{"num_heads": 4}``); they override everything.
            Pass only keys that were actually set.
        max_memory_mb: memory budget in MiB; default: what /proc/meminfo and the cgroup allow.
        base_dir: relative paths are resolved against it; default the current directory.

    Raises:
        UsageError: missing files, bad arguments.
        CheckpointError: unreadable, unsafe or non-fitting checkpoints, with what to do about it.
        InsufficientMemoryError: the model would not fit in memory (checked before building it).
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    path = _resolve(path, base)
    code_dir = _resolve(code_path, base) if code_path is not None else None
    requested = _family(family)
    user_hints = dict(hints or {})
    notes: List[str] = []

    budget, budget_source = _memory_budget(max_memory_mb)
    if path.is_file():
        # a zip's declared member sizes, read before torch.load inflates anything (bombs refused there)
        _check_memory(path, declared_size(path), "declared uncompressed size", budget, budget_source)
    raw: RawCheckpoint = read_checkpoint(path, trust_pickle=trust_pickle, code_path=code_dir)
    if raw.trusted:
        notes.append("loaded with --trust-pickle (torch.load weights_only=False)")

    extracted = extract_state_dict(raw.obj)
    layout = list(extracted.layout)
    if raw.format != "torch zip":
        layout[0] = "{}: {}".format(raw.format, layout[0])
    stored_hints, hint_parts = _checkpoint_hints(extracted.entries, extracted.modules)
    layout += hint_parts

    state_dict, step_notes = strip_wrapper_prefixes(extracted.state_dict)
    notes += step_notes
    bidirectional = user_hints.get("bidirectional", stored_hints.get("bidirectional"))
    state_dict, step_notes = dequantize(state_dict, bidirectional if isinstance(bidirectional, bool) else None)
    notes += step_notes
    state_dict, step_notes = fold_pruning(state_dict)
    notes += step_notes
    odd = non_tensor_entries(state_dict)
    if odd:
        raise CheckpointError("the state_dict holds non-tensor entries: {}".format(", ".join(
            "{} ({})".format(k, type(state_dict[k]).__name__) for k in odd[:6])))
    for dtype, count in sorted(low_precision_count(state_dict).items()):
        notes.append("converted {} {} tensor{} to float32".format(count, dtype, "s" if count != 1 else ""))

    chosen, state_dict = _choose_family(requested, state_dict, notes)
    state_dict = chosen.normalize_keys(state_dict)
    _check_memory(path, tensor_bytes(state_dict), "float32 tensors", budget, budget_source)

    config = _resolve_config(chosen, state_dict, stored_hints, user_hints, notes)
    model = _build(chosen, config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # _resolve_config compared keys and shapes already; dtypes etc. remain
        raise CheckpointError("loading the weights into the {} model failed: {}".format(
            chosen.name, str(exc).strip().splitlines()[0])) from None
    model.eval()

    vocab, labels_list = None, None
    wants_vocab, wants_labels = "vocab_size" in config, "num_classes" in config
    if word_map is not None:
        if not wants_vocab:
            raise UsageError("--word-map was given but the {} family has no vocabulary".format(chosen.name))
        word_map_path = _resolve(word_map, base)
        vocab = vocabulary_from_file(word_map_path, trust_pickle, Path(code_path) if code_path is not None else None)
        check_vocabulary_size(vocab, config.get("vocab_size"), "word map file {}".format(word_map_path))
        layout.append("word map file")
    elif wants_vocab:
        found = _first_found(vocabulary_from_checkpoint, extracted.entries)
        if found is not None:
            vocab, key = found
            check_vocabulary_size(vocab, config.get("vocab_size"), "checkpoint[{!r}]".format(key))
            layout.append(key)
        else:
            notes.append("no word map in the checkpoint (pass --word-map)")
    if labels is not None:
        if not wants_labels:
            raise UsageError("--labels was given but the {} family has no classes".format(chosen.name))
        labels_path = _resolve(labels, base)
        labels_list = labels_from_file(labels_path)
        check_label_count(labels_list, config.get("num_classes"), "labels file {}".format(labels_path))
        notes += side_labels_notes(labels_list, extracted.entries, "--labels {}".format(labels_path))
        layout.append("labels file")
    elif wants_labels:
        found_labels = checkpoint_labels(extracted.entries)
        if found_labels is not None:
            labels_list, key = found_labels
            check_label_count(labels_list, config.get("num_classes"), "checkpoint[{!r}]".format(key))
            layout.append(key)
        else:
            notes.append("no class names in the checkpoint (pass --labels)")

    provided = {k: "checkpoint config" for k in stored_hints if k in config and config[k] == stored_hints[k]}
    provided.update({k: "command line" for k in user_hints})
    return LoadedModel(family=chosen, model=model, config=config, vocab=vocab, labels=labels_list, path=path,
                       sha256=sha256_file(path), layout=" + ".join(layout), notes=notes, provided=provided)


def _first_found(reader: Any, entries: Mapping[str, Any]) -> Optional[Tuple[Any, str]]:
    """``reader`` applied to the container's entries, then to its config dicts."""
    found = reader(entries)
    if found is not None:
        return found
    for config in _config_dicts(entries):
        found = reader(config)
        if found is not None:
            return found
    return None
