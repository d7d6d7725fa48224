"""The code that runs on a JetPack 4.6 device must stay Python 3.6 compatible (checked with vermin)."""
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PATHS = ["jetcap/runtime", "jetcap/serve", "jetcap/util", "jetcap/check", "jetcap/errors.py", "jetcap/cli.py",
         "jetcap/commands",
         "jetcap/__init__.py", "jetcap/__main__.py", "jetcap/validate", "jetcap/samples/__init__.py",
         "jetcap/samples/shapes.py", "jetcap/samples/gestures.py"]


def _vermin():
    candidate = os.path.join(os.path.dirname(sys.executable), "vermin")
    return candidate if os.path.isfile(candidate) else shutil.which("vermin")


@pytest.mark.skipif(_vermin() is None, reason="vermin is not installed (pip install 'jetcap[dev]')")
def test_device_code_needs_at_most_python_36():
    paths = [p for p in PATHS if os.path.exists(os.path.join(ROOT, p))]
    result = subprocess.run([_vermin(), "--no-tips", "--violations", "-t=3.6-"] + paths, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stdout
