"""INT8 calibration: the data protocol and the activation ranges each method computes.

Anything with ``get_next() -> {input_name: ndarray} | None`` is a calibration reader; the same readers
feed the Q/DQ calibration here and can feed a TensorRT calibrator on the device.

:func:`calibrate` computes one symmetric range (a threshold ``t``: the tensor is quantized over
``[-t, t]``) per activation that the Q/DQ graph quantizes, by the method asked for:

* ``minmax``: the largest ``|x|`` seen;
* ``entropy``: TensorRT's KL-divergence calibration: a histogram of ``|x|`` in 2048 bins, and the
  threshold (128..2048 bins) whose 128-level quantization loses the least information;
* ``percentile``: the 99.99th percentile of ``|x|`` (from the same histogram).

Why jetcap computes them instead of ONNX Runtime's calibrators: ``quantize_static`` cannot pass the
histogram size to its entropy calibrator, whose default (128 bins, 128 quantized bins) leaves exactly
one candidate threshold, the full range -- so "entropy" produced byte-identical graphs to minmax; and
its KL search is a Python loop (~0.4 s per tensor).  Here the statistics are streamed (two passes over
the feeds: the largest ``|x|``, then the histograms), so any number of feeds and feeds of different
shapes (several image sizes, sequence lengths) can be calibrated without keeping activations.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence

import numpy as np

from jetcap.export.options import CalibrationMethod
from jetcap.util.lazy import require

NUM_BINS = 2048            # TensorRT's entropy calibrator histogram
NUM_QUANTIZED_BINS = 128   # int8: 127 positive levels + zero
DEFAULT_PERCENTILE = 99.99
ENTROPY_STRIDE = 8        # KL search: every 8th threshold, then every one around the best


class FeedReader:
    """A calibration reader over an iterable of feeds ``{input_name: ndarray}``."""

    def __init__(self, feeds: Iterable[Dict[str, np.ndarray]]):
        self._feeds: List[Dict[str, np.ndarray]] = list(feeds)
        self._iter: Iterator[Dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    @property
    def feeds(self) -> List[Dict[str, np.ndarray]]:
        """Every feed, in order (the reader's position is not changed)."""
        return list(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


@dataclass
class ActivationRanges:
    """Symmetric calibration thresholds of one graph.

    Attributes:
        method: how they were computed.
        thresholds: ``{tensor: t}``; the tensor is quantized over ``[-t, t]``.
        absmax: ``{tensor: largest |x| seen}`` (the minmax threshold, for comparison).
        feeds: how many calibration feeds were run.
        params: the method's parameters (bins, percentile).
    """

    method: CalibrationMethod
    thresholds: Dict[str, float]
    absmax: Dict[str, float]
    feeds: int
    params: Dict[str, Any] = field(default_factory=dict)

    def summary(self) -> Dict[str, Any]:
        """What the manifest records: method, parameters, feeds, tensors, and how far the thresholds
        clip below the largest value seen (1.0: not at all)."""
        ratios = [self.thresholds[k] / self.absmax[k] for k in self.thresholds if self.absmax[k] > 0]
        return {"method": self.method.value, "params": dict(self.params), "feeds": self.feeds,
                "tensors": len(self.thresholds),
                "threshold_over_absmax": {"min": round(float(min(ratios)), 4) if ratios else None,
                                          "median": round(float(np.median(ratios)), 4) if ratios else None}}


def calibration_tensors(model, op_types: Sequence[str]) -> List[str]:
    """Float activations that are inputs of ``op_types`` nodes of a shape-inferred ``model`` (what the
    Q/DQ quantizer asks ranges for: it quantizes those ops' inputs, not their outputs; initializers
    excluded), in graph order."""
    onnx = require("onnx")
    infos = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.output, model.graph.input)}
    initializers = {t.name for t in model.graph.initializer}
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    out: List[str] = []
    for node in model.graph.node:
        if node.op_type not in op_types:
            continue
        for name in node.input:
            info = infos.get(name)
            if (name and name not in initializers and name not in out and info is not None
                    and info.type.tensor_type.elem_type in floats):
                out.append(name)
    return out


