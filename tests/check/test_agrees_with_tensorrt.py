"""Wherever TensorRT exists (a Jetson, a workstation): a graph the pre-flight passes for that TensorRT
must parse with its real ONNX parser.  Skipped here: TensorRT cannot be installed on this project's
machines, and no fake ``tensorrt`` module stands in for it."""
import pytest

from jetcap.check import preflight_bundle
from jetcap.runtime.backends import trt_api
from jetcap.runtime.manifest import Manifest

pytestmark = [pytest.mark.trt, pytest.mark.skipif(not trt_api.tensorrt_available(),
                                                  reason="needs a real TensorRT (a Jetson or a workstation)")]


@pytest.mark.parametrize("name", ["captioner_bundle", "classifier_bundle"])
def test_what_the_preflight_passes_parses(request, name):
    from jetcap.runtime import engine

    bundle = request.getfixturevalue(name)
    version = trt_api.tensorrt_version()
    report = preflight_bundle(bundle, tensorrt=trt_api.format_version(version))
    manifest = Manifest.load(bundle)
    trt = trt_api.load_tensorrt()
    logger = trt_api.get_logger()
    builder = trt.Builder(logger)
    refused = {(f.precision, f.graph) for f in report.errors()}
    for precision in manifest.precisions:
        for graph in manifest.graph_names:
            if (precision, graph) in refused or (precision, None) in refused:
                continue
            engine.parse_onnx(builder, manifest.graph_path(precision, graph), version, logger)  # raises if not
