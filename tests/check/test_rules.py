"""Graphs built to break one parser rule each, checked against the tables of the releases that differ."""
import numpy as np
import pytest
from onnx import TensorProto, helper

from jetcap.check import preflight_bundle
from tests.check.helpers import F, init, model, rules_of, tensor, write_bundle


def check(tmp_path, proto, tensorrt="8.2", **kwargs):
    return preflight_bundle(write_bundle(tmp_path / "b", proto, **kwargs), tensorrt=tensorrt)


def errors(report, rule):
    return [f for f in report.errors() if f.rule == rule]


def test_opset17_node_is_named_for_82_and_passes_86(tmp_path):
    proto = model([helper.make_node("LayerNormalization", ["x", "scale", "bias"], ["y"], name="ln", axis=-1)],
                  [tensor("x", F, ["batch", 8])], [tensor("y", F, ["batch", 8])],
                  [init("scale", np.ones(8, np.float32)), init("bias", np.zeros(8, np.float32))], opset=17)
    report = check(tmp_path, proto)
    node = errors(report, "opset.node")
    assert node and node[0].node == "ln" and node[0].op == "LayerNormalization" and node[0].graph == "model"
    assert "opset-17 definition" in node[0].message and "up to 13" in node[0].message
    assert errors(report, "opset.max") and report.exit_code() == 1
    assert not check(tmp_path, proto, tensorrt="8.6").errors()


def test_declared_opset_above_max_without_newer_nodes_only_warns(tmp_path):
    proto = model([helper.make_node("Sigmoid", ["x"], ["y"])], [tensor("x", F, ["batch", 4])],
                  [tensor("y", F, ["batch", 4])], opset=17)  # Sigmoid's definition is the opset-13 one
    report = check(tmp_path, proto)
    assert "opset.max" in rules_of(report, "warning") and report.exit_code() == 0


def test_double_input_is_refused(tmp_path):
    proto = model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)],
                  [tensor("x", TensorProto.DOUBLE, ["batch", 4])], [tensor("y", F, ["batch", 4])])
    found = errors(check(tmp_path, proto), "dtype.double")
    assert found and "'x' is DOUBLE" in found[0].message


def test_double_compute_is_refused(tmp_path):
    proto = model([helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE, name="to_double"),
                   helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT)],
                  [tensor("x", F, ["batch", 4])], [tensor("y", F, ["batch", 4])])
    found = errors(check(tmp_path, proto), "dtype.double")
    assert found[0].node == "to_double" and "DOUBLE" in found[0].message


def _qdq(x, name, zero_point=0, zero_type=np.int8):
    return [init(name + "_s", np.float32(0.1)), init(name + "_z", np.array(zero_point, zero_type))], [
        helper.make_node("QuantizeLinear", [x, name + "_s", name + "_z"], [name + "_q"], name=name + "_Q"),
        helper.make_node("DequantizeLinear", [name + "_q", name + "_s", name + "_z"], [name + "_dq"],
                         name=name + "_DQ")]


def _lstm(x_name):
    return helper.make_node("LSTM", [x_name, "W", "R"], ["Y"], name="lstm", hidden_size=4)


def _lstm_weights():
    rng = np.random.default_rng(0)
    return [init("W", rng.normal(size=(1, 16, 3)).astype(np.float32)),
            init("R", rng.normal(size=(1, 16, 4)).astype(np.float32))]


def test_int8_lstm_is_refused_by_82_and_runs_float_on_86(tmp_path):
    inits, nodes = _qdq("x", "x")
    proto = model(nodes + [_lstm("x_dq")], [tensor("x", F, ["T", "batch", 3])], [tensor("Y", F, 4)],
                  inits + _lstm_weights())
    axes = {"T": {"min": 1, "opt": 8, "max": 16}, "batch": {"min": 1, "opt": 1, "max": 4}}
    found = errors(check(tmp_path, proto, axes=axes), "rnn.int8")
    assert found and found[0].node == "lstm" and "no INT8 recurrent layers" in found[0].message
    later = check(tmp_path, proto, tensorrt="8.6", axes=axes)
    assert not later.errors() and "rnn.int8" in rules_of(later, "info")


