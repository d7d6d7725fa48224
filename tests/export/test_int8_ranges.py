"""The INT8 search's range step, on a real ONNX graph in ONNX Runtime: a layer whose minmax input range is
set by one rare value gets a narrower, measured range instead of being kept float."""
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from jetcap.export.calibration import calibrate
from jetcap.export.int8 import QUANTIZED_OPS
from jetcap.export.int8_search import SearchOptions, plan_for, search_float_layers
from jetcap.export.options import CalibrationMethod
from jetcap.models.registry import Tolerance

INT8 = Tolerance(atol=1.5, rtol=0.5, min_cosine=0.99)


def _conv_chain(path):
    rng = np.random.RandomState(0)
    w1 = numpy_helper.from_array((rng.randn(8, 4, 3, 3) * 0.3).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.randn(8, 8, 3, 3) * 0.2).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))


def test_a_rare_value_narrows_the_range_instead_of_keeping_the_layer_float(tmp_path):
    src = tmp_path / "chain.onnx"
    _conv_chain(src)
    rng = np.random.RandomState(1)
    feeds = [{"x": rng.randn(1, 4, 16, 16).astype(np.float32)} for _ in range(8)]
    feeds[7]["x"][0, 0, 3, 3] = 2000.0  # one value in one calibration image; the evaluation feeds are the first 4
    ranges = calibrate(src, feeds, CalibrationMethod.MINMAX, op_types=QUANTIZED_OPS)
    assert ranges.thresholds["x"] == 2000.0
    options = SearchOptions(max_feeds=4)
    result = search_float_layers(src, feeds, ranges, plan_for(src, ()), INT8, options)
    entry = result.entry
    assert entry["error_all_int8"] > 1.0  # minmax: the input of conv1 rounds to a handful of levels
    refined = entry["ranges_refined"]
    assert refined[0]["tensor"] == "x" and refined[0]["node"] == "conv1"  # the most harmful layer first
    assert {r["tensor"] for r in refined} <= {"x", "r"}  # the rare value reaches conv2's input too
    assert refined[0]["threshold"] < 0.01 * refined[0]["previous_threshold"]
    assert refined[0]["error_alone_after"] < 0.8 * refined[0]["error_alone_before"]
    assert result.passed and result.float_nodes == [] and entry["error"] <= 1.0

    unrefined = search_float_layers(src, feeds, ranges, plan_for(src, ()), INT8,
                                    SearchOptions(max_feeds=4, refine_ranges=False))
    # without the range step no prefix within the 25 % MAC bound helps (each layer is about half the MACs)
    assert "ranges_refined" not in unrefined.entry and not unrefined.passed and unrefined.entry["error"] > 1.0
