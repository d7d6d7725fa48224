"""Both sample bundles (exported once per session by tests/conftest.py) against TensorRT 8.2 / the Nano."""
import pytest

from jetcap.check import preflight_bundle


@pytest.mark.parametrize("name", ["captioner_bundle", "classifier_bundle"])
def test_sample_bundles_pass_the_82_preflight(request, name):
    bundle = request.getfixturevalue(name)
    report = preflight_bundle(bundle, tensorrt="8.2", precisions=["fp32", "fp16"])
    assert report, report.to_text()
    assert {f.rule for f in report.warnings()} <= {"dtype.int64"}
    nano = preflight_bundle(bundle, target="nano", precisions=["fp32", "fp16"])
    assert nano, nano.to_text()
    assert all(entry["verdict"] == "fits" for entry in nano.memory["precisions"])


@pytest.mark.parametrize("name", ["captioner_bundle", "classifier_bundle"])
def test_sample_int8_variants_pass_the_82_preflight(request, name):
    report = preflight_bundle(request.getfixturevalue(name), tensorrt="8.2", precisions=["int8"])
    assert report, report.to_text()