def test_float_lstm_passes_and_input_forget_does_not(tmp_path):
    axes = {"T": {"min": 1, "opt": 8, "max": 16}, "batch": {"min": 1, "opt": 1, "max": 4}}
    proto = model([_lstm("x")], [tensor("x", F, ["T", "batch", 3])], [tensor("Y", F, 4)], _lstm_weights())
    assert not check(tmp_path, proto, axes=axes).errors()
    coupled = model([helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=4, input_forget=1)],
                    [tensor("x", F, ["T", "batch", 3])], [tensor("Y", F, 4)], _lstm_weights())
    assert errors(check(tmp_path, coupled, axes=axes), "rnn.input_forget")


def test_bidirectional_lstm_with_different_activations_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    weights = [init("W", rng.normal(size=(2, 16, 3)).astype(np.float32)),
               init("R", rng.normal(size=(2, 16, 4)).astype(np.float32))]
    node = helper.make_node("LSTM", ["x", "W", "R"], ["Y"], hidden_size=4, direction="bidirectional",
                            activations=["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Relu"])
    proto = model([node], [tensor("x", F, [5, 1, 3])], [tensor("Y", F, 4)], weights)
    assert errors(check(tmp_path, proto), "rnn.activations")


def test_asymmetric_qdq_is_refused(tmp_path):
    inits, nodes = _qdq("x", "x", zero_point=3)
    proto = model(nodes, [tensor("x", F, ["batch", 4])], [tensor("x_dq", F, ["batch", 4])], inits)
    found = errors(check(tmp_path, proto), "qdq.zero_point")
    assert found and "asymmetric" in found[0].message and "zero point 3" in found[0].message
    assert {f.node for f in found} == {"x_Q", "x_DQ"}


def test_uint8_qdq_is_refused(tmp_path):
    inits, nodes = _qdq("x", "x", zero_point=0, zero_type=np.uint8)
    proto = model(nodes, [tensor("x", F, ["batch", 4])], [tensor("x_dq", F, ["batch", 4])], inits)
    assert "UINT8" in errors(check(tmp_path, proto), "qdq.dtype")[0].message


def test_qdq_without_zero_point_is_refused_by_82_only(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s"], ["y"])]
    proto = model(nodes, [tensor("x", F, ["batch", 4])], [tensor("y", F, ["batch", 4])], [init("s", np.float32(0.1))])
    assert errors(check(tmp_path, proto), "qdq.zero_point_missing")
    assert not check(tmp_path, proto, tensorrt="10.3").errors()


def test_int32_quantized_bias_is_refused(tmp_path):
    nodes = [helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_z"], ["b"], name="bias_DQ"),
             helper.make_node("Add", ["x", "b"], ["y"])]
    inits = [init("b_q", np.arange(4, dtype=np.int32)), init("b_s", np.float32(0.01)), init("b_z", np.int32(0))]
    proto = model(nodes, [tensor("x", F, ["batch", 4])], [tensor("y", F, ["batch", 4])], inits)
    found = errors(check(tmp_path, proto), "qdq.dtype")
    assert found[0].node == "bias_DQ" and "INT32 initializer" in found[0].message and "QuantizeBias" in found[0].hint


def test_per_channel_scales_on_activations_are_refused(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=1)]
    inits = [init("s", np.full(4, 0.1, np.float32)), init("z", np.zeros(4, np.int8))]
    proto = model(nodes, [tensor("x", F, ["batch", 4])], [tensor("y", F, ["batch", 4])], inits)
    assert errors(check(tmp_path, proto), "qdq.per_channel")


def _resize(mode, scales, shape, **attrs):
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode=mode, **attrs)
    return model([node], [tensor("x", F, shape)], [tensor("y", F, len(shape))],
                 [init("scales", np.array(scales, np.float32))])


def test_cubic_resize_is_refused_by_82_not_85(tmp_path):
    proto = _resize("cubic", [1, 1, 2, 2], [1, 3, 8, 8])
    found = errors(check(tmp_path, proto), "resize.mode")
    assert found[0].node == "up" and "'cubic'" in found[0].message
    assert not check(tmp_path, proto, tensorrt="8.5").errors()


def test_linear_resize_over_four_axes_is_refused(tmp_path):
    proto = _resize("linear", [1, 2, 2, 2, 2], [1, 2, 4, 4, 4])
    found = errors(check(tmp_path, proto), "resize.axes")
    assert "3 innermost axes" in found[0].message
    assert not check(tmp_path, _resize("linear", [1, 1, 2, 2, 2], [1, 2, 4, 4, 4])).errors()


