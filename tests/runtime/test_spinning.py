"""Which ONNX Runtime thread pools spin: one caller (caption, bench) against a server."""
import io

from jetcap.runtime.backends.onnxruntime import bundle_runners, spinning_policy
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.serving import JsonLog, ModelState
from jetcap.serve.options import ServeOptions


def test_single_caller_policy_spins_the_step_and_single_graphs_only():
    assert spinning_policy(["encoder", "decoder_step"], "decoder_step")
    assert not spinning_policy(["encoder", "decoder_step"], "encoder")
    assert spinning_policy(["classifier"], "classifier")


def test_a_bool_decides_for_every_graph():
    for graph in ("encoder", "decoder_step"):
        assert spinning_policy(["encoder", "decoder_step"], graph, spinning=False) is False
        assert spinning_policy(["encoder", "decoder_step"], graph, spinning=True) is True


def test_bundle_runners_take_the_policy(captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    default = bundle_runners(manifest, "fp32")
    assert {g: r.spinning for g, r in default.items()} == {"encoder": False, "decoder_step": True}
    assert not any(r.spinning for r in bundle_runners(manifest, "fp32", spinning=False).values())


def test_served_bundles_never_spin(captioner_bundle, classifier_bundle):
    # a server's request threads need the cores a spinning pool would hold (docs/BENCHMARKS.md)
    for bundle in (captioner_bundle, classifier_bundle):
        model = ModelState(bundle, ServeOptions(port=0), JsonLog(io.StringIO()))
        model.load()
        try:
            assert model.ready, model.reason
            assert model.session.runners and not any(r.spinning for r in model.session.runners.values())
        finally:
            model.close()
