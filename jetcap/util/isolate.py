"""Run a crash-prone step (a first ONNX Runtime session on a new graph) in a child process (3.6).

Quantized and FP16 graphs have crashed ONNX Runtime itself (segfaults in graph optimizers).  A crash
inside jetcap's own process would kill it without a message; in a child it becomes an error we report.
"""
import os
import signal
import subprocess
import sys
import tempfile

from jetcap.util.npz import save_npz

_PROBE = """
import sys
from jetcap.runtime.backends.onnxruntime import make_session
from jetcap.util.npz import load_npz
session = make_session(sys.argv[1], threads=1)
if len(sys.argv) > 2:
    session.run(None, load_npz(sys.argv[2]))
"""


def probe_onnx_session(path, feed=None, timeout=300):
    """Create an ONNX Runtime session for ``path`` (and run ``feed``) in a child process.

    Returns:
        None when it worked, else a one-line description of the failure (crash signal or error).
    """
    args = [sys.executable, "-c", _PROBE, str(path)]
    tmp = None
    try:
        if feed is not None:
            handle, tmp = tempfile.mkstemp(suffix=".npz")
            os.close(handle)
            save_npz(tmp, feed, compress=False)
            args.append(tmp)
        try:
            proc = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "ONNX Runtime did not finish within {} s on {}".format(timeout, os.path.basename(str(path)))
    finally:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        try:
            name = signal.Signals(-proc.returncode).name
        except ValueError:
            name = "signal {}".format(-proc.returncode)
        return "ONNX Runtime crashed ({}) loading/running {}".format(name, os.path.basename(str(path)))
    lines = [l for l in proc.stderr.decode("utf-8", "replace").strip().splitlines() if l.strip()]
    return "ONNX Runtime failed on {}: {}".format(os.path.basename(str(path)), lines[-1] if lines else "exit {}".format(proc.returncode))
