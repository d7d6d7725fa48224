"""FLOPs and multiply-accumulates of an ONNX graph at concrete input shapes (needs ``onnx``).

The graph's symbolic input axes are fixed to the sizes given, every intermediate shape is inferred
(ONNX Runtime's symbolic shape inference when it imports, which also sees through the
``Shape -> Slice -> Reshape`` chains exporters write; otherwise ``onnx.shape_inference`` with data
propagation) and each node is counted from its shapes:

* Conv / ConvInteger / QLinearConv: ``prod(Y) * C_in / group * prod(kernel)`` MACs (+ the bias adds);
* Gemm / MatMul / MatMulInteger / QLinearMatMul: ``prod(Y) * K`` MACs (+ Gemm's C add);
* LSTM / GRU / RNN: ``dirs * seq * batch * gates * H * (input + H)`` MACs plus the gate arithmetic;
* element-wise, normalisation, pooling, softmax and reduction nodes: a few FLOPs per element;
* data movement (Reshape, Transpose, Gather, Cast, Q/DQ, ...) counts zero.

One MAC is two FLOPs.  Nodes whose shapes stay unknown are listed in ``uncounted`` (the total is then
a lower bound).  Python 3.6 compatible.
"""
import collections

from jetcap.errors import MissingDependencyError, UsageError
from jetcap.util.lazy import require

# FLOPs per output element of cheap nodes (approximate, the matmul-like nodes dominate these graphs)
ELEMENTWISE_FLOPS = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Neg": 1, "Abs": 1, "Max": 1, "Min": 1, "Sum": 1, "Mean": 1,
    "Relu": 1, "LeakyRelu": 2, "PRelu": 2, "Clip": 2, "Sigmoid": 4, "HardSigmoid": 3, "HardSwish": 4,
    "Tanh": 4, "Exp": 4, "Log": 4, "Sqrt": 4, "Reciprocal": 1, "Pow": 4, "Erf": 4, "Gelu": 8, "Elu": 4,
    "Selu": 4, "Softplus": 4, "Sign": 1, "Floor": 1, "Ceil": 1, "Round": 1, "Where": 1,
    "BatchNormalization": 2, "InstanceNormalization": 5, "LayerNormalization": 8,
    "Softmax": 5, "LogSoftmax": 5,
}
# FLOPs per *input* element
REDUCTION_FLOPS = {
    "ReduceSum": 1, "ReduceMean": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1, "ReduceL2": 2,
    "ReduceSumSquare": 2, "ReduceLogSumExp": 5, "GlobalAveragePool": 1, "GlobalMaxPool": 1,
}
# Nodes that move or convert data without arithmetic worth counting
ZERO_FLOPS = frozenset((
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Concat", "Split", "Slice", "Gather",
    "GatherElements", "GatherND", "Cast", "Shape", "Size", "Constant", "ConstantOfShape", "Identity",
    "Expand", "Tile", "Pad", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "Range",
    "Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or", "ArgMax", "ArgMin",
    "NonZero", "ScatterND", "ScatterElements", "Dropout", "TopK", "Resize", "DepthToSpace", "SpaceToDepth",
    "CastLike", "Trilu", "OneHot",
))
# op -> indices of (input, weight) for the convolution-like and matmul-like counters
CONV_INPUTS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3)}
MATMUL_INPUTS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}
RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
# gate arithmetic per hidden unit and step besides the matmuls (bias adds, activations, cell update)
RNN_ELEMENTWISE = {"LSTM": 21, "GRU": 17, "RNN": 6}


class NodeCount(object):
    """What one node costs: ``macs`` (multiply-accumulates of matmul-like work), ``flops`` (total,
    2 per MAC plus element-wise work) and, for matmul-like nodes, ``gemm`` = ``(M, K, N)``."""

    __slots__ = ("name", "op_type", "macs", "flops", "gemm")

    def __init__(self, name, op_type, macs, flops, gemm=None):
        self.name = name
        self.op_type = op_type
        self.macs = int(macs)
        self.flops = int(flops)
        self.gemm = gemm

    def to_json(self):
        out = {"name": self.name, "op_type": self.op_type, "macs": self.macs, "flops": self.flops}
        if self.gemm is not None:
            out["gemm"] = list(self.gemm)
        return out


