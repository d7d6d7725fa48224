"""Fixtures shared across the suite: real bundles exported once per test session from the shipped
sample checkpoints (every variant), so runtime, validate and command tests run on the real thing."""
from pathlib import Path

import pytest


def _export(tmp_path_factory, checkpoint, name):
    from jetcap.export import ExportOptions, export_bundle

    out = tmp_path_factory.mktemp("bundles") / name
    export_bundle(ExportOptions(checkpoint=Path(checkpoint), out_dir=out, precisions=("fp32", "fp16", "int8")))
    return out


@pytest.fixture(scope="session")
def captioner_bundle(tmp_path_factory):
    """Bundle directory of the shipped sample captioner (fp32, fp16, int8)."""
    from jetcap import samples

    return _export(tmp_path_factory, samples.captioner_checkpoint(), "captioner")


@pytest.fixture(scope="session")
def classifier_bundle(tmp_path_factory):
    """Bundle directory of the shipped sample gesture classifier (fp32, fp16, int8)."""
    from jetcap import samples

    return _export(tmp_path_factory, samples.classifier_checkpoint(), "classifier")
