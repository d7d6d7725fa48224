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
    """Axes as an input (opset 13+: an initializer, or a Constant node) or None (attribute)."""
    if opset < 13:
        return None
    if name.endswith("_node"):
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
            np.array(values, dtype=np.int64))))
    else:
        initializers.append(numpy_helper.from_array(np.array(values, dtype=np.int64), name))
    return name


def weighted_sum_model(opset=13, keepdims=0, reduce_axis=1, unsqueeze_axis=2, swap=False, weights_dims=("B", P),
                       constant_nodes=False, mul_is_output=False, extra_reader=False, pre_unsqueezed=False):
    """features (B, P, C), weights (B, P) [or (B, P, 1)] -> sum over P of features * weights."""
    nodes, initializers = [], []
    suffix = "_node" if constant_nodes else ""
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
                                     dict(constant_nodes=True), dict(pre_unsqueezed=True),
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


def test_the_exported_decoder_step_has_its_weighted_sum_as_a_matmul(captioner_bundle):
    """The shipped sample's step graph (jetcap's built-in Show-Attend-Tell attention), as export wrote it."""
    model = onnx.load(str(captioner_bundle / "decoder_step.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert "ReduceSum" not in ops
    assert any(n.name.endswith("/as_matmul") for n in model.graph.node)