class GraphFlops(object):
    """FLOP count of one graph at one set of input shapes.

    Attributes:
        input_shapes: ``{input: shape}`` the count was made for.
        nodes: a :class:`NodeCount` per counted node with non-zero cost.
        uncounted: ``[(node name, op type, why)]`` for nodes that could not be counted.
        shape_inference: which shape inference was used ("onnxruntime-symbolic" or "onnx").
    """

    def __init__(self, input_shapes, nodes, uncounted, shape_inference):
        self.input_shapes = input_shapes
        self.nodes = nodes
        self.uncounted = uncounted
        self.shape_inference = shape_inference

    @property
    def macs(self):
        return sum(n.macs for n in self.nodes)

    @property
    def flops(self):
        return sum(n.flops for n in self.nodes)

    @property
    def matmul_flops(self):
        """FLOPs of the matmul-like work alone (2 per MAC)."""
        return 2 * self.macs

    def by_op(self):
        """``{op_type: flops}``, largest first."""
        totals = collections.OrderedDict()
        for node in sorted(self.nodes, key=lambda n: -n.flops):
            totals[node.op_type] = totals.get(node.op_type, 0) + node.flops
        return totals

    def largest_gemm(self):
        """The matmul-like node with the most MACs (or None)."""
        gemms = [n for n in self.nodes if n.gemm is not None]
        return max(gemms, key=lambda n: n.macs) if gemms else None

    def to_json(self):
        largest = self.largest_gemm()
        return {
            "input_shapes": dict((k, list(v)) for k, v in self.input_shapes.items()),
            "flops": self.flops, "macs": self.macs, "matmul_flops": self.matmul_flops,
            "by_op": dict(self.by_op()), "uncounted": [list(u) for u in self.uncounted],
            "largest_gemm": largest.to_json() if largest is not None else None,
            "shape_inference": self.shape_inference,
        }


def _prod(values):
    out = 1
    for v in values:
        out *= int(v)
    return out


def _fix_inputs(model, input_shapes):
    """Set the graph inputs' dims to the concrete ``input_shapes`` and drop stale intermediate shapes."""
    graph = model.graph
    initializers = set(init.name for init in graph.initializer)
    for value in graph.input:
        if value.name in initializers:
            continue
        if value.name not in input_shapes:
            raise UsageError("no shape given for graph input {!r} (given: {})".format(
                value.name, ", ".join(sorted(input_shapes))))
        shape = input_shapes[value.name]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise UsageError("input {!r} has rank {}, shape given {}".format(value.name, len(dims), list(shape)))
        for dim, size in zip(dims, shape):
            dim.Clear()
            dim.dim_value = int(size)
    # exporters write value_info with symbolic names; inference must recompute them from the fixed inputs
    del graph.value_info[:]
    for value in graph.output:
        value.type.tensor_type.ClearField("shape")


SHAPE_INFERENCE = ("auto", "onnxruntime", "onnx")


def _infer(model, method="auto"):
    """``(model with shapes, method used)``.

    ``auto``: ONNX Runtime's symbolic shape inference when it imports (it needs sympy) and succeeds,
    else onnx's own with data propagation; ``onnxruntime`` / ``onnx``: only that one.
    """
    if method not in SHAPE_INFERENCE:
        raise UsageError("unknown shape inference {!r} (one of {})".format(method, ", ".join(SHAPE_INFERENCE)))
    used = "onnx"
    if method in ("auto", "onnxruntime"):
        try:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
        except ImportError as exc:
            if method == "onnxruntime":
                raise MissingDependencyError("ONNX Runtime's symbolic shape inference cannot be imported: {}".format(
                    exc), hint="pip install onnxruntime sympy")
            used = "onnx (onnxruntime's symbolic shape inference not importable)"
        else:
            try:
                return SymbolicShapeInference.infer_shapes(model, auto_merge=True), "onnxruntime-symbolic"
            except Exception as exc:  # noqa: BLE001  it raises plain Exceptions; auto falls back, saying why
                if method == "onnxruntime":
                    raise
                used = "onnx (onnxruntime-symbolic failed: {})".format(
                    (str(exc).splitlines() or [type(exc).__name__])[0])
    shape_inference = require("onnx.shape_inference")
    return shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), used


def _shape_table(model):
    """``{tensor name: tuple of ints}`` for every tensor whose shape is fully known."""
    graph = model.graph
    shapes = {}
    for init in graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            continue
        dims = []
        for dim in tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dims = None
                break
            dims.append(int(dim.dim_value))
        if dims is not None:
            shapes[value.name] = tuple(dims)
    for node in graph.node:  # Constant nodes carry their shape in the attribute
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(int(d) for d in attr.t.dims)
    return shapes


def _attr(node, name, default=None):
    for attr in node.attribute:
        if attr.name == name:
            if attr.type == attr.INT:
                return attr.i
            if attr.type == attr.INTS:
                return list(attr.ints)
            if attr.type == attr.FLOAT:
                return attr.f
            if attr.type == attr.STRING:
                return attr.s.decode("utf-8")
    return default


class _Unknown(Exception):
    """A shape needed to count a node is not known."""


def _need(shapes, name):
    if not name or name not in shapes:
        raise _Unknown("shape of {!r} unknown".format(name))
    return shapes[name]


