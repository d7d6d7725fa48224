"""INT8 variant: explicit Q/DQ nodes that TensorRT consumes (explicit quantization).

``onnxruntime.quantization.quantize_static`` in QDQ format with **symmetric** int8 activations and
per-channel symmetric int8 weights (zero point 0, what TensorRT requires), opset 13 Q/DQ (per-channel
``axis``), only compute-heavy ops quantized, and the nodes a family marks as recurrent kept in float
(TensorRT 8.2 has no INT8 LSTM).  Note: ONNX Runtime on x86 runs this symmetric s8s8 form *slower*
than FP32; it is meant for TensorRT on Xavier/Orin, and its CPU run here is a fidelity check.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import List, Sequence

from jetcap.export.calibration import FeedReader
from jetcap.export.onnx_graph import ExportError, _check
from jetcap.export.options import CalibrationMethod
from jetcap.util.lazy import require

QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")


def quantize_int8(src: Path, dst: Path, reader: FeedReader, method: CalibrationMethod,
                  keep_float_patterns: Sequence[str] = ()) -> List[str]:
    """Write the Q/DQ INT8 version of ``src`` to ``dst`` calibrated on ``reader``; returns notes.

    Args:
        src, dst: FP32 input and INT8 output ONNX files.
        reader: calibration feeds (``get_next()`` protocol).
        method: minmax, entropy or percentile calibration.
        keep_float_patterns: substrings of node names to leave in float (recurrent parts).
    """
    onnx = require("onnx")
    quant = require("onnxruntime.quantization")
    model = onnx.load(str(src))
    exclude = [n.name for n in model.graph.node if any(p in n.name for p in keep_float_patterns)]
    # Only weight-bearing ops: a MatMul of two activations (attention scores x values) quantized
    # symmetrically loses half the int8 range on the non-negative attention weights.
    weights = {t.name for t in model.graph.initializer}
    targets = [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and n.name not in exclude
               and (n.op_type != "MatMul" or any(i in weights for i in n.input))]
    methods = {
        CalibrationMethod.MINMAX: quant.CalibrationMethod.MinMax,
        CalibrationMethod.ENTROPY: quant.CalibrationMethod.Entropy,
        CalibrationMethod.PERCENTILE: quant.CalibrationMethod.Percentile,
    }
    if len(reader) == 0:
        raise ExportError("no calibration data for {}".format(Path(src).name))
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_static logs advice on the root logger
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quant.quantize_static(
                str(src), str(dst), reader, quant_format=quant.QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=targets, per_channel=True,
                reduce_range=False,
                activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8,
                nodes_to_exclude=exclude, calibrate_method=methods[method],
                # DedicatedQDQPair: a tensor shared by a quantized and a float consumer (the decoder
                # state h feeds decoder_att *and* the LSTMCell) keeps a float path to the float one
                # QuantizeBias False: biases stay float; ONNX Runtime's INT32 bias DequantizeLinear is refused by
                # TensorRT's ONNX parser (it dequantizes INT8 only), found by `jetcap check`
                extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "DedicatedQDQPair": True,
                               "CalibMovingAverage": False, "CalibPercentile": 99.99, "QuantizeBias": False})
    except Exception as exc:  # quantize_static raises assorted errors; all mean no INT8 variant
        raise ExportError("INT8 quantization of {} failed: {}".format(Path(src).name, exc))
    finally:
        root.setLevel(level)
    quantized = onnx.load(str(dst))
    _check(onnx, quantized, Path(dst).name)
    zero_points = [t for t in quantized.graph.initializer if t.name.endswith("zero_point")]
    nonzero = [t.name for t in zero_points if any(onnx.numpy_helper.to_array(t).ravel() != 0)]
    if nonzero:
        raise ExportError("INT8 graph has non-zero zero points (TensorRT needs symmetric): {}".format(nonzero[:3]))
    q_nodes = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
    return ["int8: Q/DQ symmetric per-channel, {} calibration over {} feeds, {} QuantizeLinear nodes, "
            "{} nodes kept float".format(method.value, len(reader), q_nodes, len(exclude))]
