"""``jetcap build``: without TensorRT it exits 2 with one line naming what to install (click runner and
a real subprocess); with TensorRT (marker ``trt``) it builds and reuses engines."""
import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from jetcap.cli import cli
from jetcap.runtime.backends import trt_api
from runtime import tiny_bundle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_TRT = trt_api.tensorrt_available()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path, _ = tiny_bundle.make_linear_bundle(str(tmp_path_factory.mktemp("build") / "bundle"))
    return path


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_help_lists_the_options():
    result = CliRunner().invoke(cli, ["build", "--help"])
    assert result.exit_code == 0
    for option in ("--precision", "--workspace-mb", "--engine-cache", "--timing-cache", "--force",
                   "--allow-slow-int8", "--no-tactic-libraries", "--json"):
        assert option in result.output
    assert re.search(r"\[default:\s+fp16\]", result.output)


def test_bad_arguments_exit_2(bundle, tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["build", bundle, "--precision", "bf16"]).exit_code == 2
    assert runner.invoke(cli, ["build", bundle, "--workspace-mb", "0"]).exit_code == 2
    missing = runner.invoke(cli, ["build", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "bundle directory not found" in missing.output
    assert "Traceback" not in missing.output


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_click_runner(bundle):
    result = CliRunner().invoke(cli, ["build", bundle, "--precision", "fp16"])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error:") and "tensorrt" in lines[0].lower() and "JetPack" in lines[0]
    assert not os.path.exists(os.path.join(bundle, "engines"))


@pytest.mark.skipif(HAVE_TRT, reason="TensorRT is installed here")
def test_without_tensorrt_real_subprocess(bundle):
    result = subprocess.run([sys.executable, "-m", "jetcap", "build", bundle, "--json"], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert result.returncode == 2
    reply = json.loads(result.stdout)  # --json: the error as JSON on stdout, the one line on stderr
    assert reply["exit_code"] == 2 and "pip install tensorrt" in reply["error"]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "tensorrt" in lines[0].lower() and "pip install tensorrt" in lines[0]


def test_build_imports_neither_torch_nor_onnx(bundle):
    code = ("import sys; from click.testing import CliRunner; from jetcap.cli import cli; "
            "r = CliRunner().invoke(cli, ['build', sys.argv[1]]); "
            "print(r.exit_code, 'torch' in sys.modules, 'onnx' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, bundle], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    exit_code, torch_loaded, onnx_loaded = result.stdout.split()[-3:]
    assert (torch_loaded, onnx_loaded) == ("False", "False"), result.stdout
    assert exit_code == ("0" if HAVE_TRT else "2")


@pytest.mark.trt
@pytest.mark.skipif(not HAVE_TRT, reason="needs a real TensorRT installation")
def test_build_then_reuse(bundle, tmp_path):
    cache = str(tmp_path / "engines")
    args = ["build", bundle, "--precision", "fp32", "--engine-cache", cache, "--json"]
    first = subprocess.run([sys.executable, "-m", "jetcap"] + args, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, universal_newlines=True, timeout=600)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert [e["cached"] for e in report["engines"]] == [False] and os.path.isfile(report["engines"][0]["path"])
    assert "built in" in first.stderr
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0
    assert '"cached": true' in second.output