class ActivationProbe:
    """The FP32 graph with the given intermediate tensors made graph outputs, in ONNX Runtime.

    ``run(feed) -> {tensor: ndarray}`` for those tensors (and the graph's own outputs)."""

    def __init__(self, model_path: Path, tensors: Sequence[str]):
        onnx = require("onnx")
        ort = require("onnxruntime")
        model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
        infos = {vi.name: vi for vi in itertools.chain(model.graph.value_info, model.graph.input)}
        present = {o.name for o in model.graph.output}
        for name in tensors:
            if name not in present:
                model.graph.output.append(infos[name])
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.inputs = [i.name for i in self.session.get_inputs()]

    def run(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        values = self.session.run(None, {k: feed[k] for k in self.inputs})
        return dict(zip(self.names, values))


def calibrate(model_path: Path, feeds: Sequence[Dict[str, np.ndarray]], method: CalibrationMethod,
              op_types: Sequence[str] = ("Conv", "Gemm", "MatMul"), percentile: float = DEFAULT_PERCENTILE,
              num_bins: int = NUM_BINS, num_quantized_bins: int = NUM_QUANTIZED_BINS) -> ActivationRanges:
    """Symmetric activation ranges of the FP32 graph ``model_path`` over ``feeds`` by ``method``.

    Args:
        model_path: the FP32 ONNX graph.
        feeds: calibration inputs ``{input_name: ndarray}`` (any shapes the graph accepts).
        method: minmax, entropy or percentile (see the module docstring).
        op_types: the quantized op types (their float inputs/outputs get ranges).
        percentile: percentile of ``|x|`` for ``percentile`` (default 99.99).
        num_bins, num_quantized_bins: histogram size and int8 levels for ``entropy`` / ``percentile``.
    """
    onnx = require("onnx")
    method = CalibrationMethod(method)
    feeds = list(feeds)
    if not feeds:
        raise ValueError("no calibration feeds")
    tensors = calibration_tensors(onnx.shape_inference.infer_shapes(onnx.load(str(model_path))), op_types)
    probe = ActivationProbe(model_path, tensors)
    absmax = {t: 0.0 for t in tensors}
    for feed in feeds:
        values = probe.run(feed)
        for t in tensors:
            value = values[t]
            if value.size:
                absmax[t] = max(absmax[t], float(np.max(np.abs(value))))
    params: Dict[str, Any] = {}
    if method is CalibrationMethod.MINMAX:
        thresholds = dict(absmax)
    else:
        hists = {t: np.zeros(num_bins, dtype=np.int64) for t in tensors}
        for feed in feeds:
            values = probe.run(feed)
            for t in tensors:
                if absmax[t] > 0:
                    hists[t] += np.histogram(np.abs(values[t]), bins=num_bins, range=(0.0, absmax[t]))[0]
        thresholds = {}
        for t in tensors:
            if absmax[t] <= 0:
                thresholds[t] = 0.0
            elif method is CalibrationMethod.ENTROPY:
                thresholds[t] = entropy_threshold(hists[t], absmax[t], num_quantized_bins)
            else:
                thresholds[t] = percentile_threshold(hists[t], absmax[t], percentile)
        params = {"bins": num_bins}
        if method is CalibrationMethod.ENTROPY:
            params["quantized_bins"] = num_quantized_bins
        else:
            params["percentile"] = percentile
    return ActivationRanges(method=method, thresholds=thresholds, absmax=absmax, feeds=len(feeds), params=params)


def percentile_threshold(hist: np.ndarray, absmax: float, percentile: float) -> float:
    """The upper edge of the bin where the cumulative count of ``hist`` (``|x|`` over
    ``[0, absmax]``) reaches ``percentile`` %."""
    counts = np.cumsum(hist, dtype=np.float64)
    if counts[-1] <= 0:
        return float(absmax)
    index = int(np.searchsorted(counts, counts[-1] * percentile / 100.0))
    return float(absmax) * min(index + 1, len(hist)) / len(hist)


def entropy_threshold(hist: np.ndarray, absmax: float, num_quantized_bins: int = NUM_QUANTIZED_BINS) -> float:
    """TensorRT's entropy calibration: the threshold ``i`` bins (``num_quantized_bins <= i <=
    len(hist)``) minimising KL(P || Q), where P is ``hist[:i]`` with the outliers added to its last
    bin and Q is ``hist[:i]`` quantized to ``num_quantized_bins`` levels and expanded back over the
    bins P has non-zero (the GTC 2017 "8-bit inference with TensorRT" algorithm)."""
    hist = np.asarray(hist, dtype=np.float64)
    bins = len(hist)
    if bins <= num_quantized_bins or hist.sum() <= 0:
        return float(absmax)
    suffix = np.cumsum(hist[::-1])[::-1]  # suffix[i] = sum(hist[i:])

    def divergence(i: int) -> float:
        p = hist[:i].copy()
        if i < bins:
            p[-1] += suffix[i]
        total = p.sum()
        if total <= 0:
            return np.inf
        nonzero = p > 0
        starts = (np.arange(num_quantized_bins) * i) // num_quantized_bins
        sums = np.add.reduceat(hist[:i], starts)
        counts = np.add.reduceat(nonzero.astype(np.float64), starts)
        sizes = np.diff(np.append(starts, i))
        level = np.repeat(np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0), sizes)
        return _kl_divergence(p / total, np.where(nonzero, level, 0.0))

    # coarse to fine: every ENTROPY_STRIDE-th candidate, then every candidate around the best one
    coarse = list(range(num_quantized_bins, bins + 1, ENTROPY_STRIDE)) + [bins]
    best = min(coarse, key=divergence)
    fine = range(max(num_quantized_bins, best - ENTROPY_STRIDE + 1), min(bins, best + ENTROPY_STRIDE - 1) + 1)
    best = min(list(fine) + [best], key=lambda i: (divergence(i), i))
    return float(absmax) * min(1.0, (best + 0.5) / bins) if best < bins else float(absmax)


def _kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    """KL(p || q) over p's support; q's empty bins there get ``eps`` of mass (smoothing)."""
    q_total = q.sum()
    if q_total <= 0:
        return np.inf
    q = q / q_total
    support = p > 0
    q_support = np.where(q[support] > 0, q[support], eps)
    return float(np.sum(p[support] * np.log(p[support] / q_support)))
