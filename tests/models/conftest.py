"""Tiny real models (session-scoped) and checkpoint builders for the checkpoint-loading tests."""
import os
import subprocess
import sys

import pytest
import torch

from .ckpt_helpers import CAPTIONER_CONFIG, CLASSIFIER_CONFIG, SAT_SCRIPT


@pytest.fixture(scope="session")
def captioner_ref():
    """A tiny captioner (mobilenet_v3_small trunk, 64x64 images, grid 2) with seeded random weights."""
    from jetcap.models.captioner import MobileNetCaptioningModel

    torch.manual_seed(0)
    return MobileNetCaptioningModel(**CAPTIONER_CONFIG).eval()


@pytest.fixture(scope="session")
def classifier_ref():
    """A tiny sequence classifier (6 features, 3 classes, hidden 16, 2 heads) with seeded random weights."""
    from jetcap.models.classifier import SequenceClassifier

    torch.manual_seed(1)
    return SequenceClassifier(**CLASSIFIER_CONFIG).eval()


@pytest.fixture(scope="session")
def images():
    torch.manual_seed(2)
    return torch.randn(2, 3, 64, 64)


@pytest.fixture(scope="session")
def sequences():
    torch.manual_seed(3)
    return torch.randn(2, 10, CLASSIFIER_CONFIG["input_size"])


@pytest.fixture(scope="session")
def sat_checkpoints(tmp_path_factory):
    """Checkpoints written by a real training script run as ``__main__`` in a subprocess.

    Returns ``(code_dir, out_dir)``; out_dir holds sat_main.pth.tar (modules + optimizer pickled from
    __main__), whole_main.pt (the whole model object), sat_module.pth.tar (classes of module train_sat),
    sat_quantized.pth.tar (a pickled dynamically quantized decoder) and the reference state_dicts.
    """
    code = tmp_path_factory.mktemp("sat_code")
    out = tmp_path_factory.mktemp("sat_out")
    (code / "train_sat.py").write_text(SAT_SCRIPT)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    subprocess.run([sys.executable, "train_sat.py", str(out)], cwd=str(code), env=env, check=True, timeout=300)
    return code, out
