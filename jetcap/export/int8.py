"""INT8 variant: explicit Q/DQ nodes that TensorRT consumes (explicit quantization).

``onnxruntime.quantization.quantize_static`` in QDQ format with **symmetric** int8 activations and
per-channel symmetric int8 weights (zero point 0, what TensorRT requires), opset 13 Q/DQ (per-channel
``axis``), only compute-heavy ops quantized (their inputs, not their outputs), biases float, and the
nodes a family marks as recurrent kept in float (TensorRT 8.2 has no INT8 LSTM).  The activation ranges are jetcap's own
(:func:`jetcap.export.calibration.calibrate`), handed to ``quantize_static`` as its calibration
cache, so the graph is the one the chosen calibration method computes, and one calibration serves
every graph the accuracy search (:mod:`jetcap.export.int8_search`) writes.

It is meant for TensorRT on Xavier/Orin.  jetcap runs it in ONNX Runtime with the Q/DQ pairs unfused
(each DequantizeLinear, then the float op: the rounding TensorRT's kernels reproduce), as a fidelity
check, not for speed; the CPU variant for speed is ``int8-cpu`` (:mod:`jetcap.export.int8_cpu`).
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from jetcap.export.calibration import ActivationRanges, FeedReader, calibrate
from jetcap.export.onnx_graph import ExportError, _check
from jetcap.export.options import CalibrationMethod
from jetcap.util.lazy import require

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")
# DedicatedQDQPair: a tensor read by several quantized ops gets one Q/DQ pair per reader; the float
# readers of a rounded tensor get the float value back from keep_float_paths.
# QuantizeBias False: biases stay float; ONNX Runtime's INT32 bias DequantizeLinear is refused by
# TensorRT's ONNX parser (it dequantizes INT8 only), found by `jetcap check`.
# OpTypesToExcludeOutputQuantization: only the *inputs* of weighted ops are quantized (TensorRT's Q/DQ
# placement advice), not their outputs: an output Q/DQ rounds a pre-activation tensor whose negative
# half the ReLU then drops, and, before a residual Add, puts int8 rounding into the residual stream of
# every block; the next weighted op quantizes that value at its own input anyway.
QDQ_EXTRA_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True,
                     "QuantizeBias": False, "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS)}


@dataclass
class Int8Plan:
    """Which nodes of a graph are INT8 candidates and which stay float by rule.

    Attributes:
        candidates: weight-bearing Conv/Gemm/MatMul nodes not matched by a keep-float pattern.
        forced_float: ``{node: reason}`` of the nodes a keep-float pattern (family / adapter) matched.
    """

    candidates: List[str]
    forced_float: Dict[str, str] = field(default_factory=dict)


def int8_plan(model, keep_float_patterns: Sequence[str] = ()) -> Int8Plan:
    """The :class:`Int8Plan` of an ONNX ``model`` under ``keep_float_patterns`` (substrings of node names)."""
    forced: Dict[str, str] = {}
    for node in model.graph.node:
        matched = [p for p in keep_float_patterns if p in node.name]
        if matched:
            forced[node.name] = "keep-float pattern {!r} (family / adapter)".format(matched[0])
    # Only weight-bearing ops: a MatMul of two activations (attention scores x values) quantized
    # symmetrically loses half the int8 range on the non-negative attention weights.
    weights = {t.name for t in model.graph.initializer}
    candidates = [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name not in forced
                  and (n.op_type != "MatMul" or any(i in weights for i in n.input))]
    return Int8Plan(candidates=candidates, forced_float=forced)


def keep_float_paths(model, weighted_ops: Sequence[str] = QUANTIZED_OPS) -> int:
    """Give the float value back to every reader of a fake-quantized activation that is not a quantized
    weighted op, and to the graph's outputs; returns how many inputs/outputs were changed.

    ONNX Runtime's quantizer reroutes *every* reader of a tensor with one quantized reader through its
    Q/DQ pair (and gives a graph output's name to the DequantizeLinear): a residual Add then sums
    int8-rounded values, a float-by-rule LSTM reads rounded state, and an encoder's ``features`` or
    ``h0`` output is itself rounded to 256 levels.  Only the weighted ops the plan quantizes should
    see the rounding (TensorRT fuses exactly that pair into its int8 kernel).
    """
    graph = model.graph
    weights = {t.name for t in graph.initializer}

    def maps():
        producers = {o: n for n in graph.node for o in n.output}
        consumers: Dict[str, List] = {}
        for n in graph.node:
            for i, name in enumerate(n.input):
                consumers.setdefault(name, []).append((n, i))
        return producers, consumers

    def activation_qdq(producers, consumers):
        """``[(source tensor, DequantizeLinear)]`` of every fake-quantized activation."""
        pairs = []
        for q in graph.node:
            if q.op_type == "QuantizeLinear" and q.input[0] not in weights:
                pairs.extend((q.input[0], dq) for dq, _ in consumers.get(q.output[0], [])
                             if dq.op_type == "DequantizeLinear")
        return pairs

    changed = 0
    outputs = {o.name for o in graph.output}
    producers, consumers = maps()
    for source, dq in activation_qdq(producers, consumers):
        value = dq.output[0]
        if value in outputs:  # the float tensor takes its output name back; the DQ gets a new one
            fresh = value + "_dequantized"
            for reader, i in consumers.get(value, []):
                reader.input[i] = fresh
            dq.output[0] = fresh
            for node in graph.node:
                node.output[:] = [value if o == source else o for o in node.output]
                node.input[:] = [value if i == source else i for i in node.input]
            changed += 1
            producers, consumers = maps()

    def quantized(node) -> bool:
        if node.op_type not in weighted_ops:
            return False
        return any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear"
                   and producers[i].input[0] in weights for i in node.input)

    for source, dq in activation_qdq(producers, consumers):
        for reader, i in consumers.get(dq.output[0], []):
            if not quantized(reader):
                reader.input[i] = source
                changed += 1
    while True:  # drop the Q/DQ pairs left without a reader
        _, consumers = maps()
        dead = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
                and not any(consumers.get(o) or o in outputs for o in n.output)]
        if not dead:
            return changed
        for node in dead:
            graph.node.remove(node)


def write_qdq(src: Path, dst: Path, ranges: ActivationRanges, quantize: Sequence[str],
              keep_float: Sequence[str], feeds: Sequence[Dict[str, np.ndarray]] = ()) -> None:
    """Write the Q/DQ graph of ``src`` to ``dst``: the nodes ``quantize`` in INT8 with the
    activation ``ranges``, the nodes ``keep_float`` in float.  Checked (``onnx.checker``, zero points 0).
    ``feeds``: a calibration feed, needed only by ONNX Runtime < 1.32 (no calibration cache there).

    Raises:
        ExportError when ONNX Runtime's quantizer fails or the result is not what TensorRT reads.
    """
    onnx = require("onnx")
    quant = require("onnxruntime.quantization")
    calibrate_mod = require("onnxruntime.quantization.calibrate")
    methods = {
        CalibrationMethod.MINMAX: quant.CalibrationMethod.MinMax,
        CalibrationMethod.ENTROPY: quant.CalibrationMethod.Entropy,
        CalibrationMethod.PERCENTILE: quant.CalibrationMethod.Percentile,
    }
    data = {name: calibrate_mod.TensorData(lowest=np.float32(-t), highest=np.float32(t))
            for name, t in ranges.thresholds.items()}
    tensors = calibrate_mod.TensorsData(methods[ranges.method], data)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs advice on the root logger
    try:
        with tempfile.TemporaryDirectory(prefix="jetcap-int8-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            kwargs = {}
            extra = dict(QDQ_EXTRA_OPTIONS)
            reader: Optional[FeedReader] = None
            method = methods[ranges.method]
            if "calibration_cache_path" in inspect.signature(quant.quantize_static).parameters:
                cache = Path(tmp) / "ranges.json"
                calibrate_mod.save_tensors_data(tensors, cache)
                kwargs["calibration_cache_path"] = str(cache)
            else:  # ONNX Runtime < 1.32: the same ranges as per-tensor overrides of a one-feed min/max pass
                if not feeds:
                    raise ExportError("INT8 with this ONNX Runtime needs a calibration feed")
                extra["TensorQuantOverrides"] = {n: [{"rmin": np.float32(-t), "rmax": np.float32(t)}]
                                                 for n, t in ranges.thresholds.items()}
                reader, method = FeedReader(feeds[:1]), quant.CalibrationMethod.MinMax
            quant.quantize_static(
                str(src), str(dst), reader, quant_format=quant.QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=list(quantize) or ["<none>"],
                per_channel=True, reduce_range=False,
                activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8,
                nodes_to_exclude=list(keep_float), calibrate_method=method,
                extra_options=extra, **kwargs)
    except ExportError:
        raise
    except Exception as exc:  # quantize_static raises assorted errors; all mean no INT8 variant
        raise ExportError("INT8 quantization of {} failed: {}".format(Path(src).name, exc))
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(dst))
    if keep_float_paths(quantized):
        onnx.save(quantized, str(dst))
    _check(onnx, quantized, Path(dst).name)
    zero_points = [t for t in quantized.graph.initializer if t.name.endswith("zero_point")]
    nonzero = [t.name for t in zero_points if any(onnx.numpy_helper.to_array(t).ravel() != 0)]
    if nonzero:
        raise ExportError("INT8 graph has non-zero zero points (TensorRT needs symmetric): {}".format(nonzero[:3]))


def quantize_int8(src: Path, dst: Path, reader: FeedReader, method: CalibrationMethod,
                  keep_float_patterns: Sequence[str] = (), ranges: Optional[ActivationRanges] = None,
                  float_nodes: Sequence[str] = ()) -> List[str]:
    """Write the Q/DQ INT8 version of ``src`` to ``dst`` calibrated on ``reader``; returns notes.

    Args:
        src, dst: FP32 input and INT8 output ONNX files.
        reader: calibration feeds (``get_next()`` protocol).
        method: minmax, entropy or percentile calibration.
        keep_float_patterns: substrings of node names to leave in float (recurrent parts).
        ranges: activation ranges already computed for ``src`` (default: calibrate ``reader`` by ``method``).
        float_nodes: further node names to leave in float (chosen by the accuracy search).
    """
    onnx = require("onnx")
    feeds = reader.feeds if hasattr(reader, "feeds") else list(iter(reader.get_next, None))
    if not feeds:
        raise ExportError("no calibration data for {}".format(Path(src).name))
    if ranges is None:
        ranges = calibrate(src, feeds, method, op_types=QUANTIZED_OPS)
    plan = int8_plan(onnx.load(str(src)), keep_float_patterns)
    keep = list(plan.forced_float) + [n for n in float_nodes if n not in plan.forced_float]
    write_qdq(src, dst, ranges, [n for n in plan.candidates if n not in keep], keep, feeds=feeds[:1])
    q_nodes = sum(1 for n in onnx.load(str(dst)).graph.node if n.op_type == "QuantizeLinear")
    return ["int8: Q/DQ symmetric per-channel, {} calibration over {} feeds, {} QuantizeLinear nodes, "
            "{} nodes kept float".format(ranges.method.value, ranges.feeds, q_nodes, len(keep))]
