"""Find and run a local ``tritonserver`` (``jetcap serve-triton``): PyTriton's build or a system Triton.

``nvidia-pytriton`` ships a ``tritonserver`` binary with only the Python backend (CPU).  Its Python
backend stub is built per Python version and is not in the backend directory: :func:`prepare_backends`
assembles a backend directory with the stub of *this* interpreter, and :func:`server_env` lets the stub
find this interpreter's ``libpython`` (sysconfig's LIBDIR) and the binary its bundled libraries
(``nvidia_pytriton.libs``); without them every Python model fails to load.

The server listens on 127.0.0.1 only.  :class:`TritonServer` starts it, waits for ``/v2/health/ready``
and stops it with SIGTERM (Triton unloads the models and exits 0).
"""
import collections
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request

from jetcap.errors import JetcapError, MissingDependencyError, UsageError

TritonDist = collections.namedtuple("TritonDist", ["binary", "python_backend", "stub", "libs", "caches", "origin"])
TritonDist.__doc__ = """Where a Triton build lives: the binary, its Python backend directory, the Python stub
for this interpreter (None: already in the backend directory), extra library directory (or None), the
cache directory (or None) and ``origin`` ("pytriton", "system" or "explicit")."""

LOOPBACK = "127.0.0.1"
SYSTEM_BACKENDS = "/opt/tritonserver/backends"
INSTALL_HINT = "make triton-env, then run .venv-triton/bin/jetcap serve-triton (nvidia-pytriton ships tritonserver)"


class TritonServerError(JetcapError):
    """tritonserver could not start, got not ready in time, or exited."""


def _pytriton_dist():
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    server_dir = os.path.join(root, "tritonserver")
    binary = os.path.join(server_dir, "bin", "tritonserver")
    if not os.path.isfile(binary):
        return None
    stub = os.path.join(server_dir, "python_backend_stubs", "{}.{}".format(*sys.version_info[:2]),
                        "triton_python_backend_stub")
    if not os.path.isfile(stub):
        raise MissingDependencyError("nvidia-pytriton has no Python backend stub for Python {}.{}".format(
            *sys.version_info[:2]), hint="use a Python that nvidia-pytriton supports (3.8-3.13)")
    libs = os.path.join(os.path.dirname(root), "nvidia_pytriton.libs")
    caches = os.path.join(server_dir, "caches")
    return TritonDist(binary, os.path.join(server_dir, "backends", "python"), stub,
                      libs if os.path.isdir(libs) else None, caches if os.path.isdir(caches) else None, "pytriton")


def find_tritonserver(binary=None):
    """The :class:`TritonDist` to run: ``binary`` when given, else PyTriton's, else ``tritonserver`` on PATH.

    Raises:
        MissingDependencyError: none found (with the install hint).
    """
    if binary:
        if not os.path.isfile(binary):
            raise UsageError("tritonserver binary not found: {}".format(binary))
        backends = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(binary))), "backends")
        return TritonDist(binary, os.path.join(backends if os.path.isdir(backends) else SYSTEM_BACKENDS, "python"),
                          None, None, None, "explicit")
    dist = _pytriton_dist()
    if dist is not None:
        return dist
    found = shutil.which("tritonserver")
    if found:
        return TritonDist(found, os.path.join(SYSTEM_BACKENDS, "python"), None, None, None, "system")
    raise MissingDependencyError("no tritonserver found (nvidia-pytriton is not installed in this Python and "
                                 "tritonserver is not on PATH)", hint=INSTALL_HINT)


