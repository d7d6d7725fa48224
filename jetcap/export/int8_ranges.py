"""The INT8 search's range step: narrow the activation range of the layers that do the most harm.

A calibration method gives every activation the same rule; on a real trunk one rule does not fit all.
On the ResNet-101 Show-Attend-Tell captioner (docs/VALIDATION.md), quantizing the first convolution of
``layer1`` *alone*, with its minmax range, used 2.2x the whole encoder's INT8 tolerance: the stem's
output has rare large values, so the largest ``|x|`` leaves a step of rounding too coarse for the
bulk of the values.  Before any layer is kept float, the search therefore tries, for the input of each
of the most harmful layers (quantized alone, at least ``REFINE_MIN_SHARE`` of the target, at most
``REFINE_LAYERS`` of them), the narrower thresholds other methods compute from the same calibration
data -- the 99.999th, 99.99th and 99.9th percentiles of ``|x|`` and TensorRT's entropy threshold -- and
keeps the one that gives that layer the smallest error, when it is clearly smaller (``REFINE_GAIN``).
Each choice is measured, not assumed, and recorded (tensor, threshold, which rule, error before/after).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence

import numpy as np

from jetcap.export.calibration import NUM_BINS, ActivationProbe, entropy_threshold, percentile_threshold
from jetcap.util.lazy import require

REFINE_LAYERS = 16
REFINE_MIN_SHARE = 0.25
REFINE_GAIN = 0.8          # a narrower range is kept when it brings the layer's error below 0.8x
PERCENTILES = (99.999, 99.99, 99.9)


def layer_inputs(model_path, nodes: Sequence[str], thresholds: Dict[str, float]) -> Dict[str, List[str]]:
    """``{node: its activation inputs that have a calibration range}``."""
    onnx = require("onnx")
    by_name = {n.name: n for n in onnx.load(str(model_path)).graph.node}
    return {node: [i for i in by_name[node].input if i in thresholds] for node in nodes}


def candidate_thresholds(model_path, tensors: Sequence[str], feeds: Sequence[Dict[str, np.ndarray]],
                         absmax: Dict[str, float]) -> Dict[str, Dict[str, float]]:
    """``{tensor: {rule: threshold}}`` from one pass of ``feeds`` (a 2048-bin ``|x|`` histogram over
    ``[0, absmax]``): the percentiles of :data:`PERCENTILES` and TensorRT's entropy threshold."""
    tensors = [t for t in tensors if absmax.get(t, 0.0) > 0]
    if not tensors:
        return {}
    probe = ActivationProbe(model_path, tensors)
    hists = {t: np.zeros(NUM_BINS, dtype=np.int64) for t in tensors}
    for feed in feeds:
        values = probe.run(feed)
        for t in tensors:
            hists[t] += np.histogram(np.abs(values[t]), bins=NUM_BINS, range=(0.0, absmax[t]))[0]
    out = {}
    for t in tensors:
        rules = {"percentile {:g}".format(p): percentile_threshold(hists[t], absmax[t], p) for p in PERCENTILES}
        rules["entropy"] = entropy_threshold(hists[t], absmax[t])
        out[t] = rules
    return out


def refine_ranges(q, target: float, log: Callable[[str], None] = lambda message: None) -> List[Dict[str, Any]]:
    """Narrow the input ranges of ``q``'s most harmful layers (see the module docstring); updates
    ``q.overrides`` and ``q.alone`` and returns the record of each range changed."""
    from jetcap.export.int8_search import HARM, _r

    ranking = q.ranking(HARM)
    chosen = [n for n in ranking if q.alone[n]["error"] >= REFINE_MIN_SHARE * target][:REFINE_LAYERS]
    if not chosen:
        return []
    thresholds = q.thresholds()
    inputs = layer_inputs(q.fp32_path, chosen, thresholds)
    tensors = sorted({t for node in chosen for t in inputs[node]})
    options = candidate_thresholds(q.fp32_path, tensors, q.calibration_feeds, q.ranges.absmax)
    changes: List[Dict[str, Any]] = []
    for node in chosen:
        others = [n for n in q.plan.candidates if n != node]
        before = q.alone[node]
        best = (before["error"], None, None, before)
        for tensor in inputs[node]:
            current = q.thresholds()[tensor]
            for rule, threshold in sorted(options.get(tensor, {}).items()):
                if not threshold < 0.999 * current:
                    continue
                result = q.error(others, overrides={tensor: threshold})
                if result["error"] < best[0]:
                    best = (result["error"], tensor, (rule, threshold), result)
        error, tensor, choice, result = best
        if tensor is None or error > REFINE_GAIN * before["error"]:
            continue
        rule, threshold = choice
        changes.append({"node": node, "tensor": tensor, "rule": rule, "threshold": _r(threshold),
                        "previous_threshold": _r(q.thresholds()[tensor]), "absmax": _r(q.ranges.absmax[tensor]),
                        "error_alone_before": _r(before["error"]), "error_alone_after": _r(error)})
        q.overrides[tensor] = float(threshold)
        q.alone[node] = result
        log("int8 search {}: {} input range {:.4g} -> {:.4g} ({}): alone {:.3g} -> {:.3g} of the tolerance".format(
            q.name, node, changes[-1]["previous_threshold"], threshold, rule, before["error"], error))
    return changes
