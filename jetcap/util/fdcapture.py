"""Silence what native code prints: the TorchScript exporter dumps its IR straight to file descriptor
1 when it fails (hundreds of KB), past Python's ``sys.stdout``, which would break ``--json`` output."""
import contextlib
import io
import os
import sys
import tempfile


@contextlib.contextmanager
def silenced_output(fds=(1, 2)):
    """Within the block, OS-level ``fds`` and Python's stdout/stderr go to a temporary file that is
    discarded after; yields nothing.  Python 3.6 compatible."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with tempfile.TemporaryFile() as sink:
        saved = []
        try:
            for fd in fds:
                saved.append((fd, os.dup(fd)))
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                yield
        finally:
            for fd, copy in reversed(saved):
                os.dup2(copy, fd)
                os.close(copy)
