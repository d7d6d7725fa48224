"""mypy over the TensorRT side of the runtime, against the tensorrt-stubs (TensorRT 10.x API)."""
import os
import subprocess
import sys

import pytest

from . import trt_stubs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = [
    "jetcap/runtime/backends/tensorrt.py",
    "jetcap/runtime/backends/trt_api.py",
    "jetcap/runtime/engine.py",
    "jetcap/runtime/platform.py",
    "jetcap/runtime/loader.py",
]


def _has_mypy():
    try:
        import mypy  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_mypy(), reason="mypy is not installed (pip install 'jetcap[dev]')")
def test_trt_code_type_checks_against_the_tensorrt_stubs(tmp_path):
    stubs = trt_stubs.write_repaired_stubs(str(tmp_path / "stubs"))
    if stubs is None:
        pytest.skip("tensorrt-stubs is not installed (pip install tensorrt-stubs)")
    env = dict(os.environ, MYPYPATH=stubs)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", str(tmp_path / "cache")] + FILES,
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=300)
    assert result.returncode == 0, result.stdout
    assert "Success" in result.stdout


def test_stub_repair_fixes_keyword_and_default_order():
    line = "    def f(self, in: list[int], out: list[int] = None, flag: int) -> int:"
    assert trt_stubs.repair_def_line(line) == \
        "    def f(self, in_: list[int], out: list[int] = None, flag: int = ...) -> int:"
    assert trt_stubs.repair("def g(x: dict[str, int], in: int) -> None: ...\n") == \
        "def g(x: dict[str, int], in_: int) -> None: ...\n"
