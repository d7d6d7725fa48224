"""Shared helpers of tests/triton_serving: the Triton venv (make triton-env) and running code in it.

(Not tests/triton: pytest puts tests/ on sys.path, and a package named ``triton`` there shadows the Triton
compiler that torch probes for with ``import triton``, breaking torch imports in the whole suite.)
"""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TRITON_PYTHON = Path(os.environ.get("JETCAP_TRITON_PYTHON", str(ROOT / ".venv-triton" / "bin" / "python")))


def triton_env():
    """Environment for the Triton venv's python: this checkout's jetcap first on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("VIRTUAL_ENV", None)
    return env


def triton_python_missing():
    """None when the Triton venv's python exists and has tritonclient, else why not."""
    if not TRITON_PYTHON.is_file():
        return "no {} (run: make triton-env)".format(TRITON_PYTHON)
    probe = subprocess.run([str(TRITON_PYTHON), "-c", "import tritonclient.grpc.model_config_pb2"],
                           capture_output=True, text=True, env=triton_env(), timeout=120)
    if probe.returncode != 0:
        return "tritonclient does not import in {}: {}".format(TRITON_PYTHON, probe.stderr.strip()[-300:])
    return None


def tritonserver_unrunnable():
    """None when PyTriton's tritonserver (or one on PATH) starts here (``--help``), else why not."""
    missing = triton_python_missing()
    if missing:
        return missing
    code = ("import subprocess, sys\n"
            "from jetcap.triton.server import find_tritonserver, server_env\n"
            "dist = find_tritonserver()\n"
            "r = subprocess.run([dist.binary, '--help'], env=server_env(dist), capture_output=True, text=True)\n"
            "text = r.stdout + r.stderr\n"
            "# --help prints the usage and exits non-zero; a loader failure (glibc, libraries) prints no usage\n"
            "sys.stdout.write(text[-400:]); sys.exit(0 if 'Usage: tritonserver' in text else 1)\n")
    probe = subprocess.run([str(TRITON_PYTHON), "-c", code], capture_output=True, text=True, env=triton_env(),
                           timeout=120)
    if probe.returncode != 0:
        return "tritonserver cannot run here: {}".format((probe.stdout + probe.stderr).strip()[-400:])
    return None


def run_in_triton_python(code, *args, timeout=300):
    """Run ``code`` with the Triton venv's python; its stdout parsed as JSON."""
    result = subprocess.run([str(TRITON_PYTHON), "-c", code] + [str(a) for a in args], capture_output=True,
                            text=True, env=triton_env(), timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


CHECK_CODE = ("import json, sys\n"
              "from jetcap.triton.check import check_repository\n"
              "print(json.dumps(dict((r, check_repository(r)) for r in sys.argv[1:])))\n")


def check_repositories(*repos):
    """``{repo: (summary, problems)}`` from parsing every config.pbtxt with Triton's ModelConfig message."""
    return run_in_triton_python(CHECK_CODE, *repos)
