"""Model sources: where the model that export and validation run comes from.

The user's model is whatever the user's code computes, so that code is what jetcap exports and checks
against.  One function, :func:`resolve_source`, behind ``export`` and ``validate --checkpoint``:

* **user code** (``--model MODULE:NAME``, or ``encoder=MODULE:NAME`` / ``decoder=...`` for models saved
  in parts): NAME is an ``nn.Module`` class or a callable returning the module (or a dict of parts),
  built with ``--model-args`` or the checkpoint's own config / Lightning ``hyper_parameters``, then
  given the checkpoint's weights -- still read with ``weights_only=True``: trusting the code does not
  mean trusting the file;
* **pickled modules** (``--trust-pickle``): the unpickled modules themselves, with their own forward;
* **the Python API**: modules the user built in a script (:func:`source_from_modules`);
* **jetcap's built-in families**: the no-code path, rebuilding a known layout from tensor shapes.

Objects beside the model (scikit-learn ``LabelEncoder``, optimizers, word maps) are read the inert way
in every case (:mod:`jetcap.models.labels`).
"""
from __future__ import annotations

import importlib
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from jetcap.errors import CheckpointError, UsageError
from jetcap.models.checkpoint import CONFIG_KEYS, LoadedModel, checkpoint_labels, load_checkpoint, side_labels_notes
from jetcap.models.checkpoint_file import read_checkpoint
from jetcap.models.labels import check_label_count, labels_from_file
from jetcap.models.state_dict import (
    STATE_KEYS, compare, dequantize, extract_state_dict, fold_pruning, is_state_dict, strip_common_prefix,
    strip_wrapper_prefixes,
)
from jetcap.models.wordmap import vocabulary_from_checkpoint, vocabulary_from_file
from jetcap.runtime.vocab import Vocabulary
from jetcap.util.fsio import sha256_file
from jetcap.util.pyfile import import_python_file

BUILTIN, USER_CODE, PICKLED, PYTHON_API = "built-in family", "user code", "pickled modules", "python api"
PART_NAMES = ("model", "encoder", "decoder")


@dataclass
class SourceOptions:
    """How to find the model.

    Attributes:
        checkpoint: the checkpoint file (None for the Python API).
        family: "captioner" / "classifier", or None to decide from the model.
        models: ``{part: "MODULE:NAME"}`` of the user's classes/factories (part "model" for one module).
        model_args: constructor arguments: an object for a single part, or ``{part: object}``.
        trust_pickle: allow whole pickled modules (executes code from the file).
        code_path: folder (searched recursively) or ``.py`` file with the user's code.
        word_map, labels: side files overriding the checkpoint's vocabulary / class names.
        hints: hyper-parameters set on the command line (built-in families).
    """

    checkpoint: Optional[Path] = None
    family: Optional[str] = None
    models: Dict[str, str] = field(default_factory=dict)
    model_args: Optional[Dict[str, Any]] = None
    trust_pickle: bool = False
    code_path: Optional[Path] = None
    word_map: Optional[Path] = None
    labels: Optional[Path] = None
    hints: Dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSource:
    """The model to export and check against.

    Attributes:
        kind: one of BUILTIN, USER_CODE, PICKLED, PYTHON_API.
        description: what was used, for the log and the manifest.
        model: one ``nn.Module`` or ``{part: nn.Module}`` (eval mode).
        family: "captioner" / "classifier" when known.
        vocab, labels: what the checkpoint or side files hold.
        stored: hyper-parameters found in the checkpoint (config dicts, Lightning hyper_parameters).
        builtin: the :class:`LoadedModel` of a built-in family (None otherwise).
        checkpoint, sha256, layout, notes: the file and how it was read.
    """

    kind: str
    description: str
    model: Any
    family: Optional[str] = None
    vocab: Optional[Vocabulary] = None
    labels: Optional[List[str]] = None
    stored: Dict[str, Any] = field(default_factory=dict)
    builtin: Optional[LoadedModel] = None
    checkpoint: Optional[Path] = None
    sha256: Optional[str] = None
    layout: str = ""
    notes: List[str] = field(default_factory=list)

    def manifest_entry(self) -> Dict[str, Any]:
        entry: Dict[str, Any] = {"kind": self.kind, "model": self.description, "layout": self.layout}
        if self.checkpoint is not None:
            entry.update(checkpoint=self.checkpoint.name, sha256=self.sha256)
        return entry


