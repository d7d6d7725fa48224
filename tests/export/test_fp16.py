"""FP16 conversion of real exported graphs: checker-valid, runs in ONNX Runtime, I/O stays FP32."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from jetcap.export.fp16 import FP32_OPS, convert_fp16, topological_sort
from jetcap.export.onnx_graph import ExportError


def test_topological_sort_orders_shuffled_graph():
    nodes = [
        onnx.helper.make_node("Relu", ["b"], ["c"], name="second"),
        onnx.helper.make_node("Neg", ["a"], ["b"], name="first"),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [onnx.helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, [2])],
                                   [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2])])
    topological_sort(graph)
    assert [n.name for n in graph.node] == ["first", "second"]


def test_topological_sort_reports_dangling_input():
    nodes = [onnx.helper.make_node("Relu", ["missing"], ["c"], name="orphan")]
    graph = onnx.helper.make_graph(nodes, "g", [], [onnx.helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, [2])])
    with pytest.raises(ExportError, match="missing"):
        topological_sort(graph)


@pytest.mark.parametrize("graph", ["encoder", "decoder_step"])
def test_fp16_captioner_graphs_are_valid_and_close(captioner_bundle, tmp_path, graph):
    src = captioner_bundle / "{}.onnx".format(graph)
    dst = tmp_path / "{}.fp16.onnx".format(graph)
    convert_fp16(src, dst)
    model = onnx.load(str(dst))
    onnx.checker.check_model(model, full_check=True)
    # weights are FP16, graph I/O stays FP32 (int64 for the word id)
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert {i.type.tensor_type.elem_type for i in model.graph.input} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    assert {t for n, t in types.items() if n != "topk_ids"} == {onnx.TensorProto.FLOAT}
    assert types.get("topk_ids", onnx.TensorProto.INT64) == onnx.TensorProto.INT64  # the step's own top-k ids
    kept = {n.op_type for n in model.graph.node if n.op_type in FP32_OPS}
    if graph == "decoder_step":
        assert "Softmax" in kept or "LogSoftmax" in kept
    fp32 = ort.InferenceSession(str(src))
    fp16 = ort.InferenceSession(str(dst), disabled_optimizers=["NchwcTransformer"])
    rng = np.random.RandomState(0)
    feed = {}
    for inp in fp32.get_inputs():
        shape = [2 if isinstance(d, str) else d for d in inp.shape]
        feed[inp.name] = (rng.randint(0, 5, size=shape).astype(np.int64) if inp.type == "tensor(int64)"
                          else rng.normal(0, 0.5, size=shape).astype(np.float32))
    for a, b in zip(fp32.run(None, feed), fp16.run(None, feed)):
        cos = float(np.dot(a.ravel(), b.ravel()) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        assert cos > 0.999
