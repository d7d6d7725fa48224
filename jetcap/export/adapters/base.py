"""The captioner adapter protocol: how one decoder step of the user's model is wired.

jetcap exports a captioner as two graphs, ``encoder`` (once per image) and ``decoder_step`` (once per
word, the decoder state as explicit inputs and outputs).  An *adapter* says how the user's modules make
those two functions; it calls the user's own modules and methods, so the arithmetic (tanh or ReLU
attention, gates, biases, layer counts) is the user's code, never a rebuild.

An adapter has:

* ``state``: names of the tensors carried from step to step (e.g. ``("h", "c")``);
* ``context``: names of the per-image tensors every step reads unchanged (e.g. ``("features",)``);
* ``encode(model, images) -> {name: tensor}`` for every name in ``state`` and ``context``;
* ``step(model, words, **tensors) -> {"scores" or "log_probs": (B, V), name: new state..., "alpha": (B, P)?}``
  where ``tensors`` holds every state and context tensor by name;
* optionally ``int8_keep_float``: substrings of ONNX node names to keep in float in the INT8 variant.

``model`` is what the model source produced: one module, or a dict of parts (``{"encoder": ...,
"decoder": ...}``).  A tensor's batch axis need not be the first (an ``nn.LSTM`` state is
``(layers, B, D)``): export finds it by encoding two batch sizes.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from jetcap.errors import UsageError
from jetcap.util.lazy import require

torch = require("torch")
nn = torch.nn
F = torch.nn.functional

WORD_INPUT = "prev_word"
LOG_PROBS = "log_probs"
ATTENTION = "alpha"


class CaptionerAdapter:
    """Base class of adapters (a user file may also be a plain module with the same names)."""

    name = "adapter"
    state: Tuple[str, ...] = ()
    context: Tuple[str, ...] = ()
    int8_keep_float: Tuple[str, ...] = ()
    notes: List[str] = []

    def encode(self, model, images) -> Dict[str, Any]:
        raise NotImplementedError

    def step(self, model, words, **tensors) -> Dict[str, Any]:
        raise NotImplementedError


def init_name(state_name: str) -> str:
    """Encoder output holding the first value of state ``state_name`` (``h`` -> ``h0``)."""
    return state_name + "0"


def new_name(state_name: str) -> str:
    """Step output holding the next value of state ``state_name`` (``h`` -> ``h_new``)."""
    return state_name + "_new"


def check_adapter(adapter) -> None:
    """UsageError when ``adapter`` does not follow the protocol (names, callables)."""
    for attr in ("encode", "step"):
        if not callable(getattr(adapter, attr, None)):
            raise UsageError("the captioner adapter has no {}() function".format(attr))
    state, context = tuple(getattr(adapter, "state", ()) or ()), tuple(getattr(adapter, "context", ()) or ())
    if not state:
        raise UsageError("the captioner adapter names no state tensors (state = (...))")
    names = list(state) + list(context)
    reserved = {WORD_INPUT, LOG_PROBS, ATTENTION, "images", "scores"}
    bad = [n for n in names if not isinstance(n, str) or not n.isidentifier() or n in reserved]
    if bad or len(set(names)) != len(names):
        raise UsageError("adapter state/context names must be distinct identifiers other than {}: got {}".format(
            ", ".join(sorted(reserved)), names))
    clashes = [n for n in context if init_name(n) in state or n in {init_name(s) for s in state}]
    if clashes:
        raise UsageError("adapter context names clash with initial-state names: {}".format(clashes))


class EncoderModule(nn.Module):
    """Graph module of ``encoder``: images -> context tensors, then the initial state (``<name>0``)."""

    def __init__(self, adapter, model):
        super().__init__()
        self.adapter = adapter
        self.parts = _as_module(model)
        self.model = model

    @property
    def output_names(self) -> List[str]:
        return list(self.adapter.context) + [init_name(s) for s in self.adapter.state]

    def forward(self, images):
        out = _check_outputs(self.adapter.encode(self.model, images), list(self.adapter.state) + list(self.adapter.context),
                             "encode()")
        return tuple(out[n] for n in self.adapter.context) + tuple(out[s] for s in self.adapter.state)


class StepModule(nn.Module):
    """Graph module of ``decoder_step``: (prev_word, state..., context...) -> (log_probs, new state..., alpha?)."""

    def __init__(self, adapter, model, with_attention: bool):
        super().__init__()
        self.adapter = adapter
        self.parts = _as_module(model)
        self.model = model
        self.with_attention = with_attention

    @property
    def input_names(self) -> List[str]:
        return [WORD_INPUT] + list(self.adapter.state) + list(self.adapter.context)

    @property
    def output_names(self) -> List[str]:
        return [LOG_PROBS] + [new_name(s) for s in self.adapter.state] + ([ATTENTION] if self.with_attention else [])

    def forward(self, prev_word, *tensors):
        names = list(self.adapter.state) + list(self.adapter.context)
        out = self.adapter.step(self.model, prev_word, **dict(zip(names, tensors)))
        out = _check_outputs(out, list(self.adapter.state), "step()")
        if "log_probs" in out:
            log_probs = F.log_softmax(out["log_probs"], dim=-1)  # idempotent on log-probabilities
        elif "scores" in out:
            log_probs = F.log_softmax(out["scores"], dim=-1)
        else:
            raise UsageError("the adapter's step() must return 'scores' (logits) or 'log_probs'")
        result = (log_probs,) + tuple(out[s] for s in self.adapter.state)
        if self.with_attention:
            if out.get("alpha") is None:
                raise UsageError("the adapter's step() returned no 'alpha' on this call but did on another")
            result = result + (out["alpha"],)
        return result


def step_has_attention(adapter, model, example_words, tensors) -> bool:
    """Whether the adapter's step returns attention weights (``alpha``)."""
    with torch.no_grad():
        out = adapter.step(model, example_words, **tensors)
    return isinstance(out, dict) and out.get("alpha") is not None


def _check_outputs(out, required: Sequence[str], where: str) -> Dict[str, Any]:
    if not isinstance(out, dict):
        raise UsageError("the adapter's {} must return a dict of tensors, got {}".format(where, type(out).__name__))
    missing = [n for n in required if n not in out]
    if missing:
        raise UsageError("the adapter's {} did not return {}".format(where, ", ".join(missing)))
    return out


def _as_module(model) -> nn.Module:
    """The model's parts as submodules (so ``.eval()``/``.train()`` and export see them)."""
    if isinstance(model, nn.Module):
        return model
    return nn.ModuleDict({k: v for k, v in model.items() if isinstance(v, nn.Module)})


def part(model, name: str, *alternatives: str):
    """Part ``name`` of a model (a dict of parts or a module with that attribute); UsageError if absent."""
    for candidate in (name,) + alternatives:
        if isinstance(model, dict) and candidate in model:
            return model[candidate]
        if not isinstance(model, dict) and hasattr(model, candidate):
            return getattr(model, candidate)
    raise UsageError("the model has no {} part (looked for {})".format(name, ", ".join((name,) + alternatives)))


def first_attr(obj, names: Sequence[str]) -> Optional[Tuple[str, Any]]:
    """``(name, value)`` of the first attribute of ``obj`` among ``names`` that exists, else None."""
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return name, value
    return None