# -- importing the user's code ---------------------------------------------------------------------

def add_code_path(code_path: Optional[Path]) -> None:
    """Put ``code_path`` (a folder, or a file's folder) first on ``sys.path`` for this process."""
    if code_path is None:
        return
    code_path = Path(code_path)
    if not code_path.exists():
        raise UsageError("--code-path not found: {}".format(code_path))
    folder = str((code_path if code_path.is_dir() else code_path.parent).resolve())
    if folder not in sys.path:
        sys.path.insert(0, folder)


def import_object(spec: str, code_path: Optional[Path] = None) -> Any:
    """The object ``NAME`` of ``MODULE:NAME`` (a dotted module importable with ``code_path`` on
    sys.path, or a ``.py`` file path); UsageError with one line for anything that goes wrong."""
    if ":" not in spec:
        raise UsageError("--model expects MODULE:NAME (or path/to/file.py:NAME), got {!r}".format(spec))
    module_name, _, name = spec.rpartition(":")
    add_code_path(code_path)
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_absolute() and code_path is not None and not path.exists():
                path = (Path(code_path) if Path(code_path).is_dir() else Path(code_path).parent) / path
            if not path.is_file():
                raise UsageError("--model file not found: {}".format(module_name))
            add_code_path(path.parent)
            module = import_python_file(path, "_jetcap_model_" + path.stem)
        else:
            module = importlib.import_module(module_name)
    except UsageError:
        raise
    except Exception as exc:  # user code: name the module and the first line of what it raised
        raise UsageError("importing {} for --model failed: {}: {}".format(module_name, type(exc).__name__,
                                                                         _first_line(exc)),
                         hint="pass --code-path DIR, the folder of your training code") from None
    obj = module
    for attr in name.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            raise UsageError("{} defines no {!r}".format(module_name, name))
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _signature_args(factory: Any, stored: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Arguments for ``factory`` from the stored hyper-parameters: those its signature names (all of
    only), and the required parameters still missing."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}, []
    params = [p for p in signature.parameters.values() if p.name != "self"]
    named = {p.name for p in params if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)}
    # only what the signature names: a config also holds training settings a **kwargs would swallow
    args = {k: v for k, v in stored.items() if k in named}
    missing = [p.name for p in params if p.default is inspect.Parameter.empty and p.name not in args
               and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
    return args, missing


def _construct(factory: Any, part_name: str, args: Optional[Dict[str, Any]], stored: Mapping[str, Any],
               spec: str) -> Tuple[Any, str]:
    """Call the user's class/factory; returns (result, where the arguments came from)."""
    if args is not None:
        where = "--model-args"
    else:
        args, missing = _signature_args(factory, stored)
        if missing:
            raise UsageError("cannot build {} ({}): no value for {} in the checkpoint's config".format(
                spec, part_name, ", ".join(missing)),
                hint="pass --model-args '{}'".format(json.dumps({m: "..." for m in missing})))
        where = "checkpoint config ({})".format(", ".join(sorted(args))) if args else "no arguments"
    try:
        return factory(**args), where
    except Exception as exc:  # user code
        raise UsageError("building {} with {} failed: {}: {}".format(spec, where, type(exc).__name__,
                                                                     _first_line(exc))) from None


# -- weights ---------------------------------------------------------------------------------------

def _stored_config(entries: Mapping[str, Any]) -> Dict[str, Any]:
    """Hyper-parameters kept in the checkpoint (config dicts, Lightning hyper_parameters), merged."""
    out: Dict[str, Any] = {}
    for key in CONFIG_KEYS:
        value = entries.get(key)
        if value is not None and not isinstance(value, Mapping) and hasattr(value, "__dict__"):
            value = vars(value)
        if isinstance(value, Mapping):
            out.update({k: v for k, v in value.items() if isinstance(k, str)})
    return out


def _normalize(state_dict: Dict[str, Any], notes: List[str]) -> Dict[str, Any]:
    state_dict, more = strip_wrapper_prefixes(state_dict)
    notes += more
    state_dict, more = dequantize(state_dict, None)
    notes += more
    state_dict, more = fold_pruning(state_dict)
    notes += more
    return {k: (v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for k, v in state_dict.items()}


def load_weights(module: nn.Module, state_dict: Dict[str, Any], what: str, notes: List[str]) -> None:
    """Load ``state_dict`` into the user's ``module`` strictly, trying once more without a prefix that
    every key shares (Lightning's ``model.``); CheckpointError with the difference otherwise."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    candidates = [(state_dict, None)]
    stripped, prefix = strip_common_prefix(state_dict)
    if prefix is not None:
        candidates.append((stripped, prefix))
    first = None
    for candidate, prefix in candidates:
        report = compare(candidate, expected)
        if report:  # truthy when it fits
            try:
                module.load_state_dict(candidate, strict=True)
            except RuntimeError as exc:
                raise CheckpointError("loading the weights into {} failed: {}".format(what, _first_line(exc))) from None
            if prefix:
                notes.append("stripped common prefix '{}' for {}".format(prefix, what))
            return
        first = first or report
    raise CheckpointError("the checkpoint's tensors do not fit {}: {}".format(what, first.describe()),
                          hint="check --model and --model-args (the tensors must match the class exactly)")


def _part_states(entries: Mapping[str, Any], parts: List[str], notes: List[str]) -> Dict[str, Dict[str, Any]]:
    """``{part: state_dict}`` for models saved in parts: ``checkpoint[part]``, ``checkpoint[part +
    '_state_dict']``, or one state_dict whose keys start with ``part.``."""
    out: Dict[str, Dict[str, Any]] = {}
    merged: Optional[Dict[str, Any]] = None
    for name in parts:
        for key in (name, name + "_state_dict", name + "_state", name + "_model"):
            value = entries.get(key)
            if isinstance(value, nn.Module):
                value = value.state_dict()
            if is_state_dict(value):
                out[name] = _normalize(dict(value), notes)
                break
        else:
            if merged is None:
                merged = _normalize(extract_state_dict(dict(entries)).state_dict, notes)
            prefix = name + "."
            own = {k[len(prefix):]: v for k, v in merged.items() if k.startswith(prefix)}
            if not own:
                raise CheckpointError("the checkpoint has no weights for the {} part (no {!r} entry and no "
                                      "'{}' keys)".format(name, name, prefix))
            out[name] = own
    return out


def _user_code_source(opts: SourceOptions) -> ModelSource:
    if opts.checkpoint is None:
        raise UsageError("--model needs a checkpoint with the weights")
    # the code is trusted; the file only with --trust-pickle, and then only when it holds more than weights (a
    # vocabulary object beside the state dict, say): weights_only is tried first either way
    raw = read_checkpoint(Path(opts.checkpoint), trust_pickle=opts.trust_pickle, code_path=opts.code_path)
    entries = dict(raw.obj) if isinstance(raw.obj, Mapping) else {}
    stored = _stored_config(entries)
    notes: List[str] = ["checkpoint read with --trust-pickle: it pickles objects beside the weights" if raw.trusted
                        else "weights read with torch.load(weights_only=True)"]
    parts = dict(opts.models)
    unknown = sorted(set(parts) - set(PART_NAMES))
    if unknown:
        raise UsageError("unknown --model part(s) {}; use model=, encoder= or decoder=".format(", ".join(unknown)))
    if "model" in parts and len(parts) > 1:
        raise UsageError("give either one --model MODULE:NAME or encoder=/decoder= parts, not both")
    per_part_args = opts.model_args
    if per_part_args is not None and not isinstance(per_part_args, dict):
        raise UsageError("--model-args must be a JSON object")
    built: Dict[str, Any] = {}
    described = []
    for name, spec in parts.items():
        factory = import_object(spec, opts.code_path)
        args = per_part_args
        if per_part_args is not None and len(parts) > 1 and set(per_part_args) <= set(parts):
            args = per_part_args.get(name)  # {part: object}; a part left out takes the checkpoint's config
        if not callable(factory):
            raise UsageError("{} is not a class or a function".format(spec))
        obj, where = _construct(factory, name, args, stored, spec)
        built[name] = obj
        described.append("{} {} (arguments: {})".format(name, spec, where))
    if "model" in built and isinstance(built["model"], Mapping):
        built = dict(built["model"])  # a factory returning {part: module}
    modules = {k: v for k, v in built.items() if isinstance(v, nn.Module)}
    if set(modules) != set(built):
        odd = sorted(set(built) - set(modules))
        raise UsageError("--model {} did not produce an nn.Module".format(", ".join(odd)))
    if list(modules) == ["model"]:
        state = _normalize(extract_state_dict(raw.obj).state_dict, notes)
        load_weights(modules["model"], state, parts.get("model", "the model"), notes)
        model: Any = modules["model"]
    else:
        states = _part_states(entries, list(modules), notes)
        for name, module in modules.items():
            load_weights(module, states[name], "{} ({})".format(name, parts.get(name, name)), notes)
        model = modules
    _eval(model)
    source = ModelSource(USER_CODE, "; ".join(described), model, family=opts.family, stored=stored,
                         checkpoint=Path(opts.checkpoint), sha256=sha256_file(Path(opts.checkpoint)),
                         layout=raw.format, notes=notes)
    _side_data(source, entries, opts)
    return source


def _pickled_source(opts: SourceOptions) -> Optional[ModelSource]:
    """The pickled modules of a trusted checkpoint, or None when it holds none (a state_dict)."""
    raw = read_checkpoint(Path(opts.checkpoint), trust_pickle=True, code_path=opts.code_path)
    obj = raw.obj
    model: Any = None
    layout = ""
    if isinstance(obj, nn.Module):
        model, layout = obj, "pickled {}".format(type(obj).__name__)
        entries: Dict[str, Any] = {}
    elif isinstance(obj, Mapping):
        entries = dict(obj)
        modules = {k: v for k, v in entries.items() if isinstance(v, nn.Module)}
        if "encoder" in modules and "decoder" in modules:
            model = {"encoder": modules["encoder"], "decoder": modules["decoder"]}
        else:
            for key in STATE_KEYS:
                if key in modules:
                    model = modules[key]
                    break
            else:
                if len(modules) == 1:
                    model = next(iter(modules.values()))
        if model is None:
            return None
        layout = " + ".join("dict[{!r}] (pickled {})".format(k, type(v).__name__) for k, v in modules.items())
    else:
        return None
    _eval(model)
    if isinstance(model, Mapping):
        described = ", ".join("{} = pickled {}.{}".format(k, type(v).__module__, type(v).__name__)
                              for k, v in model.items())
    else:
        described = "pickled {}.{}".format(type(model).__module__, type(model).__name__)
    source = ModelSource(PICKLED, described, model, family=opts.family, stored=_stored_config(entries),
                         checkpoint=Path(opts.checkpoint), sha256=sha256_file(Path(opts.checkpoint)),
                         layout=layout, notes=["loaded with --trust-pickle (the modules' own code runs)"])
    _side_data(source, entries, opts)
    return source


def _side_data(source: ModelSource, entries: Mapping[str, Any], opts: SourceOptions) -> None:
    """Vocabulary and class names from side files, else from the checkpoint's entries."""
    if opts.word_map is not None:
        source.vocab = vocabulary_from_file(Path(opts.word_map), opts.trust_pickle, opts.code_path)
    else:
        found = vocabulary_from_checkpoint(entries)
        if found is not None:
            source.vocab = found[0]
    if opts.labels is not None:
        source.labels = labels_from_file(Path(opts.labels))
        source.notes += side_labels_notes(source.labels, entries, "--labels {}".format(opts.labels))
    else:
        found_labels = checkpoint_labels(entries)
        if found_labels is not None:
            source.labels = found_labels[0]


def _eval(model: Any) -> None:
    for module in (model.values() if isinstance(model, Mapping) else [model]):
        module.eval()


def _builtin_source(opts: SourceOptions) -> ModelSource:
    loaded = load_checkpoint(opts.checkpoint, opts.family, trust_pickle=opts.trust_pickle, code_path=opts.code_path,
                             word_map=opts.word_map, labels=opts.labels, hints=opts.hints)
    return ModelSource(BUILTIN, "rebuilt from the known layout of jetcap's {} family".format(loaded.family.name),
                       loaded.model, family=loaded.family.name, vocab=loaded.vocab, labels=loaded.labels,
                       stored=dict(loaded.config), builtin=loaded, checkpoint=loaded.path, sha256=loaded.sha256,
                       layout=loaded.layout, notes=list(loaded.notes))


def resolve_source(opts: SourceOptions) -> ModelSource:
    """The model source for ``opts`` (see the module docstring for the order)."""
    if opts.checkpoint is not None and not Path(opts.checkpoint).is_file():
        raise UsageError("checkpoint not found: {}".format(opts.checkpoint))
    if opts.code_path is not None:
        opts.code_path = Path(opts.code_path)
    if opts.models:
        return _user_code_source(opts)
    if opts.model_args is not None:
        raise UsageError("--model-args goes with --model MODULE:NAME")
    if opts.trust_pickle:
        found = _pickled_source(opts)
        if found is not None:
            return found
    if opts.checkpoint is None:
        raise UsageError("no checkpoint given")
    return _builtin_source(opts)


def source_from_modules(model: Union[nn.Module, Mapping[str, nn.Module]], family: Optional[str] = None,
                        word_map: Union[None, str, Path, Mapping[str, int], Vocabulary] = None,
                        labels: Union[None, str, Path, List[str]] = None,
                        config: Optional[Mapping[str, Any]] = None) -> ModelSource:
    """A source over modules the user built in Python (``jetcap.export.export_model``)."""
    if isinstance(model, Mapping):
        model = dict(model)
        bad = [k for k, v in model.items() if not isinstance(v, nn.Module)]
        if bad:
            raise UsageError("model parts {} are not nn.Modules".format(bad))
    elif not isinstance(model, nn.Module):
        raise UsageError("export_model needs an nn.Module or a dict of them, got {}".format(type(model).__name__))
    _eval(model)
    vocab = None
    if isinstance(word_map, Vocabulary):
        vocab = word_map
    elif isinstance(word_map, Mapping):
        vocab = Vocabulary.from_word_map(dict(word_map))
    elif word_map is not None:
        vocab = vocabulary_from_file(Path(word_map))
    label_list = None
    if isinstance(labels, (list, tuple)):
        label_list = [str(x) for x in labels]
    elif labels is not None:
        label_list = labels_from_file(Path(labels))
    if isinstance(model, Mapping):
        described = ", ".join("{} = {}.{}".format(k, type(v).__module__, type(v).__name__) for k, v in model.items())
    else:
        described = "{}.{}".format(type(model).__module__, type(model).__name__)
    return ModelSource(PYTHON_API, described, model, family=family, vocab=vocab, labels=label_list,
                       stored=dict(config or {}), layout="modules passed to export_model")


def check_labels(source: ModelSource, num_classes: int) -> None:
    if source.labels is not None:
        check_label_count(source.labels, num_classes, "the class names")


__all__ = ["ModelSource", "SourceOptions", "resolve_source", "source_from_modules", "import_object", "load_weights",
           "BUILTIN", "USER_CODE", "PICKLED", "PYTHON_API"]
