"""The bundles of the shipped sample models: manifest, graphs that run over the dynamic ranges,
standard tooling, determinism."""
import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest

from jetcap.runtime.manifest import Manifest
from jetcap.util.fsio import sha256_file


POLYGRAPHY = os.path.join(os.path.dirname(sys.executable), "polygraphy")


def _feed(session, sizes, rng):
    feed = {}
    for inp in session.get_inputs():
        shape = [sizes[d] if isinstance(d, str) else d for d in inp.shape]
        if inp.type == "tensor(int64)":
            feed[inp.name] = rng.randint(0, 5, size=shape).astype(np.int64)
        else:
            feed[inp.name] = rng.normal(0, 0.5, size=shape).astype(np.float32)
    return feed


def test_manifest_tells_the_runtime_everything(captioner_bundle, classifier_bundle):
    cap = Manifest.load(captioner_bundle)
    assert cap.family == "captioner"
    assert cap.graph_names == ["encoder", "decoder_step"]
    assert cap.precisions == ["fp32", "fp16", "int8"]
    assert [t["name"] for t in cap.graph("decoder_step")["inputs"]] == ["prev_word", "h", "c", "features", "projected"]
    assert cap.graph("encoder")["inputs"][0]["shape"][0] == "batch"
    assert cap.axes["batch"] == {"min": 1, "opt": 1, "max": 8}
    assert cap.preprocessing["image_size"] == [96, 96] and len(cap.preprocessing["mean"]) == 3
    vocab = cap.vocabulary()
    assert vocab.decode(vocab.encode("a small red circle")) == "a small red circle"
    assert cap.data["export"] == {**cap.data["export"], "opset": 13, "exporter": "torchscript"}
    assert set(cap.data["created_by"]) >= {"jetcap", "torch", "onnx", "onnxruntime", "onnxslim"}
    assert len(cap.data["source"]["sha256"]) == 64
    for precision in cap.precisions:
        assert cap.data["validation"][precision]["passed"]
        for graph in cap.graph_names:
            cap.verify_file(precision, graph)
    cls = Manifest.load(classifier_bundle)
    assert cls.labels == ["wave", "swipe_left", "swipe_right", "circle", "pinch", "point"]
    assert cls.axes["T"]["max"] == cls.config["max_len"]
    assert cls.graph("model")["inputs"][0]["shape"] == ["batch", "T", 63]


@pytest.mark.parametrize("batch", [1, 4])
def test_captioner_graphs_run_at_several_batches(captioner_bundle, batch):
    rng = np.random.RandomState(batch)
    for precision in ("", ".fp16", ".int8"):
        for graph in ("encoder", "decoder_step"):
            session = ort.InferenceSession(str(captioner_bundle / "{}{}.onnx".format(graph, precision)),
                                           disabled_optimizers=["NchwcTransformer"])
            outputs = session.run(None, _feed(session, {"batch": batch}, rng))
            assert all(o.shape[0] == batch and np.all(np.isfinite(o)) for o in outputs)


@pytest.mark.parametrize("batch,length", [(1, 1), (4, 17), (2, 64), (1, 128)])
def test_classifier_graph_runs_at_several_lengths(classifier_bundle, batch, length):
    session = ort.InferenceSession(str(classifier_bundle / "model.onnx"))
    logits, attention = session.run(None, _feed(session, {"batch": batch, "T": length}, np.random.RandomState(0)))
    assert logits.shape == (batch, 6) and attention.shape == (batch, length, length)


def test_polygraphy_inspects_every_graph(captioner_bundle, classifier_bundle):
    for path in sorted(captioner_bundle.glob("*.onnx")) + sorted(classifier_bundle.glob("*.onnx")):
        proc = subprocess.run([POLYGRAPHY, "inspect", "model", str(path)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
        assert proc.returncode == 0, proc.stdout[-2000:]
        assert "Model:" in proc.stdout or "==== ONNX Model ====" in proc.stdout


def test_reference_data_holds_pytorch_captions(captioner_bundle):
    from jetcap.util.npz import load_npz

    ref = load_npz(captioner_bundle / "reference.npz")
    assert ref["task/images"].shape[1:] == (3, 96, 96)
    assert ref["task/greedy_tokens"].shape[0] == len(ref["task/names"])
    manifest = json.loads((captioner_bundle / "manifest.json").read_text())
    assert manifest["reference"]["sha256"] == sha256_file(captioner_bundle / "reference.npz")
    names = {c["name"] for c in manifest["reference"]["cases"]["encoder"]}
    assert {"random_batch1", "random_batch8", "real_batch1", "real_batch8"} <= names
