"""Turning what a checkpoint holds into a plain float state_dict a family can load strictly.

Each step is a small function returning the new dict and notes for the user:
finding the state_dict in a container (``model_state_dict``, ``state_dict``, ``model``, separate
``encoder``/``decoder`` entries, pickled modules), stripping wrapper prefixes (``module.`` of
DataParallel/DDP, ``_orig_mod.`` of torch.compile), dequantizing dynamically quantized
Linear/LSTM/GRU/LSTMCell weights, folding pruning masks (``X_orig * X_mask``), and comparing the
result with the keys and shapes a model expects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from jetcap.errors import CheckpointError

# Container entries that hold the whole model's state, most specific first.
STATE_KEYS = ("model_state_dict", "state_dict", "model", "model_state", "net", "network", "weights", "params",
              "module")
# Pairs of container entries holding the two halves of an encoder-decoder model.
SPLIT_KEYS = (("encoder", "decoder"), ("encoder_state_dict", "decoder_state_dict"))
# Wrapper modules that prefix every key: DataParallel/DDP (``module.``) and torch.compile (``_orig_mod.``).
WRAPPER_COMPONENTS = ("module", "_orig_mod")

_RNN_KEY = re.compile(r"^(?P<prefix>.*)\._all_weight_values\.(?P<index>\d+)\.param$")


class InertScriptObject:
    """Stands in for ``torch.ScriptObject`` (the packed weights of dynamically quantized LSTMs and
    LSTMCells) while unpickling with ``weights_only=True``: keeps ``(state, class name)``, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return "InertScriptObject({})".format(self.qualified_name)

    @property
    def qualified_name(self) -> str:
        if isinstance(self.state, tuple) and len(self.state) == 2 and isinstance(self.state[1], str):
            return self.state[1]
        return "?"


@dataclass
class Extracted:
    """A state_dict found in a checkpoint, with the rest of its container and how it was stored."""

    state_dict: Dict[str, Any]
    entries: Dict[str, Any] = field(default_factory=dict)  # the container's other entries
    layout: List[str] = field(default_factory=list)
    modules: Dict[str, nn.Module] = field(default_factory=dict)  # pickled module objects, by prefix


def _is_state_value(value: Any) -> bool:
    """A value a (possibly quantized) state_dict holds."""
    return isinstance(value, (torch.Tensor, torch.dtype, InertScriptObject, torch.ScriptObject)) or (
        isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value))


def is_state_dict(value: Any) -> bool:
    """True for a non-empty mapping of str keys to tensors (or quantized packed weights)."""
    return (isinstance(value, Mapping) and bool(value) and all(isinstance(k, str) for k in value)
            and all(_is_state_value(v) for v in value.values())
            and any(isinstance(v, (torch.Tensor, InertScriptObject, torch.ScriptObject, tuple))
                    for v in value.values()))


def _state_of(value: Any, modules: Dict[str, nn.Module], prefix: str = "") -> Optional[Dict[str, Any]]:
    """The state of a module (remembered in ``modules``) or a state_dict; None for anything else."""
    if isinstance(value, nn.Module):  # ScriptModules (TorchScript archives) included
        modules[prefix] = value
        return dict(value.state_dict())
    if is_state_dict(value):
        return dict(value)
    return None


