"""INT8 Q/DQ variants as TensorRT needs them: symmetric (zero points 0), per-channel, recurrence in float."""
import json

import numpy as np
import onnx


def _int8_model(bundle, graph):
    return onnx.load(str(bundle / "{}.int8.onnx".format(graph)))


def test_zero_points_are_zero_and_opset_is_13(captioner_bundle, classifier_bundle):
    for bundle, graphs in ((captioner_bundle, ("encoder", "decoder_step")), (classifier_bundle, ("model",))):
        for graph in graphs:
            model = _int8_model(bundle, graph)
            assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 13
            # activations and weights int8; biases (ORT names them *_quantized_zero_point) int32
            zps = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                   if t.name.endswith("zero_point") and not t.name.endswith("_quantized_zero_point")]
            biases = [onnx.numpy_helper.to_array(t) for t in model.graph.initializer
                      if t.name.endswith("_quantized_zero_point")]
            assert all(b.dtype == np.int32 and not np.any(b) for b in biases)
            assert zps, "no Q/DQ zero points in {}".format(graph)
            assert all(not np.any(z) for z in zps)
            assert all(z.dtype == np.int8 for z in zps)


def test_per_channel_weights_and_recurrence_left_float(captioner_bundle, classifier_bundle):
    enc = _int8_model(captioner_bundle, "encoder")
    per_channel = [n for n in enc.graph.node if n.op_type == "DequantizeLinear"
                   and any(a.name == "axis" for a in n.attribute)]
    assert per_channel, "conv weights should be quantized per channel"
    step = _int8_model(captioner_bundle, "decoder_step")
    producer = {o: n.op_type for n in step.graph.node for o in n.output}
    recurrent = [n for n in step.graph.node if "decode_step" in n.name and n.op_type in ("Gemm", "MatMul")]
    assert recurrent
    for node in recurrent:  # the LSTMCell sees float state and float weights
        assert not any(producer.get(i) == "DequantizeLinear" for i in node.input), node.name
    for output in ("h_new", "c_new"):  # the state carried to the next step is not fake-quantized
        assert producer.get(output) != "DequantizeLinear"
    cls = _int8_model(classifier_bundle, "model")
    producer = {o: n.op_type for n in cls.graph.node for o in n.output}
    lstm_inputs = [i for n in cls.graph.node if n.op_type == "LSTM" for i in n.input[1:3]]  # W, R
    assert lstm_inputs and not any(producer.get(i) == "DequantizeLinear" for i in lstm_inputs)


def test_activations_are_quantized_only_at_weighted_op_inputs(captioner_bundle, classifier_bundle):
    """TensorRT's Q/DQ placement: activations are rounded where a Conv/Gemm/MatMul reads them, not at
    their outputs (a pre-ReLU tensor, a residual branch before its Add stay float), and no other reader
    nor a graph output (``features``, ``h0``) sees the rounding."""
    for bundle, graphs in ((captioner_bundle, ("encoder", "decoder_step")), (classifier_bundle, ("model",))):
        for graph in graphs:
            model = _int8_model(bundle, graph)
            weights = {t.name for t in model.graph.initializer}
            consumers = {}
            for node in model.graph.node:
                for name in node.input:
                    consumers.setdefault(name, []).append(node)
            activation_qs = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights]
            assert activation_qs, graph
            for q in activation_qs:
                dqs = consumers[q.output[0]]
                assert dqs and all(d.op_type == "DequantizeLinear" for d in dqs), q.name
                readers = [c for d in dqs for c in consumers.get(d.output[0], [])]
                assert readers and all(r.op_type in ("Conv", "Gemm", "MatMul") for r in readers), (
                    q.name, [r.op_type for r in readers])
            producer = {o: n for n in model.graph.node for o in n.output}
            assert not any(producer[o.name].op_type == "DequantizeLinear" for o in model.graph.output), graph


def test_manifest_records_calibration(captioner_bundle):
    manifest = json.loads((captioner_bundle / "manifest.json").read_text())
    int8 = manifest["variants"]["int8"]
    assert int8["calibration"]["method"] == "minmax"
    assert int8["quantization"]["activations"] == "int8 symmetric"
