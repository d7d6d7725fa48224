"""FP16 variant: FP16 weights, FP32 graph inputs/outputs, numerically fragile ops kept in FP32.

Uses onnxruntime's maintained ``float16`` converter.  Out of the box its output fails
``onnx.checker`` on an attention-LSTM step graph because the Cast nodes it inserts are appended out of
topological order; we sort the graph, then check it (see FACTS.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import List

from jetcap.export.onnx_graph import ExportError, _check
from jetcap.export.rewrites import in_weighted_sum, is_weighted_sum
from jetcap.util.lazy import require

# Ops whose FP16 evaluation loses too much: exponentials/normalizations and reductions over pixels/time.
FP32_OPS = ("Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt", "Exp", "Log", "Div",
            "LayerNormalization", "Range", "CumSum", "TopK")


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            missing = sorted({n for node in rest for n in node.input if n not in available})
            raise ExportError("graph has a cycle or dangling inputs: {}".format(", ".join(missing[:5])))
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def convert_fp16(src: Path, dst: Path, keep_ops: tuple = FP32_OPS) -> List[str]:
    """Write the FP16 version of ``src`` to ``dst``; returns notes (which op types stayed FP32).  An
    attention-weighted sum that export wrote as a MatMul (:mod:`jetcap.export.rewrites`) runs in FP32 like
    the ReduceSum it replaced, the reshaping of its weights too; the values it reads are the FP16 graph's,
    cast back (as the Mul before it read them), and its products and their sum are FP32."""
    onnx = require("onnx")
    float16 = require("onnxruntime.transformers.float16")
    model = onnx.load(str(src))
    has_sum = any(is_weighted_sum(n) for n in model.graph.node)
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(keep_ops) + list(float16.DEFAULT_OP_BLOCK_LIST),
        node_block_list=[n.name for n in model.graph.node if in_weighted_sum(n)])
    topological_sort(converted.graph)
    _check(onnx, converted, Path(dst).name)
    onnx.save(converted, str(dst))
    kept = sorted({n.op_type for n in converted.graph.node if n.op_type in keep_ops})
    if has_sum:
        kept.append("the attention-weighted sum (MatMul)")
    return ["fp16: weights FP16, I/O FP32, kept FP32: {}".format(", ".join(kept) or "none")]