def prepare_backends(dist, workdir):
    """A backend directory under ``workdir`` whose ``python/`` has the stub for this interpreter.

    A system Triton's backend directory is used as it is (its stub is built for its own Python).
    """
    if dist.stub is None:
        return os.path.dirname(dist.python_backend)
    target = os.path.join(workdir, "backends", "python")
    shutil.copytree(dist.python_backend, target, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(dist.stub, os.path.join(target, "triton_python_backend_stub"))
    return os.path.dirname(target)


def server_env(dist, base=None):
    """Environment for tritonserver: LD_LIBRARY_PATH with this Python's LIBDIR and the dist's libraries,
    PATH starting with this interpreter's bin directory (the stub's Python environment)."""
    env = dict(os.environ if base is None else base)
    paths = [p for p in (sysconfig.get_config_var("LIBDIR"), dist.libs) if p]
    if env.get("LD_LIBRARY_PATH"):
        paths.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = ":".join(paths)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


EXIT_TIMEOUT_S = 10


def server_command(dist, repository, backend_dir, http_port, grpc_port, metrics_port, verbose=0):
    """The tritonserver command line serving ``repository`` (a path or a list of paths) on 127.0.0.1.

    On SIGTERM Triton waits up to :data:`EXIT_TIMEOUT_S` for in-flight requests and open client
    connections before unloading the models.
    """
    repositories = [repository] if isinstance(repository, str) else list(repository)
    command = [dist.binary]
    for path in repositories:
        command += ["--model-repository", os.path.abspath(str(path))]
    command += [
        "--backend-directory", backend_dir,
        "--http-address", LOOPBACK, "--http-port", str(http_port),
        "--grpc-address", LOOPBACK, "--grpc-port", str(grpc_port),
        "--metrics-address", LOOPBACK, "--metrics-port", str(metrics_port),
        "--exit-on-error", "true", "--strict-readiness", "true", "--log-verbose", str(int(verbose)),
        "--exit-timeout-secs", str(EXIT_TIMEOUT_S),
    ]
    if dist.caches:
        command += ["--cache-directory", dist.caches]
    return command


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    import socket

    sock = socket.socket()
    try:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


class TritonServer(object):
    """A local tritonserver process serving ``repository`` (a context manager).

    Args:
        repository: the model repository (``jetcap triton-repo``), or a list of them.
        workdir: scratch directory for the prepared backends (must exist).
        http_port, grpc_port, metrics_port: ports on 127.0.0.1 (default: free ones).
        binary: a tritonserver binary (default: see :func:`find_tritonserver`).
        log_path: where the server's stdout/stderr go (default ``workdir/tritonserver.log``).
        verbose: Triton's ``--log-verbose`` level (default 0).
    """

    def __init__(self, repository, workdir, http_port=None, grpc_port=None, metrics_port=None, binary=None,
                 log_path=None, verbose=0):
        self.repository = repository
        self.dist = find_tritonserver(binary)
        self.backend_dir = prepare_backends(self.dist, workdir)
        self.http_port = http_port or free_port()
        self.grpc_port = grpc_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log_path = log_path or os.path.join(workdir, "tritonserver.log")
        self.command = server_command(self.dist, repository, self.backend_dir, self.http_port, self.grpc_port,
                                      self.metrics_port, verbose)
        self.process = None
        self.model_name = None

    @property
    def http_url(self):
        return "{}:{}".format(LOOPBACK, self.http_port)

    @property
    def grpc_url(self):
        return "{}:{}".format(LOOPBACK, self.grpc_port)

    def start(self):
        """Start tritonserver (returns at once; see :meth:`wait_ready`)."""
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            env=server_env(self.dist))
        finally:
            log.close()
        return self

    def log_tail(self, lines=30):
        """The last ``lines`` lines of the server log."""
        with open(self.log_path, "rb") as handle:
            return b"\n".join(handle.read().splitlines()[-lines:]).decode("utf-8", "replace")

    def ready(self):
        """True when ``/v2/health/ready`` answers 200."""
        try:
            with urllib.request.urlopen("http://{}/v2/health/ready".format(self.http_url), timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout=120.0):
        """Wait until ready; TritonServerError with the log tail when it exits or ``timeout`` s pass."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise TritonServerError("tritonserver exited with code {} before it was ready:\n{}".format(
                    self.process.returncode, self.log_tail()))
            if self.ready():
                return self
            time.sleep(0.25)
        raise TritonServerError("tritonserver not ready after {:.0f} s:\n{}".format(timeout, self.log_tail()))

    def stop(self, timeout=EXIT_TIMEOUT_S + 20.0):
        """SIGTERM, wait up to ``timeout`` s (then SIGKILL); the exit code (None when never started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, exc_type, exc, tb):
        self.stop()


def serve_bundle(bundle_dir, workdir, options=None, http_port=8000, grpc_port=8001, metrics_port=8002, binary=None,
                 repository=None, ready_timeout=180.0, verbose=0, log=None, on_ready=None):
    """Write the Python-backend repository of ``bundle_dir`` and serve it until SIGTERM/SIGINT.

    Args:
        bundle_dir: a captioner or classifier bundle.
        workdir: scratch directory (the repository goes to ``workdir/repository`` unless ``repository``).
        options: :class:`jetcap.triton.repository.RepositoryOptions` (its backend is forced to "python").
        http_port, grpc_port, metrics_port: ports on 127.0.0.1 (0: a free one).
        binary: a tritonserver binary (default: PyTriton's, else PATH).
        repository: where to write the repository (replaced when it exists); default inside ``workdir``.
        ready_timeout: seconds to wait for the models to load.
        verbose: Triton's ``--log-verbose``.
        log: callable for progress lines.
        on_ready: callable receiving the :class:`TritonServer` once ready.
    Returns:
        tritonserver's exit code after the shutdown (0 when clean).
    """
    from jetcap.triton.repository import RepositoryOptions, write_repository

    log = log or (lambda message: None)
    find_tritonserver(binary)  # fail before writing anything when there is no server to run
    options = options or RepositoryOptions()
    options.backend = "python"
    options.force = True
    repository = repository or os.path.join(workdir, "repository")
    record = write_repository(bundle_dir, repository, options)
    log("repository: {} (model {!r}, {} {})".format(repository, record["entry_model"], record["backend"],
                                                    record["precision"]))
    server = TritonServer(repository, workdir, http_port=http_port or None, grpc_port=grpc_port or None,
                          metrics_port=metrics_port or None, binary=binary, verbose=verbose)
    server.model_name = record["entry_model"]
    stop = []

    def _on_signal(signum, frame):
        stop.append(signum)

    previous = dict((sig, signal.signal(sig, _on_signal)) for sig in (signal.SIGTERM, signal.SIGINT))
    try:
        server.start()
        log("tritonserver ({}): {}; log: {}".format(server.dist.origin, server.dist.binary, server.log_path))
        deadline = time.time() + ready_timeout
        while not server.ready():
            if stop:
                return server.stop()
            if server.process.poll() is not None:
                raise TritonServerError("tritonserver exited with code {} before it was ready:\n{}".format(
                    server.process.returncode, server.log_tail()))
            if time.time() > deadline:
                server.stop()
                raise TritonServerError("tritonserver not ready after {:.0f} s:\n{}".format(
                    ready_timeout, server.log_tail()))
            time.sleep(0.25)
        if on_ready:
            on_ready(server)
        while not stop:
            if server.process.poll() is not None:
                raise TritonServerError("tritonserver exited with code {}:\n{}".format(
                    server.process.returncode, server.log_tail()))
            time.sleep(0.25)
        log("stopping tritonserver (signal {})".format(stop[0]))
        return server.stop()
    finally:
        if server.process is not None and server.process.poll() is None:
            server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
