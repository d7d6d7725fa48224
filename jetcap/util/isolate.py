"""Run a crash-prone step (a first ONNX Runtime session on a new graph) in a child process (3.6).

Quantized and FP16 graphs have crashed ONNX Runtime itself (segfaults in graph optimizers).  A crash
inside jetcap's own process would kill it without a message; in a child it becomes an error we report.
"""
import io
import os
import signal
import subprocess
import sys

import numpy as np

_PROBE = """
import io
import sys
import numpy as np
from jetcap.runtime.backends.onnxruntime import make_session
# the NCHWc layout transformer and Q/DQ fusion as the runtime sets them (off for FP16 variants, and for
# the TensorRT Q/DQ variant, see make_session and fuses_qdq)
session = make_session(sys.argv[1], threads=1, nchwc=not sys.argv[1].endswith(".fp16.onnx"),
                       fuse_qdq=not sys.argv[1].endswith(".int8.onnx"))
if len(sys.argv) > 2:
    with np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False) as data:
        session.run(None, dict((name, data[name]) for name in data.files))
"""


def probe_onnx_session(path, feed=None, timeout=300):
    """Create an ONNX Runtime session for ``path`` (and run ``feed``) in a child process.

    Returns:
        None when it worked, else a one-line description of the failure (crash signal or error).
    """
    args = [sys.executable, "-c", _PROBE, str(path)]
    data = None
    if feed is not None:
        # the feed goes through the child's stdin, never a temporary file: a kill leaves nothing behind
        buffer = io.BytesIO()
        np.savez(buffer, **dict((str(name), np.asarray(value)) for name, value in feed.items()))
        data = buffer.getvalue()
        args.append("-")
    try:
        proc = subprocess.run(args, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "ONNX Runtime did not finish within {} s on {}".format(timeout, os.path.basename(str(path)))
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