def extract_state_dict(obj: Any) -> Extracted:
    """Find the state_dict in what ``torch.load`` returned; CheckpointError naming the entries if none.

    Understood: a bare state_dict; a pickled module; a dict with one of :data:`STATE_KEYS` (a state_dict,
    a module, or one more level of nesting); a dict with separate ``encoder``/``decoder`` entries
    (state_dicts or modules), merged under ``encoder.``/``decoder.`` prefixes.
    """
    modules: Dict[str, nn.Module] = {}
    direct = _state_of(obj, modules)
    if direct is not None:
        kind = "pickled {} module".format(type(obj).__name__) if isinstance(obj, nn.Module) else "bare state_dict"
        return Extracted(direct, {}, [kind], modules)
    if not isinstance(obj, Mapping):
        raise CheckpointError("the checkpoint holds a {}, not a state_dict or a dict of entries".format(
            type(obj).__name__))
    entries = dict(obj)
    for key in STATE_KEYS:
        if key not in entries:
            continue
        value = entries[key]
        state = _state_of(value, modules)
        if state is not None:
            what = " (pickled {})".format(type(value).__name__) if isinstance(value, nn.Module) else ""
            rest = {k: v for k, v in entries.items() if k != key}
            return Extracted(state, rest, ["dict[{!r}]{}".format(key, what)], modules)
        if isinstance(value, Mapping):  # one more level, e.g. {"model": {"state_dict": ...}}
            for inner_key in STATE_KEYS:
                if inner_key in value:
                    state = _state_of(value[inner_key], modules)
                    if state is not None:
                        rest = {k: v for k, v in entries.items() if k != key}
                        rest.update({k: v for k, v in value.items() if k != inner_key})
                        return Extracted(state, rest, ["dict[{!r}][{!r}]".format(key, inner_key)], modules)
    for first, second in SPLIT_KEYS:
        if first in entries and second in entries:
            merged: Dict[str, Any] = {}
            parts = []
            for key, prefix in ((first, "encoder."), (second, "decoder.")):
                state = _state_of(entries[key], modules, prefix)
                if state is None:
                    raise CheckpointError("checkpoint[{!r}] is a {}, neither a state_dict nor a module".format(
                        key, type(entries[key]).__name__))
                state = strip_wrapper_prefixes(state)[0]
                for name, value in state.items():
                    merged[name if name.startswith(prefix) else prefix + name] = value
                what = " (pickled {})".format(type(entries[key]).__name__) if isinstance(entries[key], nn.Module) else ""
                parts.append("dict[{!r}]{}".format(key, what))
            rest = {k: v for k, v in entries.items() if k not in (first, second)}
            return Extracted(merged, rest, [" + ".join(parts)], modules)
    shown = ", ".join("{} ({})".format(k, type(v).__name__) for k, v in list(entries.items())[:12])
    raise CheckpointError("no state_dict found in the checkpoint; its entries: {}".format(shown or "none"),
                          hint="expected a state_dict, 'model_state_dict'/'state_dict'/'model', "
                               "or 'encoder' + 'decoder' entries")


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Remove ``module.`` (leading, DataParallel/DDP) and ``_orig_mod.`` (anywhere, torch.compile)."""
    out: Dict[str, Any] = {}
    stripped: Dict[str, int] = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        while len(parts) > 1 and parts[0] in WRAPPER_COMPONENTS:
            stripped[parts[0]] = stripped.get(parts[0], 0) + 1
            parts = parts[1:]
        kept = [p for p in parts[:-1] if p != "_orig_mod"]
        if len(kept) != len(parts) - 1:
            stripped["_orig_mod"] = stripped.get("_orig_mod", 0) + 1
        new_key = ".".join(kept + parts[-1:])
        if new_key in out:
            raise CheckpointError("key {!r} appears twice once wrapper prefixes are removed".format(new_key))
        out[new_key] = value
    notes = ["stripped prefix '{}.' ({} keys)".format(name, count) for name, count in sorted(stripped.items())]
    return out, notes


def strip_common_prefix(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], Optional[str]]:
    """Remove a first key component shared by every key (e.g. Lightning's ``model.``); (dict, prefix)."""
    firsts = {key.split(".", 1)[0] for key in state_dict}
    if len(firsts) != 1 or any("." not in key for key in state_dict):
        return dict(state_dict), None
    prefix = firsts.pop() + "."
    return {key[len(prefix):]: value for key, value in state_dict.items()}, prefix


# -- dequantization ------------------------------------------------------------------------------

def _torchbind_state(obj: Any, key: str) -> Tuple[str, Any]:
    """``(class name, state)`` of a packed-params object, real (trusted load) or inert (safe load)."""
    if isinstance(obj, InertScriptObject):
        state = obj.state
    elif isinstance(obj, torch.ScriptObject):
        state = obj.__getstate__()
    else:
        raise CheckpointError("{}: expected packed quantized weights, got a {}".format(key, type(obj).__name__))
    if not (isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], str)):
        raise CheckpointError("{}: unrecognised packed-params state".format(key))
    return state[1], state[0]


