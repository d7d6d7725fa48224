"""Tiny but valid jetcap bundles built with onnx.helper, for runtime/engine/loader/build tests.

Two kinds:

* :func:`make_linear_bundle`: one graph ``model`` (``x (batch, 4) -> y = relu(x W) (batch, 3)``) with fp32,
  fp16 (FP16 weights, FP32 I/O) and int8 (Q/DQ, zero point 0) variants.
* :func:`make_captioner_like_bundle`: an ``encoder`` and a ``decoder_step`` graph with the captioner's
  I/O names (prev_word, h, c, features, projected -> log_probs, h_new, c_new, alpha), fp32 only.

Real ONNX files (checked with onnx.checker) and a real manifest; no torch.  Python 3.6 compatible, so
the TensorRT tests that use these bundles also run on a JetPack 4.6 device (with ``onnx`` installed).
"""
import os

import numpy as np
import pytest

# on a Jetson: pip3 install onnx (only these test bundles need it, never jetcap's runtime)
onnx = pytest.importorskip("onnx", reason="onnx is needed to write the test bundles")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from jetcap.util.fsio import sha256_file, write_json_atomic

OPSET = 13


def _save(model, path):
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _model(nodes, inputs, outputs, initializers, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="jetcap-tests")
    model.ir_version = 7
    return model


def _linear_model(weights, precision):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    if precision == "fp32":
        nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Relu", ["xw"], ["y"])]
        inits = [numpy_helper.from_array(weights, "W")]
    elif precision == "fp16":
        nodes = [
            helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16),
            helper.make_node("MatMul", ["x16", "W"], ["xw"]),
            helper.make_node("Relu", ["xw"], ["y16"]),
            helper.make_node("Cast", ["y16"], ["y"], to=TensorProto.FLOAT),
        ]
        inits = [numpy_helper.from_array(weights.astype(np.float16), "W")]
    else:  # int8: symmetric Q/DQ (zero point 0), the form TensorRT reads
        w_scale = np.float32(np.abs(weights).max() / 127.0)
        w_q = np.clip(np.round(weights / w_scale), -127, 127).astype(np.int8)
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "x_scale", "zero"], ["xq"]),
            helper.make_node("DequantizeLinear", ["xq", "x_scale", "zero"], ["xdq"]),
            helper.make_node("DequantizeLinear", ["Wq", "w_scale", "zero"], ["Wdq"]),
            helper.make_node("MatMul", ["xdq", "Wdq"], ["xw"]),
            helper.make_node("Relu", ["xw"], ["y"]),
        ]
        inits = [
            numpy_helper.from_array(np.array(4.0 / 127.0, dtype=np.float32), "x_scale"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "zero"),
            numpy_helper.from_array(w_q, "Wq"),
            numpy_helper.from_array(np.array(w_scale, dtype=np.float32), "w_scale"),
        ]
    return _model(nodes, [x], [y], inits, "linear_" + precision)


def _write_manifest(bundle_dir, graphs, axes, files, family="classifier", config=None, extra=None):
    variants = {}
    for precision, per_graph in files.items():
        variants[precision] = {"files": dict(
            (graph, {"path": rel, "sha256": sha256_file(os.path.join(bundle_dir, rel)),
                     "bytes": os.path.getsize(os.path.join(bundle_dir, rel))})
            for graph, rel in per_graph.items())}
    manifest = {
        "format": "jetcap-bundle", "format_version": 1, "family": family,
        "created_by": {"jetcap": "tests"}, "export": {"opset": OPSET, "exporter": "onnx.helper"},
        "config": config or {}, "graphs": graphs, "axes": axes, "variants": variants,
    }
    manifest.update(extra or {})
    write_json_atomic(os.path.join(bundle_dir, "manifest.json"), manifest)
    return manifest


def make_linear_bundle(bundle_dir, precisions=("fp32", "fp16", "int8"), max_batch=8, seed=0):
    """Write the one-graph bundle into ``bundle_dir``; returns ``(bundle_dir, weights)``."""
    os.makedirs(bundle_dir, exist_ok=True)
    weights = np.random.RandomState(seed).uniform(-1, 1, size=(4, 3)).astype(np.float32)
    files = {}
    for precision in precisions:
        rel = "model.{}.onnx".format(precision)
        _save(_linear_model(weights, precision), os.path.join(bundle_dir, rel))
        files[precision] = {"model": rel}
    graphs = {"model": {"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
                        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 3]}]}}
    axes = {"batch": {"min": 1, "opt": 1, "max": max_batch}}
    _write_manifest(bundle_dir, graphs, axes, files, config={"input_size": 4, "num_classes": 3})
    return bundle_dir, weights


# -- captioner-like ------------------------------------------------------------------------------
DIMS = {"C": 6, "P": 4, "A": 5, "D": 8, "V": 7}


