"""The FLOP counter on tiny hand-built ONNX graphs whose counts are known by hand."""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from jetcap.bench import flops  # noqa: E402
from jetcap.errors import UsageError  # noqa: E402


def _model(nodes, inputs, outputs, initializers=(), value_info=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers), value_info=list(value_info))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def _value(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _const(name, shape, dtype=np.float32):
    return numpy_helper.from_array(np.zeros(shape, dtype=dtype), name)


METHODS = pytest.mark.parametrize("method", ["onnxruntime", "onnx"])


@METHODS
def test_batched_matmul_counts_every_output_times_k(method):
    model = _model([helper.make_node("MatMul", ["a", "w"], ["y"])], [_value("a", ["b", 3, 4, 5])],
                   [_value("y", ["b", 3, 4, 6])], [_const("w", (5, 6))])
    count = flops.count_flops(model, {"a": (2, 3, 4, 5)}, shape_inference=method)
    assert count.macs == 2 * 3 * 4 * 6 * 5
    assert count.flops == 2 * count.macs
    assert count.largest_gemm().gemm == (24, 5, 6)
    assert count.uncounted == []
    assert count.shape_inference.startswith(method)


@METHODS
def test_gemm_with_transposed_weight_and_bias(method):
    node = helper.make_node("Gemm", ["a", "w", "bias"], ["y"], transB=1)
    model = _model([node], [_value("a", ["m", 4])], [_value("y", ["m", 5])], [_const("w", (5, 4)), _const("bias", (5,))])
    count = flops.count_flops(model, {"a": (3, 4)}, shape_inference=method)
    assert count.macs == 3 * 5 * 4
    assert count.flops == 2 * 60 + 3 * 5  # + the bias adds


@pytest.mark.parametrize("group,weight,macs", [(1, (4, 3, 3, 3), 4 * 64 * 27), (3, (3, 1, 3, 3), 3 * 64 * 9)])
@METHODS
def test_conv_dense_and_depthwise(group, weight, macs, method):
    out_channels = weight[0]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], kernel_shape=[3, 3], group=group)
    model = _model([node], [_value("x", [1, 3, 8, 8])], [_value("y", [1, out_channels, 8, 8])],
                   [_const("w", weight), _const("b", (out_channels,))])
    count = flops.count_flops(model, {"x": (1, 3, 8, 8)}, shape_inference=method)
    assert count.macs == macs
    assert count.flops == 2 * macs + out_channels * 64


@pytest.mark.parametrize("direction,dirs", [("forward", 1), ("bidirectional", 2)])
@METHODS
def test_lstm(direction, dirs, method):
    hidden, width, seq, batch = 4, 3, 5, 2
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=hidden, direction=direction)
    model = _model([node], [_value("x", ["T", batch, width])], [_value("y", ["T", dirs, batch, hidden])],
                   [_const("W", (dirs, 4 * hidden, width)), _const("R", (dirs, 4 * hidden, hidden))])
    count = flops.count_flops(model, {"x": (seq, batch, width)}, shape_inference=method)
    assert count.macs == dirs * seq * batch * 4 * hidden * (width + hidden)
    assert count.flops == 2 * count.macs + dirs * seq * batch * hidden * flops.RNN_ELEMENTWISE["LSTM"]


@METHODS
def test_elementwise_softmax_and_data_movement(method):
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Transpose", ["r"], ["t"], perm=[1, 0]),
             helper.make_node("Softmax", ["t"], ["y"], axis=1)]
    model = _model(nodes, [_value("x", [2, 3])], [_value("y", [3, 2])])
    count = flops.count_flops(model, {"x": (2, 3)}, shape_inference=method)
    assert count.macs == 0
    assert count.flops == 6 * 1 + 6 * 5
    assert set(count.by_op()) == {"Relu", "Softmax"}


def test_shape_chains_and_stale_symbolic_value_info_are_resolved():
    """An exporter-style graph: the Reshape target comes from Shape/Gather/Concat, and value_info carries
    symbolic dims; the count must follow the concrete input shape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Gather", ["shape", "one"], ["length"], axis=0),
        helper.make_node("Mul", ["batch", "length"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "axes"], ["rows1"]),
        helper.make_node("Concat", ["rows1", "eight"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    inits = [numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
             numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "axes"),
             numpy_helper.from_array(np.array([8], dtype=np.int64), "eight"), _const("w", (8, 16))]
    stale = [_value("flat", ["batch_x_T", 8]), _value("y", ["batch_x_T", 16])]
    model = _model(nodes, [_value("x", ["batch", "T", 8])], [_value("y", ["rows", 16])], inits, value_info=stale)
    count = flops.count_flops(model, {"x": (3, 5, 8)})
    assert count.uncounted == []
    assert count.macs == 3 * 5 * 8 * 16
    assert flops.count_flops(model, {"x": (1, 7, 8)}).macs == 7 * 8 * 16


def test_model_is_not_modified_and_files_work(tmp_path):
    model = _model([helper.make_node("MatMul", ["a", "w"], ["y"])], [_value("a", ["m", 5])], [_value("y", ["m", 6])],
                   [_const("w", (5, 6))])
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert flops.count_flops(str(path), {"a": (4, 5)}).macs == 4 * 5 * 6
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "m"


def test_unknown_shape_inference_is_a_usage_error():
    model = _model([helper.make_node("Relu", ["a"], ["y"])], [_value("a", ["m", 5])], [_value("y", ["m", 5])])
    with pytest.raises(UsageError, match="unknown shape inference"):
        flops.count_flops(model, {"a": (1, 5)}, shape_inference="guess")


def test_missing_or_wrong_input_shape_is_a_usage_error():
    model = _model([helper.make_node("Relu", ["a"], ["y"])], [_value("a", ["m", 5])], [_value("y", ["m", 5])])
    with pytest.raises(UsageError, match="no shape given for graph input 'a'"):
        flops.count_flops(model, {"b": (1, 5)})
    with pytest.raises(UsageError, match="rank 2"):
        flops.count_flops(model, {"a": (1, 5, 1)})


def test_captioner_like_decoder_step(tmp_path):
    """The runtime tests' captioner-like step graph: its matmuls counted by hand (D=8, A=5, C=6, V=7)."""
    from runtime.tiny_bundle import DIMS, make_captioner_like_bundle
    from jetcap.runtime.manifest import Manifest

    manifest = Manifest.load(make_captioner_like_bundle(str(tmp_path / "bundle")))
    shapes = flops.graph_input_shapes(manifest.graph("decoder_step"), {"batch": 2})
    count = flops.count_flops(manifest.graph_path("fp32", "decoder_step"), shapes)
    D, A, C, V = DIMS["D"], DIMS["A"], DIMS["C"], DIMS["V"]
    assert count.macs == 2 * (D * A + C * D + D * D + D * V)
    assert count.uncounted == []


def test_format_flops():
    assert flops.format_flops(2.31e6) == "2.31 MFLOP"
    assert flops.format_flops(1.5e9) == "1.5 GFLOP"
    assert flops.format_flops(12) == "12 FLOP"
