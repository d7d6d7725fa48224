"""The exact graph rewrites of export: attention-weighted sums (Mul + ReduceSum) as one MatMul, on real
ONNX graphs run by ONNX Runtime before and after."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from jetcap.export.rewrites import weighted_sums_as_matmul  # noqa: E402

P, C = 7, 5


def _axes(name, values, opset, nodes, initializers):
    """Axes as an input (opset 13+: an initializer, or a Constant node holding a tensor or, ``_ints``, a
    value_ints attribute) or None (attribute)."""
    if opset < 13:
        return None
    if name.endswith("_ints"):
        nodes.append(helper.make_node("Constant", [], [name], value_ints=list(values)))
    elif name.endswith("_node"):
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.array(values, dtype=np.int64))))
    else:
        initializers.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
    return name


def weighted_sum_model(opset=13, keepdims=0, reduce_axis=1, unsqueeze_axis=2, swap=False, weights_dims=("B", P),
                       constant_nodes=False, mul_is_output=False, extra_reader=False, pre_unsqueezed=False):
    """features (B, P, C), weights (B, P) [or (B, P, 1)] -> sum over P of features * weights."""
    nodes, initializers = [], []
    suffix = {False: "", True: "_node", "ints": "_ints"}[constant_nodes]
    if pre_unsqueezed:
        weights = helper.make_tensor_value_info("weights", TensorProto.FLOAT, list(weights_dims) + [1])
        weighted = "weights"
    else:
        weights = helper.make_tensor_value_info("weights", TensorProto.FLOAT, list(weights_dims))
        axes = _axes("unsqueeze_axes" + suffix, [unsqueeze_axis], opset, nodes, initializers)
        attrs = {} if axes else {"axes": [unsqueeze_axis]}
        nodes.append(helper.make_node("Unsqueeze", ["weights"] + ([axes] if axes else []), ["weighted"], **attrs))
        weighted = "weighted"
    inputs = [weighted, "features"] if swap else ["features", weighted]
    nodes.append(helper.make_node("Mul", inputs, ["product"], name="attention/Mul"))
    axes = _axes("reduce_axes" + suffix, [reduce_axis], opset, nodes, initializers)
    attrs = {"keepdims": keepdims} if axes else {"keepdims": keepdims, "axes": [reduce_axis]}
    nodes.append(helper.make_node("ReduceSum", ["product"] + ([axes] if axes else []), ["context"],
                                  name="attention/ReduceSum", **attrs))
    nodes.append(helper.make_node("Relu", ["context"], ["out"]))
    kept = [d for i, d in enumerate(["B", P, C]) if keepdims or i != reduce_axis % 3]
    if keepdims:
        kept[reduce_axis % 3] = 1
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, kept)]
    if mul_is_output:
        outputs.append(helper.make_tensor_value_info("product", TensorProto.FLOAT, ["B", P, C]))
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["product"], ["negated"]))
        outputs.append(helper.make_tensor_value_info("negated", TensorProto.FLOAT, ["B", P, C]))
    graph = helper.make_graph(nodes, "weighted_sum", [
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["B", P, C]), weights], outputs,
        initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def _run(model, batch=3, seed=0):
    rng = np.random.RandomState(seed)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = {}
    for value in session.get_inputs():
        shape = [batch if isinstance(d, str) else d for d in value.shape]
        feed[value.name] = rng.standard_normal(shape).astype(np.float32)
    return session.run(None, feed)


def _rewrite(model):
    before = _run(model)
    count = weighted_sums_as_matmul(model)
    onnx.checker.check_model(model, full_check=True)
    after = _run(model)
    for a, b in zip(before, after):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    return count, [n.op_type for n in model.graph.node]


@pytest.mark.parametrize("opset", [11, 13, 17])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_weighted_sum_becomes_one_matmul_with_the_same_result(opset, keepdims):
    count, ops = _rewrite(weighted_sum_model(opset=opset, keepdims=keepdims))
    assert count == 1
    assert "Mul" not in ops and "ReduceSum" not in ops and ops.count("MatMul") == 1
    assert ("Squeeze" in ops) == (not keepdims)


@pytest.mark.parametrize("variant", [dict(swap=True), dict(reduce_axis=-2), dict(unsqueeze_axis=-1),
                                     dict(constant_nodes=True), dict(constant_nodes="ints"), dict(pre_unsqueezed=True),
                                     dict(pre_unsqueezed=True, keepdims=1), dict(weights_dims=(1, P))])
def test_the_ways_the_same_sum_is_written(variant):
    count, ops = _rewrite(weighted_sum_model(**variant))
    assert count == 1 and "ReduceSum" not in ops


@pytest.mark.parametrize("variant", [
    dict(weights_dims=("B", 1)),  # one weight per image broadcast over the pixels: not a matrix product
    dict(reduce_axis=2),  # a sum over channels
    dict(unsqueeze_axis=1),  # weights (B, 1, P) times (B, P, C) would not even broadcast
    dict(mul_is_output=True),  # the product is read by someone else: it must stay
    dict(extra_reader=True),
])
def test_other_sums_are_left_alone(variant):
    model = weighted_sum_model(**variant)
    if variant == dict(unsqueeze_axis=1):  # a graph that cannot run: only its rewrite is asked for
        assert weighted_sums_as_matmul(model) == 0
        return
    count, ops = _rewrite(model)
    assert count == 0 and "ReduceSum" in ops


def _branches(name, shape, local="branch", depth=1):
    """Two If branches that read ``name`` from the outer scope (as a scripted helper's data-dependent
    ``if`` exports), each defining a local value named ``local``; at ``depth`` 2 the reading happens in an
    If nested inside each branch."""
    def branch(tag):
        out = "then_" + tag
        if depth > 1:
            inner_then, inner_else = _branches(name, shape, local + "_in" + tag, depth - 1)
            nodes = [helper.make_node("If", ["flag"], [out], then_branch=inner_then, else_branch=inner_else)]
            initializers = []
        else:
            value = local if tag == "a" else local + "_" + tag  # the then-branch's is named exactly ``local``
            nodes = [helper.make_node("Mul", [name, "scale_" + tag], [value]),
                     helper.make_node("Identity", [value], [out])]
            initializers = [numpy_helper.from_array(np.array(float(len(tag)), dtype=np.float32), "scale_" + tag)]
        return helper.make_graph(nodes, "branch_" + tag, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                                                            shape)],
                                 initializer=initializers)
    return branch("a" * depth), branch("bb" * depth)


def _with_if_reading(model, name, local="branch", depth=1):
    """``model`` with an If node whose branches read ``name`` (see :func:`_branches`) and whose result is one
    more graph output, chosen by a new boolean input ``flag``."""
    graph = model.graph
    shape = ["B", P, C] if name in ("product", "features") else ["B", P, 1]
    then_branch, else_branch = _branches(name, shape, local, depth)
    graph.input.append(helper.make_tensor_value_info("flag", TensorProto.BOOL, []))
    graph.node.append(helper.make_node("If", ["flag"], ["chosen"], then_branch=then_branch, else_branch=else_branch))
    graph.output.append(helper.make_tensor_value_info("chosen", TensorProto.FLOAT, shape))
    return model


def _run_flagged(model, flag):
    rng = np.random.RandomState(0)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": rng.standard_normal((2, P, C)).astype(np.float32),
                              "weights": rng.standard_normal((2, P)).astype(np.float32), "flag": np.array(flag)})


@pytest.mark.parametrize("depth", [1, 2])
def test_values_read_inside_a_branch_are_kept(depth):
    """A subgraph (an If branch, or an If inside one) reads outer values by name without listing them as its
    node's inputs: a product read there is not rewritten, and an unsqueezed weight read there stays beside
    the new MatMul, with the same results."""
    model = _with_if_reading(weighted_sum_model(), "product", depth=depth)
    assert weighted_sums_as_matmul(model) == 0
    model = _with_if_reading(weighted_sum_model(), "weighted", depth=depth)
    before = [_run_flagged(model, flag) for flag in (True, False)]
    assert weighted_sums_as_matmul(model) == 1
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Unsqueeze") == 2 and "ReduceSum" not in ops
    for flag, expected in zip((True, False), before):
        for a, b in zip(expected, _run_flagged(model, flag)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", ["Mul", "ReduceSum", "Unsqueeze"])
def test_only_onnx_operators_are_read(op):
    model = weighted_sum_model()
    next(n for n in model.graph.node if n.op_type == op).domain = "custom.domain"
    model.opset_import.append(helper.make_opsetid("custom.domain", 1))
    assert weighted_sums_as_matmul(model) == 0


def test_only_constant_axes_are_read():
    model = weighted_sum_model()  # the ReduceSum's axes are an initializer the caller may override
    model.graph.input.append(helper.make_tensor_value_info("reduce_axes", TensorProto.INT64, [1]))
    assert weighted_sums_as_matmul(model) == 0


def test_new_names_never_collide_and_dead_axes_go():
    model = weighted_sum_model(extra_reader=False)
    for node in model.graph.node:  # a value already named like the rewrite's
        if node.op_type == "Relu":
            node.output[0] = "attention/ReduceSum/as_matmul/weights_row"
            model.graph.output[0].name = node.output[0]
    model.graph.initializer.append(numpy_helper.from_array(np.array([5], dtype=np.int64),
                                                           "attention/ReduceSum/as_matmul/axis_1"))
    count, _ = _rewrite(model)
    assert count == 1
    names = [o for n in model.graph.node for o in n.output] + [i.name for i in model.graph.initializer]
    assert len(names) == len(set(names))
    assert "reduce_axes" not in names and "unsqueeze_axes" not in names  # read by nothing any more
    model = weighted_sum_model(constant_nodes=True)
    _rewrite(model)
    assert "Constant" not in [n.op_type for n in model.graph.node]  # both axes went with their nodes
    # a name a branch defines for itself is not reused outside it
    model = _with_if_reading(weighted_sum_model(), "features", local="attention/ReduceSum/as_matmul/weights_row")
    assert weighted_sums_as_matmul(model) == 1
    onnx.checker.check_model(model, full_check=True)
    # axes still read elsewhere stay: by a branch, and as a graph output
    model = _with_if_reading(weighted_sum_model(), "reduce_axes")
    model.graph.output[-1].type.tensor_type.elem_type = TensorProto.INT64
    del model.graph.output[-1].type.tensor_type.shape.dim[:]
    model.graph.output[-1].type.tensor_type.shape.dim.add().dim_value = 1
    for body in (model.graph.node[-1].attribute[0].g, model.graph.node[-1].attribute[1].g):
        body.node[0].op_type = "Identity"
        del body.node[0].input[1:]
        body.output[0].type.tensor_type.elem_type = TensorProto.INT64
        del body.output[0].type.tensor_type.shape.dim[:]
        body.output[0].type.tensor_type.shape.dim.add().dim_value = 1
        del body.initializer[:]
    model.graph.output.append(helper.make_tensor_value_info("unsqueeze_axes", TensorProto.INT64, [1]))
    assert weighted_sums_as_matmul(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert {"reduce_axes", "unsqueeze_axes"} <= set(i.name for i in model.graph.initializer)
    # duplicate node names (legal ONNX) give distinct values
    model = weighted_sum_model()
    twin = onnx.load_from_string(model.SerializeToString())
    graph = helper.make_graph(list(model.graph.node) + [
        helper.make_node(n.op_type, [i + "_2" if i in ("weighted", "product", "context") else i for i in n.input],
                         [o + "_2" for o in n.output], name=n.name, **{a.name: helper.get_attribute_value(a)
                                                                       for a in n.attribute})
        for n in twin.graph.node if n.op_type in ("Unsqueeze", "Mul", "ReduceSum")], "twins",
        list(model.graph.input), list(model.graph.output) + [helper.make_tensor_value_info(
            "context_2", TensorProto.FLOAT, ["B", C])], initializer=list(model.graph.initializer))
    twins = helper.make_model(graph, opset_imports=list(model.opset_import))
    twins.ir_version = 7
    assert weighted_sums_as_matmul(twins) == 2  # (ONNX Runtime itself refuses duplicate node names)
    onnx.checker.check_model(twins, full_check=True)
    names = [o for n in twins.graph.node for o in n.output] + [i.name for i in twins.graph.initializer]
    assert len(names) == len(set(names))


def test_fp16_keeps_the_weighted_sum_in_fp32_like_the_reduction_it_replaced(captioner_bundle):
    from jetcap.runtime.manifest import Manifest

    manifest = Manifest.load(captioner_bundle)
    model = onnx.shape_inference.infer_shapes(onnx.load(str(manifest.graph_path("fp16", "decoder_step"))))
    types = dict((v.name, v.type.tensor_type.elem_type) for v in list(model.graph.value_info) + list(model.graph.input))
    matmul = next(n for n in model.graph.node if n.name.endswith("/as_matmul"))
    assert [types.get(i) for i in matmul.input] == [TensorProto.FLOAT, TensorProto.FLOAT]
    row = next(n for n in model.graph.node if n.name.endswith("/as_matmul/Unsqueeze"))  # FP32 around it too
    assert types.get(row.input[0]) == TensorProto.FLOAT
    assert "fp16: weights FP16, I/O FP32, kept FP32: LogSoftmax, Softmax, TopK, the attention-weighted sum (MatMul)" \
        in manifest.data["variants"]["fp16"]["notes"]


def test_the_exported_decoder_step_has_its_weighted_sum_as_a_matmul(captioner_bundle):
    """The shipped sample's step graph (jetcap's built-in Show-Attend-Tell attention), as export wrote it."""
    model = onnx.load(str(captioner_bundle / "decoder_step.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceSum" not in ops
    assert any(n.name.endswith("/as_matmul") for n in model.graph.node)
