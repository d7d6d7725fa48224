"""The TensorRT Q/DQ variant runs in ONNX Runtime as the Q/DQ graph specifies, on every CPU.

ONNX Runtime fuses DQ -> MatMul -> Q into its CPU int8 kernels; without AVX-512 VNNI the AVX2 u8s8
kernel adds pairs of u8 x s8 products in saturating int16, so the result depends on the CPU (and differs
from TensorRT's exact int32 accumulation).  Unfused, the graph computes the arithmetic written in it.
The values here are chosen so that one pair of products (2 x 255 x 127) exceeds int16.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from jetcap.runtime.backends.onnxruntime import bundle_runners, fuses_qdq, make_session, variant_options  # noqa: E402
from jetcap.runtime.manifest import Manifest  # noqa: E402

X_SCALE = np.float32(0.05)


def _qdq_matmul(path, weights, w_scales):
    """x -> Q -> DQ -> MatMul(DQ(int8 weights, per output column)) -> y, opset 13."""
    k, n = weights.shape
    q_weights = np.clip(np.round(weights / w_scales), -127, 127).astype(np.int8)
    inits = [
        numpy_helper.from_array(np.array(X_SCALE, dtype=np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), "x_zero"),
        numpy_helper.from_array(q_weights, "w_q"),
        numpy_helper.from_array(w_scales.astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(n, dtype=np.int8), "w_zero"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=1),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return q_weights


def test_unfused_qdq_computes_the_graphs_arithmetic(tmp_path):
    k, n = 64, 16
    rng = np.random.default_rng(0)
    weights = np.where(rng.random((k, n)) < 0.5, -1.0, 1.0).astype(np.float32) * 0.5
    w_scales = np.full(n, 0.5 / 127, dtype=np.float32)
    q_weights = _qdq_matmul(tmp_path / "m.int8.onnx", weights, w_scales)
    x = np.full((2, k), 6.3, dtype=np.float32)  # quantizes to 126: with weights at +-127, pairs overflow int16
    x[1, ::2] = -6.3
    x_q = np.clip(np.round(x / X_SCALE), -128, 127)
    expected = (x_q * X_SCALE).astype(np.float64) @ (q_weights * w_scales.astype(np.float64))
    session = make_session(tmp_path / "m.int8.onnx", providers=["CPUExecutionProvider"], fuse_qdq=False)
    (y,) = session.run(None, {"x": x})
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-4)


def test_only_the_tensorrt_qdq_variant_runs_unfused(captioner_bundle):
    assert not fuses_qdq("int8")
    assert all(fuses_qdq(p) for p in ("fp32", "fp16", "int8-cpu"))
    assert variant_options("int8") == {"nchwc": True, "fuse_qdq": False}
    assert variant_options("fp16") == {"nchwc": False, "fuse_qdq": True}
    manifest = Manifest.load(captioner_bundle)
    assert all(not r.fuse_qdq for r in bundle_runners(manifest, "int8").values())
    assert all(r.fuse_qdq for r in bundle_runners(manifest, "fp32").values())
