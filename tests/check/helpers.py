"""Small real ONNX graphs built with onnx.helper, written as one-graph jetcap bundles."""
import hashlib
import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def tensor(name, elem_type, shape):
    """A value info; ``shape`` may be an int (the rank, with symbolic dims left to shape inference)."""
    if isinstance(shape, int):
        shape = ["{}_d{}".format(name, i) for i in range(shape)]
    return helper.make_tensor_value_info(name, elem_type, shape)


def init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes, inputs, outputs, initializers=(), opset=13):
    """A checked ModelProto of ``nodes`` at ai.onnx ``opset``."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = min(proto.ir_version, 8)
    onnx.checker.check_model(proto)
    return proto


def write_bundle(root, proto, axes=None, precision="fp32", graph="model", manifest_inputs=None):
    """Write ``proto`` as the only graph of a bundle in ``root``; returns ``root``.

    Args:
        axes: the manifest's ``axes`` (default: batch 1..4).
        manifest_inputs: the manifest's graph inputs (default: taken from the ONNX inputs, dim_params as axes).
    """
    root.mkdir(parents=True, exist_ok=True)
    name = "{}.onnx".format(graph)
    data = proto.SerializeToString()
    (root / name).write_bytes(data)
    axes = axes if axes is not None else {"batch": {"min": 1, "opt": 1, "max": 4}}
    if manifest_inputs is None:
        manifest_inputs = [_declared(value, axes) for value in proto.graph.input]
    manifest = {
        "format": "jetcap-bundle", "format_version": 1, "family": "classifier", "config": {},
        "graphs": {graph: {"inputs": manifest_inputs, "outputs": [_declared(v, axes) for v in proto.graph.output]}},
        "axes": axes,
        "variants": {precision: {"files": {graph: {"path": name, "sha256": hashlib.sha256(data).hexdigest(),
                                                    "bytes": len(data)}}}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


DTYPES = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.BOOL: "bool",
          TensorProto.INT64: "int64", TensorProto.INT32: "int32", TensorProto.FLOAT16: "float16"}


def _declared(value, axes):
    """The manifest entry of an ONNX input/output: dims the manifest knows (sizes, axes of ``axes``) only."""
    dims = []
    for dim in value.type.tensor_type.shape.dim:
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        elif dim.HasField("dim_param") and dim.dim_param in axes:
            dims.append(dim.dim_param)
        else:
            dims.append(0)
    return {"name": value.name, "dtype": DTYPES.get(value.type.tensor_type.elem_type, "float32"), "shape": dims}


def rules_of(report, severity=None):
    return [f.rule for f in report.findings if severity is None or f.severity == severity]