def _const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _encoder_model(rng):
    C, P, A, D = DIMS["C"], DIMS["P"], DIMS["A"], DIMS["D"]
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 4, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (
        ("features", ["batch", P, C]), ("projected", ["batch", P, A]), ("h0", ["batch", D]), ("c0", ["batch", D]))]
    nodes = [
        helper.make_node("Flatten", ["images"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "We"], ["enc"]),
        helper.make_node("Relu", ["enc"], ["enc_relu"]),
        helper.make_node("Reshape", ["enc_relu", "feat_shape"], ["features"]),
        helper.make_node("MatMul", ["features", "Wp"], ["projected"]),
        helper.make_node("ReduceMean", ["features"], ["mean"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["mean", "Wh"], ["h_pre"]),
        helper.make_node("Tanh", ["h_pre"], ["h0"]),
        helper.make_node("MatMul", ["mean", "Wc"], ["c0"]),
    ]
    inits = [
        _const("We", rng.normal(0, 0.3, (48, P * C)).astype(np.float32)),
        _const("feat_shape", np.array([0, P, C], dtype=np.int64)),
        _const("Wp", rng.normal(0, 0.5, (C, A)).astype(np.float32)),
        _const("Wh", rng.normal(0, 0.5, (C, D)).astype(np.float32)),
        _const("Wc", rng.normal(0, 0.5, (C, D)).astype(np.float32)),
    ]
    return _model(nodes, [images], outs, inits, "encoder")


def _step_model(rng):
    C, P, A, D, V = DIMS["C"], DIMS["P"], DIMS["A"], DIMS["D"], DIMS["V"]
    inputs = [
        helper.make_tensor_value_info("prev_word", TensorProto.INT64, ["batch"]),
        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", D]),
        helper.make_tensor_value_info("c", TensorProto.FLOAT, ["batch", D]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", P, C]),
        helper.make_tensor_value_info("projected", TensorProto.FLOAT, ["batch", P, A]),
    ]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in (
        ("log_probs", ["batch", V]), ("h_new", ["batch", D]), ("c_new", ["batch", D]), ("alpha", ["batch", P]))]
    nodes = [
        helper.make_node("Gather", ["E", "prev_word"], ["emb"], axis=0),
        helper.make_node("MatMul", ["h", "Wa"], ["query"]),
        helper.make_node("Unsqueeze", ["query", "axis1"], ["query3"]),
        helper.make_node("Mul", ["projected", "query3"], ["match"]),
        helper.make_node("ReduceSum", ["match", "axis2"], ["score"], keepdims=0),
        helper.make_node("Softmax", ["score"], ["alpha"], axis=1),
        helper.make_node("Unsqueeze", ["alpha", "axis2"], ["alpha3"]),
        helper.make_node("Mul", ["features", "alpha3"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axis1"], ["context"], keepdims=0),
        helper.make_node("MatMul", ["context", "Wctx"], ["ctx_d"]),
        helper.make_node("Add", ["c", "ctx_d"], ["c_sum"]),
        helper.make_node("Add", ["c_sum", "emb"], ["c_pre"]),
        helper.make_node("Tanh", ["c_pre"], ["c_new"]),
        helper.make_node("MatMul", ["h", "Whh"], ["hh"]),
        helper.make_node("Add", ["hh", "c_new"], ["h_pre"]),
        helper.make_node("Tanh", ["h_pre"], ["h_new"]),
        helper.make_node("MatMul", ["h_new", "Wo"], ["logits"]),
        helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=1),
    ]
    inits = [
        _const("E", rng.normal(0, 1.0, (V, D)).astype(np.float32)),
        _const("Wa", rng.normal(0, 0.5, (D, A)).astype(np.float32)),
        _const("axis1", np.array([1], dtype=np.int64)),
        _const("axis2", np.array([2], dtype=np.int64)),
        _const("Wctx", rng.normal(0, 0.5, (C, D)).astype(np.float32)),
        _const("Whh", rng.normal(0, 0.5, (D, D)).astype(np.float32)),
        _const("Wo", rng.normal(0, 1.5, (D, V)).astype(np.float32)),
    ]
    return _model(nodes, inputs, outputs, inits, "decoder_step")


def make_captioner_like_bundle(bundle_dir, max_batch=6, seed=0):
    """Write the two-graph captioner-like bundle (fp32) into ``bundle_dir``; returns ``bundle_dir``."""
    os.makedirs(bundle_dir, exist_ok=True)
    rng = np.random.RandomState(seed)
    _save(_encoder_model(rng), os.path.join(bundle_dir, "encoder.onnx"))
    _save(_step_model(rng), os.path.join(bundle_dir, "decoder_step.onnx"))
    C, P, A, D, V = DIMS["C"], DIMS["P"], DIMS["A"], DIMS["D"], DIMS["V"]

    def spec(name, dtype, shape):
        return {"name": name, "dtype": dtype, "shape": shape}

    graphs = {
        "encoder": {"inputs": [spec("images", "float32", ["batch", 3, 4, 4])],
                    "outputs": [spec("features", "float32", ["batch", P, C]),
                                spec("projected", "float32", ["batch", P, A]),
                                spec("h0", "float32", ["batch", D]), spec("c0", "float32", ["batch", D])]},
        "decoder_step": {"inputs": [spec("prev_word", "int64", ["batch"]), spec("h", "float32", ["batch", D]),
                                    spec("c", "float32", ["batch", D]),
                                    spec("features", "float32", ["batch", P, C]),
                                    spec("projected", "float32", ["batch", P, A])],
                         "outputs": [spec("log_probs", "float32", ["batch", V]),
                                     spec("h_new", "float32", ["batch", D]),
                                     spec("c_new", "float32", ["batch", D]),
                                     spec("alpha", "float32", ["batch", P])]},
    }
    axes = {"batch": {"min": 1, "opt": 1, "max": max_batch}}
    files = {"fp32": {"encoder": "encoder.onnx", "decoder_step": "decoder_step.onnx"}}
    _write_manifest(bundle_dir, graphs, axes, files, family="captioner",
                    config={"vocab_size": V, "decoder_dim": D}, extra={"decoding": {"max_len": 6, "beam_size": 3}})
    return bundle_dir