def count_node(node, shapes):
    """The :class:`NodeCount` of one node given ``shapes`` (None for nodes that cost nothing).

    Raises ``_Unknown`` when a needed shape is missing; unknown op types count zero.
    """
    op = node.op_type
    if op in ZERO_FLOPS:
        return None
    if op in CONV_INPUTS:
        x_index, w_index = CONV_INPUTS[op]
        weight = _need(shapes, node.input[w_index])
        out = _need(shapes, node.output[0])
        macs = _prod(out) * _prod(weight[1:])  # weight: (M, C/group, *kernel)
        bias_index = 2 if op == "Conv" else (8 if op == "QLinearConv" else None)
        bias = _prod(out) if bias_index is not None and len(node.input) > bias_index and node.input[bias_index] else 0
        return NodeCount(node.name, op, macs, 2 * macs + bias)
    if op in MATMUL_INPUTS:
        a_index, b_index = MATMUL_INPUTS[op]
        a = _need(shapes, node.input[a_index])
        b = _need(shapes, node.input[b_index])
        out = _need(shapes, node.output[0])
        if op == "Gemm":
            k = a[0] if _attr(node, "transA", 0) else a[-1]
            n = b[0] if _attr(node, "transB", 0) else b[-1]
        else:
            k = a[-1]
            n = b[-1] if len(b) > 1 else 1
        macs = _prod(out) * int(k)
        extra = _prod(out) if op == "Gemm" and len(node.input) > 2 and node.input[2] else 0
        rows = _prod(out) // max(int(n), 1)
        return NodeCount(node.name, op, macs, 2 * macs + extra, gemm=(rows, int(k), int(n)))
    if op in RNN_GATES:
        x = _need(shapes, node.input[0])
        weight = _need(shapes, node.input[1])  # (dirs, gates * H, input)
        dirs, gates_h, width = int(weight[0]), int(weight[1]), int(weight[2])
        hidden = gates_h // RNN_GATES[op]
        if _attr(node, "layout", 0):
            batch, seq = int(x[0]), int(x[1])
        else:
            seq, batch = int(x[0]), int(x[1])
        macs = dirs * seq * batch * gates_h * (width + hidden)
        elementwise = dirs * seq * batch * hidden * RNN_ELEMENTWISE[op]
        return NodeCount(node.name, op, macs, 2 * macs + elementwise,
                         gemm=(seq * batch, width + hidden, dirs * gates_h))
    if op in ELEMENTWISE_FLOPS:
        out = _need(shapes, node.output[0])
        return NodeCount(node.name, op, 0, ELEMENTWISE_FLOPS[op] * _prod(out))
    if op in REDUCTION_FLOPS:
        data = _need(shapes, node.input[0])
        return NodeCount(node.name, op, 0, REDUCTION_FLOPS[op] * _prod(data))
    if op in ("AveragePool", "MaxPool", "LpPool"):
        out = _need(shapes, node.output[0])
        return NodeCount(node.name, op, 0, _prod(out) * _prod(_attr(node, "kernel_shape", [1])))
    return NodeCount(node.name, op, 0, 0)


def count_flops(model, input_shapes, shape_inference="auto"):
    """Count the FLOPs of an ONNX graph at concrete input shapes.

    Args:
        model: an ONNX file path or a loaded ``onnx.ModelProto`` (not modified).
        input_shapes: ``{input name: shape (ints)}`` for every graph input.
        shape_inference: "auto" (default: ONNX Runtime's symbolic inference, else onnx's), "onnxruntime"
            or "onnx".
    Returns:
        a :class:`GraphFlops`.
    Raises:
        UsageError: an input without a shape or with the wrong rank.
        MissingDependencyError: onnx is not installed.
    """
    onnx = require("onnx")
    if isinstance(model, onnx.ModelProto):
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    else:
        proto = onnx.load(str(model))
    shapes_given = dict((k, tuple(int(d) for d in v)) for k, v in input_shapes.items())
    _fix_inputs(proto, shapes_given)
    inferred, method = _infer(proto, shape_inference)
    shapes = _shape_table(inferred)
    nodes, uncounted = [], []
    for index, node in enumerate(inferred.graph.node):
        name = node.name or "{}_{}".format(node.op_type, index)
        try:
            counted = count_node(node, shapes)
        except _Unknown as exc:
            uncounted.append((name, node.op_type, str(exc)))
            continue
        if counted is not None and counted.flops:
            counted.name = name
            nodes.append(counted)
    return GraphFlops(shapes_given, nodes, uncounted, method)


def graph_input_shapes(io_spec, sizes):
    """``{input: shape}`` of a manifest graph with its axis names replaced by ``sizes``."""
    from jetcap.runtime.manifest import resolve_shape

    return dict((t["name"], resolve_shape(t["shape"], sizes)) for t in io_spec["inputs"])


def format_flops(count):
    """``2.31e6`` -> ``'2.31 MFLOP'``."""
    value = float(count)
    for unit, scale in (("GFLOP", 1e9), ("MFLOP", 1e6), ("kFLOP", 1e3)):
        if value >= scale:
            return "{:.3g} {}".format(value / scale, unit)
    return "{:.0f} FLOP".format(value)