def test_tf_crop_and_resize_is_refused(tmp_path):
    proto = _resize("linear", [1, 1, 2, 2], [1, 3, 8, 8], coordinate_transformation_mode="tf_crop_and_resize")
    assert errors(check(tmp_path, proto), "resize.coordinates")


def test_pooling_rank_dilations_and_indices(tmp_path):
    dilated = model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], dilations=[2, 2])],
                    [tensor("x", F, [1, 3, 8, 8])], [tensor("y", F, 4)])
    assert errors(check(tmp_path, dilated), "pool.dilations")
    four_d = model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2, 2, 2])],
                   [tensor("x", F, [1, 1, 4, 4, 4, 4])], [tensor("y", F, 6)])
    assert errors(check(tmp_path, four_d), "pool.rank")
    indices = model([helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2])],
                    [tensor("x", F, [1, 3, 8, 8])], [tensor("y", F, 4), tensor("i", TensorProto.INT64, 4)])
    assert errors(check(tmp_path, indices), "pool.indices")
    one_d = model([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2])],
                  [tensor("x", F, [1, 3, 8])], [tensor("y", F, 3)])
    assert not check(tmp_path, one_d).errors()


def test_bool_gather_is_refused_by_82_not_85(tmp_path):
    proto = model([helper.make_node("Gather", ["mask", "idx"], ["y"], name="pick")],
                  [tensor("mask", TensorProto.BOOL, [4, 3])], [tensor("y", TensorProto.BOOL, 2)],
                  [init("idx", np.array([0, 2], np.int64))])
    found = errors(check(tmp_path, proto, manifest_inputs=[{"name": "mask", "dtype": "bool", "shape": [4, 3]}]),
                   "dtype.bool")
    assert found[0].node == "pick" and "BOOL" in found[0].message
    assert not check(tmp_path, proto, tensorrt="8.5").errors()


def test_scatternd_reduction_is_refused(tmp_path):
    node = helper.make_node("ScatterND", ["x", "idx", "upd"], ["y"], reduction="add")
    proto = model([node], [tensor("x", F, [4, 3])], [tensor("y", F, 2)],
                  [init("idx", np.array([[1]], np.int64)), init("upd", np.ones((1, 3), np.float32))], opset=16)
    assert errors(check(tmp_path, proto, tensorrt="8.6"), "scatter.reduction")


def test_unsupported_operator(tmp_path):
    proto = model([helper.make_node("NonZero", ["x"], ["y"], name="nz")], [tensor("x", F, [4])],
                  [tensor("y", TensorProto.INT64, 2)])
    found = errors(check(tmp_path, proto), "operator.unsupported")
    assert found[0].op == "NonZero" and "not supported by TensorRT 8.2" in found[0].message
    assert not errors(check(tmp_path, proto, tensorrt="8.5"), "operator.unsupported")


def test_dynamic_axis_without_profile(tmp_path):
    """An ONNX input the manifest does not declare, with a dynamic axis 'T' that 'axes' lacks."""
    proto = model([helper.make_node("Add", ["x", "m"], ["y"])], [tensor("x", F, ["batch", 3]), tensor("m", F, ["T", 3])],
                  [tensor("y", F, 2)])
    declared = [{"name": "x", "dtype": "float32", "shape": ["batch", 3]}]
    found = errors(check(tmp_path, proto, manifest_inputs=declared), "profile.missing")
    assert len(found) == 1 and "'T'" in found[0].message and "'m'" in found[0].message
    assert not check(tmp_path, proto, manifest_inputs=declared + [{"name": "m", "dtype": "float32", "shape": [4, 3]}]
                     ).errors()


@pytest.mark.parametrize("version", ["8.2", "8.5", "8.6", "10.3", "11.0"])
def test_a_plain_graph_passes_every_release(tmp_path, version):
    proto = model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", F, ["batch", 4])],
                  [tensor("y", F, ["batch", 4])])
    report = check(tmp_path, proto, tensorrt=version)
    assert report and report.exit_code() == 0 and report.table["source"]["repository"] == "onnx/onnx-tensorrt"
