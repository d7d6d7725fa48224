"""Inputs spanning the dynamic ranges, and the PyTorch-vs-ONNX-Runtime check of one variant."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from jetcap.errors import UsageError
from jetcap.models.registry import GraphSpec, Tolerance
from jetcap.util.lazy import require


def case_name(kind: str, case: Dict[str, int]) -> str:
    """``random_batch1_T64``-style name of a sweep case."""
    return "_".join([kind] + ["{}{}".format(k, v) for k, v in sorted(case.items())])


def real_batch(pool: Dict[str, np.ndarray], spec: GraphSpec, case: Dict[str, int]) -> Dict[str, np.ndarray]:
    """A feed for ``case`` cut from real inputs: rows cycled to the batch size, other symbolic axes
    cropped or tiled to their size."""
    feed = {}
    for tensor in spec.inputs:
        array = pool[tensor.name]
        axis = list(tensor.shape).index("batch") if "batch" in tensor.shape else 0
        rows = np.resize(np.arange(array.shape[axis]), case["batch"])
        array = np.take(array, rows, axis=axis)
        for axis, name in tensor.dynamic_axes.items():
            if name == "batch":
                continue
            size = case[name]
            reps = -(-size // array.shape[axis])
            array = np.concatenate([array] * reps, axis=axis) if reps > 1 else array
            array = np.take(array, np.arange(size), axis=axis)
        feed[tensor.name] = np.ascontiguousarray(array)
    return feed


def torch_outputs(module, spec: GraphSpec, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Run the PyTorch graph module on a numpy feed."""
    torch = require("torch")
    try:
        with torch.no_grad():
            outs = module(*[torch.from_numpy(feed[n]) for n in spec.input_names])
    except Exception as exc:  # the user's forward, at a shape of the exported range: one line, not a traceback
        shapes = ", ".join("{} {}".format(n, tuple(feed[n].shape)) for n in spec.input_names)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UsageError("the model's forward fails on {}: {}: {}".format(shapes, type(exc).__name__, first),
                         hint="a shape beyond what the model runs: export the range it does (--max-len, "
                              "--max-batch, --image-size)") from None
    if not isinstance(outs, (tuple, list)):
        outs = (outs,)
    return {n: o.numpy() for n, o in zip(spec.output_names, outs)}


def compare_outputs(actual: Dict[str, np.ndarray], reference: Dict[str, np.ndarray], tol: Tolerance,
                    gate: bool = True) -> List[Dict[str, Any]]:
    """Per-output comparison records; with ``gate`` False only NaN/Inf and shapes can fail."""
    from jetcap.validate.metrics import compare_arrays, compare_with

    records = []
    for name, ref in reference.items():
        if gate:
            result = compare_with(actual[name], ref, tol)
        else:
            result = compare_arrays(actual[name], ref, atol=float("inf"), rtol=0.0, min_cosine=-1.0)
        records.append({"output": name, "passed": bool(result), "max_abs": _f(result.max_abs),
                        "mean_abs": _f(result.mean_abs), "max_rel": _f(result.max_rel),
                        "cosine": _f(result.cosine), "reason": result.reason if not result else ""})
    return records


def _f(value) -> float:
    return float(value) if value is not None else float("nan")
