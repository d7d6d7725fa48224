"""What the rules need to know about one ONNX graph, read with the ``onnx`` package (imported lazily).

``onnx`` is on the PC that exports; on a Jetson it may be absent, and then every pre-flight stops with a
:class:`jetcap.errors.MissingDependencyError` naming what to install.
"""
import collections

import numpy as np

from jetcap.util.lazy import require


def load_onnx():
    """The ``onnx`` module, or MissingDependencyError ("the pre-flight reads ONNX files with the onnx package")."""
    return require("onnx")


class GraphFacts(object):
    """One ONNX model: its nodes, opset, initializers, producers/consumers and tensor element types.

    Args:
        model: an ``onnx.ModelProto``.
    """

    def __init__(self, model):
        onnx = load_onnx()
        self.onnx = onnx
        self.model = model
        self.graph = model.graph
        self.opset = 0
        self.domains = {}
        for entry in model.opset_import:
            domain = entry.domain or "ai.onnx"
            self.domains[domain] = entry.version
            if domain == "ai.onnx":
                self.opset = entry.version
        self.initializers = dict((t.name, t) for t in self.graph.initializer)
        self.producers = {}
        self.consumers = collections.defaultdict(list)
        for node in self.graph.node:
            for name in node.output:
                if name:
                    self.producers[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        self.input_names = [v.name for v in self.graph.input if v.name not in self.initializers]
        self.output_names = [v.name for v in self.graph.output]
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # an invalid or huge model: fall back to what the file itself records
            inferred = model
        graph = inferred.graph
        self._values = dict((v.name, v) for v in list(graph.input) + list(graph.output) + list(graph.value_info))
        # tensor name -> ONNX element type name (shape inference fills the intermediate ones)
        self.types = {}
        for value in self._values.values():
            if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
                self.types[value.name] = type_name(onnx, value.type.tensor_type.elem_type)
        for tensor in self.graph.initializer:
            self.types[tensor.name] = type_name(onnx, tensor.data_type)

    def constant(self, name):
        """The numpy value of initializer (or Constant node output) ``name``, or None when it is computed."""
        if not name:
            return None
        numpy_helper = self.onnx.numpy_helper
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        node = self.producers.get(name)
        if node is not None and node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    return numpy_helper.to_array(attr.t)
                if attr.name in ("value_int", "value_ints", "value_float", "value_floats"):
                    return np.asarray(self.onnx.helper.get_attribute_value(attr))
        return None

    def is_constant(self, name):
        return name in self.initializers or (name in self.producers and self.producers[name].op_type == "Constant")

    def attr(self, node, name, default=None):
        """Attribute ``name`` of ``node`` as a Python value, or ``default``."""
        for attribute in node.attribute:
            if attribute.name == name:
                value = self.onnx.helper.get_attribute_value(attribute)
                if isinstance(value, bytes):
                    return value.decode("utf-8", "replace")
                if isinstance(value, list):
                    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
                return value
        return default

    def rank(self, name):
        """Rank of tensor ``name`` when known from the file or shape inference, else None."""
        shape = self.shape(name)
        return None if shape is None else len(shape)

    def shape(self, name):
        """Shape of ``name`` as a list of ints / axis names / None, or None when unknown."""
        if name in self.initializers:
            return list(self.initializers[name].dims)
        value = self._values.get(name)
        if value is None or not value.type.tensor_type.HasField("shape"):
            return None
        dims = []
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(dim.dim_value)
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        return dims

    def all_nodes(self):
        """Every node, including those of If/Loop/Scan bodies, as ``(node, in_subgraph)``."""
        stack = [(node, False) for node in reversed(self.graph.node)]
        while stack:
            node, nested = stack.pop()
            yield node, nested
            for attribute in node.attribute:
                graphs = list(attribute.g.node) if attribute.HasField("g") else []
                for sub in attribute.graphs:
                    graphs.extend(sub.node)
                stack.extend((child, True) for child in reversed(graphs))


def type_name(onnx, elem_type):
    """ONNX element type number -> its name (``1`` -> ``"FLOAT"``)."""
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return "UNKNOWN({})".format(elem_type)


def node_label(node, index):
    """A node's name, or ``"<op>#<index>"`` for unnamed nodes."""
    return node.name or "{}#{}".format(node.op_type, index)
