"""CPU INT8 variant (``int8-cpu``): dynamic weight quantisation, the form ONNX Runtime runs fast on CPUs.

``onnxruntime.quantization.quantize_dynamic`` stores the weights of every weight-bearing ``MatMul`` /
``Gemm`` / ``LSTM`` as int8 (per tensor, symmetric; an ONNX ``LSTM`` becomes ``DynamicQuantizeLSTM``) and quantises their activations to uint8 on each call
(``DynamicQuantizeLinear`` + ``MatMulInteger``, fused by ONNX Runtime into ``DynamicQuantizeMatMul``): the
u8s8 path of its x86 (VNNI / AVX2) and ARM (NEON dot-product) kernels.  For the captioner's batch-1 decoder
step that includes the LSTMCell's gate GEMMs and the vocabulary-sized output layer, whose weight bytes bound
the step (it is memory-bound: the int8 weights are a quarter of the bytes).  No calibration: activation
ranges are taken per call, so random and real inputs are gated alike.

Kept float, with the reason recorded in the manifest:

* ``Conv``: ONNX Runtime's ``ConvInteger`` has no fast CPU kernel (measured on the COCO-sized MobileNetV2
  encoder, 2 threads: 94 ms vs 9 ms FP32, features cosine 0.77); the encoder's convolutions stay FP32.
* MatMuls with no weight (both operands computed, e.g. attention weights x features): nothing to store
  smaller, and dynamic quantisation of both operands only adds error.

Not a TensorRT form (``jetcap build`` refuses it, ``jetcap check`` skips it): TensorRT wants explicit
symmetric Q/DQ, which is the ``int8`` variant.
"""
from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

from jetcap.export.onnx_graph import ExportError, _check
from jetcap.util.cpu import int8_isa
from jetcap.util.lazy import require

PRECISION = "int8-cpu"
SUFFIX = ".int8-cpu"
QUANTIZED_OPS = ("MatMul", "Gemm", "LSTM")
# Per tensor: measured on the COCO-sized decoder step (2 threads, batch 1) 0.24 ms vs 0.30 ms per channel
# (FP32 1.24 ms), with the same captions (docs/BENCHMARKS.md "CPU INT8 variant").
PER_CHANNEL = False
# the nodes quantize_dynamic writes for one quantised layer
INTEGER_OPS = ("MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM")
# 8-bit weights: this form is for CPUs with a u8s8 dot product (x86 VNNI, ARMv8.2 dot product). On x86
# without VNNI (AVX2 only) ONNX Runtime advises reduce_range (7-bit weights) against u8s8 saturation.
REDUCE_RANGE = False


