"""Declarative model-family specs and their registry.

A family says, in one small class: how to build the model from hyper-parameters, how to infer those
from a state_dict, which graphs it exports (inputs/outputs with symbolic axes, which *is* the
dynamic-axes spec), how to make dummy inputs for each graph, and its default tolerances.
Quirks of one model live on its family, never in the generic export/validate code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from jetcap.errors import CheckpointError, UsageError


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype (numpy name) and shape with symbolic axis names."""

    name: str
    dtype: str
    shape: Tuple[Any, ...]  # ints for fixed dims, str for symbolic ones ("batch", "num_pixels", "T")

    @property
    def dynamic_axes(self) -> Dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class GraphSpec:
    """A graph to export: its file name, inputs and outputs."""

    name: str
    inputs: Tuple[TensorSpec, ...]
    outputs: Tuple[TensorSpec, ...]

    @property
    def input_names(self) -> List[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> List[str]:
        return [t.name for t in self.outputs]

    def manifest_entry(self) -> Dict[str, Any]:
        """``{inputs, outputs}`` as the manifest's ``graphs`` entry writes it."""
        def tensor(t: TensorSpec) -> Dict[str, Any]:
            return {"name": t.name, "dtype": t.dtype, "shape": list(t.shape)}
        return {"inputs": [tensor(t) for t in self.inputs], "outputs": [tensor(t) for t in self.outputs]}


@dataclass(frozen=True)
class Tolerance:
    """Tensor-level tolerance of one precision.

    An element is out when ``|a - r| > atol + rtol * |r|`` (numpy's ``allclose`` semantics); an output
    fails when more than ``floor(outlier_fraction * size)`` of its elements are out (none by default),
    when one is past ``outlier_cap`` times its bound, or when its cosine similarity to the reference is
    below ``min_cosine`` (see ``jetcap.validate.metrics``).
    """

    atol: float
    rtol: float
    min_cosine: float
    outlier_fraction: float = 0.0
    outlier_cap: float = 1.0


@dataclass(frozen=True)
class TaskThresholds:
    """Task-level pass thresholds of one precision (what users care about)."""

    min_exact_match: float  # captions: fraction of identical token sequences; classifier: top-1 agreement
    max_bleu_drop: float = 0.0  # captions only, in BLEU-4 points (0..100)
    max_prob_diff: float = 1.0  # classifier only, max |p - p_ref| over classes


@dataclass
class ModelFamily:
    """Base of every family spec; subclasses fill the fields and implement the methods."""

    name: str = ""
    description: str = ""
    tolerances: Mapping[str, Tolerance] = field(default_factory=dict)
    task_thresholds: Mapping[str, TaskThresholds] = field(default_factory=dict)
    # substrings of ONNX node names left in float in the INT8 variant (recurrent parts)
    int8_keep_float: Tuple[str, ...] = ()

    # -- building -------------------------------------------------------------------------------
    def build(self, config: Dict[str, Any]):
        """Instantiate the torch module from a complete hyper-parameter dict."""
        raise NotImplementedError

    def infer_config(self, state_dict: Mapping[str, Any], hints: Mapping[str, Any]) -> Dict[str, Any]:
        """Hyper-parameters from tensor shapes, completed/overridden by ``hints`` (checkpoint config,
        CLI options; every key present overrides, ``None`` included, so callers pass only what was
        set).  Raises CheckpointError naming what must be given when shapes cannot tell."""
        raise NotImplementedError

    def matches(self, state_dict: Mapping[str, Any]) -> bool:
        """True when ``state_dict`` (normalized keys) looks like this family; used for auto-detection."""
        raise NotImplementedError

    def normalize_keys(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        """Map known alternative key spellings of this family onto the canonical ones."""
        return state_dict

    # -- exporting ------------------------------------------------------------------------------
    def graphs(self, config: Dict[str, Any]) -> List[GraphSpec]:
        """The graphs this family exports, with symbolic axes."""
        raise NotImplementedError

    def graph_module(self, model, graph: str):
        """A torch module whose forward takes the graph's inputs in order and returns its outputs
        (in the model's train/eval mode)."""
        raise NotImplementedError

    def dummy_inputs(self, config: Dict[str, Any], graph: str, axes: Mapping[str, int], seed: int = 0) -> Dict[str, Any]:
        """numpy inputs for ``graph`` with the symbolic axes set to ``axes`` (e.g. {"batch": 4})."""
        raise NotImplementedError


_REGISTRY: Dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Register ``family`` under its name; a duplicate name is an error."""
    if not family.name:
        raise ValueError("a model family needs a name")
    if family.name in _REGISTRY:
        raise ValueError("model family {!r} is already registered".format(family.name))
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    """The family registered as ``name``; an unknown name is a UsageError listing the known ones."""
    _ensure_builtin_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(
            "unknown model family {!r}; known families: {}".format(name, ", ".join(sorted(_REGISTRY)))
        ) from None


def families() -> List[ModelFamily]:
    """All registered families, sorted by name."""
    _ensure_builtin_families()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def detect_family(state_dict: Mapping[str, Any]) -> ModelFamily:
    """The one family whose ``matches`` accepts ``state_dict``; none or several is a CheckpointError."""
    found = [f for f in families() if f.matches(f.normalize_keys(dict(state_dict)))]
    if len(found) == 1:
        return found[0]
    sample = ", ".join(sorted(state_dict)[:6])
    if not found:
        raise CheckpointError(
            "cannot tell which model family this checkpoint is (first keys: {})".format(sample),
            hint="pass --family with one of: " + ", ".join(f.name for f in families()),
        )
    raise CheckpointError(
        "checkpoint matches several families: " + ", ".join(f.name for f in found),
        hint="pass --family",
    )


def _ensure_builtin_families() -> None:
    # Importing the family modules registers them; done lazily so `registry` stays import-cheap.
    import jetcap.models.captioner  # noqa: F401
    import jetcap.models.classifier  # noqa: F401


ConfigHint = Callable[[Mapping[str, Any]], Optional[Any]]
