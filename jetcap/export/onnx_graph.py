"""torch module -> ONNX file, with either exporter, and the graph hygiene every bundle graph gets."""
from __future__ import annotations

import io
import contextlib
import warnings
from pathlib import Path
from typing import Dict, List

import numpy as np

from jetcap.errors import JetcapError
from jetcap.export.options import Exporter
from jetcap.export.rewrites import weighted_sums_as_matmul
from jetcap.models.registry import GraphSpec
from jetcap.util.fdcapture import silenced_output
from jetcap.util.lazy import require


class ExportError(JetcapError):
    """torch.onnx could not export a graph, or the result is not a valid ONNX model."""


def export_graph(module, spec: GraphSpec, example: Dict[str, np.ndarray], path: Path, opset: int,
                 exporter: Exporter, axis_ranges: Dict[str, Dict[str, int]]) -> None:
    """Export ``module`` (eval mode) for ``spec`` to ``path``.

    Args:
        module: forward takes the graph inputs in ``spec`` order.
        spec: names and symbolic axes (the dynamic-axes specification).
        example: example inputs (batch >= 2 for the dynamo exporter, which freezes a batch of 1).
        path: output file.
        opset: target opset.
        exporter: which torch.onnx exporter.
        axis_ranges: ``{axis: {min, max}}`` for the dynamo exporter's dynamic shapes.
    """
    torch = require("torch")
    if exporter is Exporter.DYNAMO:
        require("onnxscript")  # the dynamo exporter's dependency: a clear install hint instead of a failure
    args = tuple(torch.from_numpy(example[name]) for name in spec.input_names)
    try:
        with warnings.catch_warnings(), silenced_output():
            warnings.simplefilter("ignore")
            if exporter is Exporter.TORCHSCRIPT:
                torch.onnx.export(module, args, str(path), input_names=spec.input_names,
                                  output_names=spec.output_names, opset_version=opset, dynamo=False,
                                  do_constant_folding=True,
                                  dynamic_axes={t.name: t.dynamic_axes for t in spec.inputs + spec.outputs})
            else:
                dims = {}
                for axis, rng in axis_ranges.items():
                    dims[axis] = torch.export.Dim(axis, min=max(rng["min"], 1), max=rng["max"])
                shapes = _dynamic_shapes(module, [{i: dims[a] for i, a in t.dynamic_axes.items()} or None
                                                  for t in spec.inputs])
                program = torch.onnx.export(module, args, input_names=spec.input_names,
                                            output_names=spec.output_names, opset_version=opset, dynamo=True,
                                            dynamic_shapes=shapes, external_data=False, verbose=False)
                program.save(str(path))
    except Exception as exc:  # torch.onnx raises many types; any of them means "this graph did not export"
        raise ExportError("exporting graph {!r} with the {} exporter failed: {}".format(
            spec.name, exporter.value, str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__))


def _dynamic_shapes(module, per_input):
    """torch.export's ``dynamic_shapes`` in positional form, following ``module.forward``'s signature: a
    ``*inputs`` parameter (graph wrappers such as the step's top-k) takes the remaining inputs as a tuple."""
    import inspect

    shapes, index = [], 0
    for param in inspect.signature(module.forward).parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            shapes.append(tuple(per_input[index:]))
            index = len(per_input)
            break
        if index < len(per_input):
            shapes.append(per_input[index])
            index += 1
    return tuple(shapes)


def tidy_graph(path: Path, spec: GraphSpec, simplify: bool = True) -> List[str]:
    """Full ``onnx.checker`` check, shape inference, optional simplification (onnxslim, then the exact
    rewrites of :mod:`jetcap.export.rewrites`), I/O names kept.

    Returns notes of what was done (node counts before/after simplification).
    """
    onnx = require("onnx")
    notes = []
    model = onnx.load(str(path))
    _check(onnx, model, spec.name)
    before = len(model.graph.node)
    if simplify:
        onnxslim = require("onnxslim")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            slim = onnxslim.slim(model)
        if slim is None:
            raise ExportError("onnxslim returned nothing for graph {!r}".format(spec.name))
        model = slim
        notes.append("{}: onnxslim {} -> {} nodes".format(spec.name, before, len(model.graph.node)))
        rewritten = weighted_sums_as_matmul(model)
        if rewritten:
            notes.append("{}: {} attention-weighted sum(s) (Mul + ReduceSum) as MatMul".format(spec.name, rewritten))
    model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    if names_in != spec.input_names or names_out != spec.output_names:
        raise ExportError("graph {!r} I/O names changed: {} -> {} (expected {} -> {})".format(
            spec.name, names_in, names_out, spec.input_names, spec.output_names))
    model.doc_string = ""
    model.producer_name = "jetcap"
    _check(onnx, model, spec.name)
    onnx.save(model, str(path))
    return notes


def _check(onnx, model, name: str) -> None:
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises ValidationError and others; all mean the graph is invalid
        raise ExportError("graph {!r} fails onnx.checker: {}".format(name, str(exc).strip().splitlines()[0]))


def graph_io(path: Path) -> Dict[str, List[Dict[str, object]]]:
    """The manifest ``{inputs, outputs}`` description of an ONNX file, dims as ints or axis names."""
    onnx = require("onnx")
    model = onnx.load(str(path), load_external_data=False)

    def describe(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor.shape.dim]
            out.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                        "shape": dims})
        return out

    return {"inputs": describe(model.graph.input), "outputs": describe(model.graph.output)}