def weight_bearing(model, op_types: Sequence[str] = QUANTIZED_OPS) -> Tuple[List[str], Dict[str, str]]:
    """``(quantized, kept_float)``: names of the ``op_types`` nodes of ``model`` whose second input is a
    weight (an initializer), and ``{node: reason}`` of the ones left float (no weight, or an op type that
    stays float, see the module docstring)."""
    initializers = {t.name for t in model.graph.initializer}
    constants = {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    quantized: List[str] = []
    kept: Dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            kept[node.name] = "Conv: ONNX Runtime's ConvInteger is slower than FP32 on CPUs"
        elif node.op_type in op_types:
            # LSTM: W and R (inputs 1, 2) become int8 (com.microsoft DynamicQuantizeLSTM)
            weights = node.input[1:3] if node.op_type == "LSTM" else node.input[1:2]
            if weights and all(w in initializers or w in constants for w in weights):
                quantized.append(node.name)
            else:
                kept[node.name] = "{}: no weight operand (both inputs computed)".format(node.op_type)
    return quantized, kept


def write_dynamic(src: Path, dst: Path) -> Dict[str, Any]:
    """Write the dynamically quantised version of ``src`` to ``dst``; returns the graph's record
    (``quantized``/``kept_float`` nodes, weight bytes before/after)."""
    onnx = require("onnx")
    quant = require("onnxruntime.quantization")
    model = onnx.load(str(src))
    quantized, kept = weight_bearing(model)
    if quantized:
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs pre-processing advice on the root logger
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                quant.quantize_dynamic(str(src), str(dst), weight_type=quant.QuantType.QInt8,
                                       per_channel=PER_CHANNEL, reduce_range=REDUCE_RANGE,
                                       op_types_to_quantize=list(QUANTIZED_OPS),
                                       nodes_to_exclude=[n for n in kept if n not in quantized],
                                       extra_options={"MatMulConstBOnly": True})
        except Exception as exc:  # quantize_dynamic raises assorted errors; all mean no int8-cpu variant
            raise ExportError("dynamic INT8 quantisation of {} failed: {}".format(
                Path(src).name, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))
        finally:
            root.setLevel(level)
        out = onnx.load(str(dst))
        # (quantize_dynamic turns a Gemm into MatMul + Add under a new name first, so nodes_to_quantize
        # cannot name them; count what it wrote instead)
        written = sum(1 for n in out.graph.node if n.op_type in INTEGER_OPS)
        if written != len(quantized):
            raise ExportError("dynamic INT8 quantisation of {} quantised {} layer(s), expected {} ({})".format(
                Path(src).name, written, len(quantized), ", ".join(quantized)))
    else:  # nothing to quantise (e.g. a graph of convolutions only): the FP32 graph is the variant
        out = model
        onnx.save(out, str(dst))
    _check(onnx, out, Path(dst).name)
    return {"quantized": quantized, "kept_float": kept,
            "weight_bytes": {"fp32": _initializer_bytes(model), "int8-cpu": _initializer_bytes(out)}}


def int8_cpu_variant(fp32_files: Dict[str, Path], graph_names: Sequence[str], out_dir: Path,
                     log: Callable[[str], None] = lambda message: None) -> Tuple[Dict[str, Path], Dict[str, Any]]:
    """The ``int8-cpu`` files of every graph (``<graph>.int8-cpu.onnx`` in ``out_dir``) and the manifest's
    record of the variant (``target`` "cpu", ``backend`` "onnxruntime", ``quantization`` per graph).

    Returns:
        ``(files, details)``: ``{graph: path}`` and the variant entry without its ``files``.
    """
    files: Dict[str, Path] = {}
    graphs: Dict[str, Any] = {}
    notes: List[str] = []
    for name in graph_names:
        dst = Path(out_dir) / "{}{}.onnx".format(name, SUFFIX)
        record = write_dynamic(fp32_files[name], dst)
        files[name] = dst
        graphs[name] = record
        before, after = record["weight_bytes"]["fp32"], record["weight_bytes"]["int8-cpu"]
        notes.append("int8-cpu {}: {} MatMul/Gemm/LSTM weight(s) int8, {} node(s) float; weights {:.1f} -> {:.1f} MB".format(
            name, len(record["quantized"]), len(record["kept_float"]), before / 1e6, after / 1e6))
        log(notes[-1])
    details = {
        "target": "cpu", "backend": "onnxruntime",
        # ONNX Runtime's int8 CPU kernels, and so this variant's results, depend on the instruction set
        "checked_on": int8_isa(),
        "notes": notes + ["CPU variant: ONNX Runtime dynamic quantisation, not a TensorRT form"],
        "calibration": {"method": "none", "data": None,
                        "note": "dynamic: activation ranges are computed on every call"},
        "quantization": {"format": "QOperator (dynamic)", "tool": "onnxruntime.quantization.quantize_dynamic",
                         "activations": "uint8 asymmetric, per call", "weights": "int8 symmetric per-{}".format(
                             "channel" if PER_CHANNEL else "tensor"),
                         "reduce_range": REDUCE_RANGE, "ops": list(QUANTIZED_OPS), "graphs": graphs},
    }
    return files, details


def _initializer_bytes(model) -> int:
    numpy_helper = require("onnx.numpy_helper")
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))