def _float(tensor: Any, key: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise CheckpointError("{}: expected a tensor inside the packed weights, got {}".format(
            key, type(tensor).__name__))
    if tensor.is_quantized:
        return tensor.dequantize()
    return tensor.float()


def _unpack_linear(obj: Any, key: str) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(weight, bias) of a ``LinearPackedParamsBase`` (qint8 or fp16 dynamic quantization)."""
    name, state = _torchbind_state(obj, key)
    if not name.endswith("LinearPackedParamsBase") or not isinstance(state, tuple) or len(state) < 2:
        raise CheckpointError("{}: cannot dequantize packed params of {} (only dynamic quantization of Linear, "
                              "LSTM, GRU and LSTMCell is supported); save the float model's state_dict".format(
                                  key, name))
    weight, bias = state[0], state[1]
    return _float(weight, key), (None if bias is None else _float(bias, key))


def _unpack_cell(obj: Any, key: str) -> Dict[str, torch.Tensor]:
    """weight_ih/weight_hh/bias_ih/bias_hh of one layer-direction of a dynamically quantized RNN."""
    name, state = _torchbind_state(obj, key)
    if not name.endswith("CellParamsBase") or not isinstance(state, tuple) or len(state) != 5:
        raise CheckpointError("{}: cannot dequantize RNN params of {}".format(key, name))
    kind, tensors, _doubles, _longs, packed = state
    if kind not in ("quantized_dynamic", "quantized_fp16") or len(packed) != 2:
        raise CheckpointError("{}: cannot dequantize RNN cell params of kind {!r} (only dynamic qint8/fp16 "
                              "quantization is supported); save the float model's state_dict".format(key, kind))
    (w_ih, b_ih), (w_hh, b_hh) = _unpack_linear(packed[0], key), _unpack_linear(packed[1], key)
    if kind == "quantized_dynamic" and len(tensors) == 2:
        b_ih, b_hh = _float(tensors[0], key), _float(tensors[1], key)
    out = {"weight_ih": w_ih, "weight_hh": w_hh}
    if b_ih is not None:
        out["bias_ih"] = b_ih
    if b_hh is not None:
        out["bias_hh"] = b_hh
    return out


def _rnn_layout(cells: Sequence[Dict[str, torch.Tensor]], bidirectional_hint: Optional[bool]) -> Tuple[int, int]:
    """(num_layers, num_directions) of an RNN from its per-layer-direction weights, in storage order."""
    count = len(cells)
    hidden = cells[0]["weight_hh"].shape[1]
    inputs = [cell["weight_ih"].shape[1] for cell in cells]
    uni_ok = all(width == hidden for width in inputs[1:])
    bi_ok = count % 2 == 0 and inputs[0] == inputs[1] and all(width == 2 * hidden for width in inputs[2:])
    if bidirectional_hint is not None:
        if (bi_ok if bidirectional_hint else uni_ok):
            return (count // 2, 2) if bidirectional_hint else (count, 1)
    if bi_ok:  # also the choice when both readings fit (one bidirectional layer with input == hidden)
        return count // 2, 2
    if uni_ok:
        return count, 1
    raise CheckpointError("cannot tell the layers of a quantized RNN from the shapes of its {} weight sets".format(
        count))


def dequantize(state_dict: Mapping[str, Any], bidirectional_hint: Optional[bool] = None
               ) -> Tuple[Dict[str, Any], List[str]]:
    """Replace dynamically quantized packed weights by float tensors under the float modules' names.

    Handled (``torch.ao.quantization.quantize_dynamic``, qint8 and float16): Linear
    (``X._packed_params._packed_params``), LSTM/GRU (``X._all_weight_values.N.param``), LSTMCell/GRUCell
    (``X._packed_weight_ih``/``_hh``), and weight-only Embedding (``X._packed_params._packed_weight``).
    Anything else quantized (static quantization, other packed classes) is a CheckpointError.
    """
    out: Dict[str, Any] = {}
    converted: Dict[str, str] = {}
    rnn_cells: Dict[str, Dict[int, Dict[str, torch.Tensor]]] = {}
    for key, value in state_dict.items():
        if key.endswith("._packed_params._packed_params"):
            prefix = key[: -len("._packed_params._packed_params")]
            if not (isinstance(value, tuple) and len(value) == 2):
                raise CheckpointError("{}: unrecognised packed Linear params".format(key))
            weight, bias = value
            out[prefix + ".weight"] = _float(weight, key)
            if bias is not None:
                out[prefix + ".bias"] = _float(bias, key)
            converted[prefix] = "Linear"
        elif key.endswith("._packed_params._packed_weight"):
            prefix = key[: -len("._packed_params._packed_weight")]
            out[prefix + ".weight"] = _float(value, key)
            converted[prefix] = "Embedding"
        elif key.endswith("._packed_weight_ih") or key.endswith("._packed_weight_hh"):
            prefix, which = key.rsplit("._packed_weight_", 1)
            weight, bias = _unpack_linear(value, key)
            out["{}.weight_{}".format(prefix, which)] = weight
            if bias is not None:
                out["{}.bias_{}".format(prefix, which)] = bias
            converted[prefix] = "LSTMCell"
        elif _RNN_KEY.match(key):
            match = _RNN_KEY.match(key)
            assert match is not None
            rnn_cells.setdefault(match.group("prefix"), {})[int(match.group("index"))] = _unpack_cell(value, key)
        elif isinstance(value, (InertScriptObject, torch.ScriptObject)):
            name = _torchbind_state(value, key)[0]
            raise CheckpointError("{}: cannot dequantize packed weights of {} (only dynamic quantization of Linear, "
                                  "LSTM, GRU and LSTMCell is supported); save the float model's state_dict".format(
                                      key, name))
        else:
            out[key] = value
    for prefix, by_index in rnn_cells.items():
        cells = [by_index[i] for i in sorted(by_index)]
        if sorted(by_index) != list(range(len(cells))):
            raise CheckpointError("{}: quantized RNN weight sets are not numbered 0..N-1".format(prefix))
        layers, directions = _rnn_layout(cells, bidirectional_hint)
        for index, cell in enumerate(cells):
            suffix = "_l{}{}".format(index // directions, "_reverse" if index % directions else "")
            for name, tensor in cell.items():
                out["{}.{}{}".format(prefix, name, suffix)] = tensor
        converted[prefix] = "{}-layer {}RNN".format(layers, "bidirectional " if directions == 2 else "")
    # dynamic quantization leaves per-module output qparams and the packed dtype: not weights
    for prefix in converted:
        for extra in (".scale", ".zero_point", "._packed_params.dtype"):
            out.pop(prefix + extra, None)
    leftovers = [k for k, v in out.items() if isinstance(v, torch.Tensor) and v.is_quantized]
    if leftovers:
        raise CheckpointError("cannot dequantize {} (statically quantized tensors: only dynamic quantization is "
                              "supported); save the float model's state_dict".format(", ".join(leftovers[:4])))
    notes = []
    if converted:
        notes.append("dequantized {} dynamic-quantized module{} ({})".format(
            len(converted), "s" if len(converted) != 1 else "", ", ".join(sorted(converted))))
    return out, notes


# -- pruning -------------------------------------------------------------------------------------

def fold_pruning(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Fold ``X_orig * X_mask`` (torch.nn.utils.prune) into plain ``X`` tensors."""
    out: Dict[str, Any] = {}
    folded = []
    for key, value in state_dict.items():
        if key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state_dict:
            continue
        if key.endswith("_orig") and key[: -len("_orig")] + "_mask" in state_dict:
            target = key[: -len("_orig")]
            mask = state_dict[target + "_mask"]
            if not isinstance(value, torch.Tensor) or not isinstance(mask, torch.Tensor) or value.shape != mask.shape:
                raise CheckpointError("{}: pruning mask {} does not match the weight's shape".format(key, target + "_mask"))
            if target in state_dict:
                raise CheckpointError("{} is stored both pruned ({}) and plain".format(target, key))
            out[target] = value * mask.to(value.dtype)
            folded.append(target)
            continue
        out[key] = value
    notes = ["folded {} pruned weight{} (X_orig * X_mask)".format(len(folded), "s" if len(folded) != 1 else "")] \
        if folded else []
    return out, notes


# -- checks --------------------------------------------------------------------------------------

def non_tensor_entries(state_dict: Mapping[str, Any]) -> List[str]:
    """Keys whose values are not tensors (after dequantization there should be none)."""
    return [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]


def tensor_bytes(state_dict: Mapping[str, Any], as_float32: bool = True) -> int:
    """Bytes of the tensors; floating tensors counted as float32 (what the model will hold)."""
    total = 0
    for value in state_dict.values():
        if isinstance(value, torch.Tensor):
            size = 4 if as_float32 and value.is_floating_point() else value.element_size()
            total += value.numel() * max(size, value.element_size())
    return total


def low_precision_count(state_dict: Mapping[str, Any]) -> Dict[str, int]:
    """How many floating tensors are stored in each non-float32 dtype (e.g. {'float16': 120})."""
    counts: Dict[str, int] = {}
    for value in state_dict.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float32:
            name = str(value.dtype).replace("torch.", "")
            counts[name] = counts.get(name, 0) + 1
    return counts


def summarize_keys(keys: Iterable[str], limit: int = 6) -> str:
    """``a, b, c`` for few keys; ``encoder.backbone.* (210 keys), ...`` for many."""
    keys = sorted(keys)
    if len(keys) <= limit:
        return ", ".join(keys)
    groups: Dict[str, int] = {}
    for key in keys:
        parts = key.split(".")
        group = ".".join(parts[:2]) + ".*" if len(parts) > 2 else key
        groups[group] = groups.get(group, 0) + 1
    shown = ["{} ({} keys)".format(g, n) if n > 1 else g for g, n in sorted(groups.items())[:limit]]
    if len(groups) > limit:
        shown.append("... {} more groups".format(len(groups) - limit))
    return ", ".join(shown)


@dataclass
class FitReport:
    """How a state_dict differs from the keys and shapes a model expects."""

    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]  # key, checkpoint shape, model shape
    error: Optional[str] = None  # the model could not even be built from the config

    @property
    def size(self) -> int:
        """How far from fitting: the number of differing keys (a build error counts as worst)."""
        if self.error:
            return 1 << 30
        return len(self.missing) + len(self.unexpected) + len(self.mismatched)

    def __bool__(self) -> bool:  # truthy when it fits
        return self.size == 0

    def describe(self) -> str:
        """One line: counts and (grouped) names of missing, unexpected and mismatched keys."""
        if self.error:
            return self.error
        parts = []
        if self.missing:
            parts.append("{} missing key{} ({})".format(len(self.missing), "s" if len(self.missing) != 1 else "",
                                                         summarize_keys(self.missing)))
        if self.unexpected:
            parts.append("{} unexpected key{} ({})".format(len(self.unexpected),
                                                            "s" if len(self.unexpected) != 1 else "",
                                                            summarize_keys(self.unexpected)))
        if self.mismatched:
            shown = ["{}: checkpoint {} vs model {}".format(k, list(a), list(b)) for k, a, b in self.mismatched[:6]]
            if len(self.mismatched) > 6:
                shown.append("... {} more".format(len(self.mismatched) - 6))
            parts.append("{} shape mismatch{} ({})".format(len(self.mismatched),
                                                            "es" if len(self.mismatched) != 1 else "",
                                                            "; ".join(shown)))
        return "; ".join(parts)


def compare(state_dict: Mapping[str, Any], expected: Mapping[str, Tuple[int, ...]]) -> FitReport:
    """Compare a state_dict with ``{key: shape}`` of a model."""
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [(k, tuple(state_dict[k].shape), tuple(shape)) for k, shape in expected.items()
                  if k in state_dict and tuple(state_dict[k].shape) != tuple(shape)]
    return FitReport(missing, unexpected, mismatched)
