"""Settings of one ``serve-engine`` server, checked once (Python 3.6)."""
from jetcap.errors import UsageError
from jetcap.runtime import preprocess

MIB = 1 << 20
KIB = 1 << 10
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


STALL_FLOOR = 5.0


class ServeOptions(object):
    """Settings of one server (checked on creation; UsageError when out of range).

    Args:
        host: address to bind (default 127.0.0.1, loopback only).
        port: TCP port; 0 picks a free one (default 8080).
        backend: "auto", "onnxruntime" or "tensorrt" (default "auto").
        precision: bundle variant / engine precision (default "fp32").
        engine_cache: TensorRT engine cache directory (default ``<bundle>/engines``).
        max_memory_mb: refuse to load when the estimate exceeds this many MiB (default: what is available).
        max_concurrency: requests being served at once (default: 8 with ``batching``, else 1: one engine
            context).  With batching the engine runs only on the batching threads, so more requests in
            flight only make the shared steps fuller.
        batching: captioners: requests in flight share every encoder and decoder-step call
            (:mod:`jetcap.runtime.scheduler`; default on).
        queue: requests that may wait for a free worker; more get 503 (default 8).
        max_body_mb: largest request body in MiB; larger gets 413 (default 8).
        timeout: seconds a request may wait for its result, queueing included; then 504 (default 30).
        memory_threshold_mb: shed load while the memory still available (MemAvailable / cgroup) is below
            this many MiB (default 64; None or 0: off).
        max_rss_mb: shed load while this process's resident memory is above this many MiB (default None: off).
        max_pixels: largest image (width x height) accepted, checked from its header (default 40 M).
        guard_interval: seconds between memory checks (default 1).
        read_timeout: seconds a connection may stay silent while sending its request (default 30).
        header_timeout: seconds from the connection's start until its request line and headers must be in
            (default 10); then 408 and close.
        min_body_rate_kib: the body must keep arriving at this many KiB/s (after ``header_timeout`` of
            grace): by any moment ``t`` of its upload, ``rate * (t - header_timeout)`` bytes must be in, so
            its deadline is at most ``header_timeout + length / rate`` (default 64); then 408 and close.
        max_connections: connections handled at once; more are answered 503 at once (default 64).
        probe_slots: extra connections taken while all ``max_connections`` are busy, only to answer
            GET/HEAD ``/health``, ``/ready`` and ``/metrics`` (default 8; others there get 503).
        max_buffered_mb: request bodies (received, in memory) of all connections together; a request whose
            ``Content-Length`` would exceed it gets 503 before its body is read (default: 4 x max_body_mb).
        allowed_hosts: Host header names accepted (port ignored; default None: any).  Set it when a
            browser can reach the server (DNS rebinding).
        threads: ONNX Runtime intra-op threads (default: its own choice).
        max_beam: largest ``beam`` a client may ask for (default 16).
        max_len_limit: largest ``max_len`` a client may ask for (default 100).
    """

    def __init__(self, host="127.0.0.1", port=8080, backend="auto", precision="fp32", engine_cache=None,
                 max_memory_mb=None, max_concurrency=None, queue=8, max_body_mb=8.0, timeout=30.0,
                 memory_threshold_mb=64, max_rss_mb=None, max_pixels=preprocess.DEFAULT_MAX_PIXELS,
                 guard_interval=1.0, read_timeout=30.0, max_connections=64, threads=None, max_beam=16,
                 max_len_limit=100, header_timeout=10.0, min_body_rate_kib=64.0, probe_slots=8,
                 max_buffered_mb=None, allowed_hosts=None, batching=True, stall_seconds=None):
        self.host = str(host)
        self.port = int(port)
        self.backend = backend
        self.precision = precision
        self.engine_cache = engine_cache
        self.max_memory_mb = max_memory_mb
        self.batching = bool(batching)
        self.max_concurrency = int(max_concurrency) if max_concurrency is not None else (8 if self.batching else 1)
        self.queue = int(queue)
        self.max_body_bytes = int(float(max_body_mb) * MIB)
        self.timeout = float(timeout)
        # one decode-loop iteration longer than this makes /ready 503 "stalled": --timeout, but never under
        # 5 s (a tight --timeout on a slow device must not take a busy instance out of rotation)
        self.stall_seconds = float(stall_seconds) if stall_seconds is not None else max(self.timeout, STALL_FLOOR)
        self.memory_threshold_mb = memory_threshold_mb
        self.max_rss_mb = max_rss_mb
        self.max_pixels = int(max_pixels)
        self.guard_interval = float(guard_interval)
        self.read_timeout = float(read_timeout)
        self.header_timeout = float(header_timeout)
        self.min_body_rate = float(min_body_rate_kib) * KIB
        self.max_connections = int(max_connections)
        self.probe_slots = int(probe_slots)
        self.max_buffered_bytes = (int(float(max_buffered_mb) * MIB) if max_buffered_mb is not None
                                   else 4 * self.max_body_bytes)
        self.allowed_hosts = tuple(h.strip().lower().strip("[]") for h in allowed_hosts or ()) or None
        self.threads = threads
        self.max_beam = int(max_beam)
        self.max_len_limit = int(max_len_limit)
        self._check()

    def _check(self):
        if not 0 <= self.port <= 65535:
            raise UsageError("--port must be between 0 and 65535, got {}".format(self.port))
        for name, value, low in (("--max-concurrency", self.max_concurrency, 1), ("--queue", self.queue, 0),
                                 ("--max-connections", self.max_connections, 1), ("max_pixels", self.max_pixels, 1),
                                 ("--probe-slots", self.probe_slots, 0)):
            if value < low:
                raise UsageError("{} must be at least {}, got {}".format(name, low, value))
        for name, value in (("--max-body-mb", self.max_body_bytes), ("--timeout", self.timeout),
                            ("guard interval", self.guard_interval), ("read timeout", self.read_timeout),
                            ("--header-timeout", self.header_timeout), ("--min-body-rate-kib", self.min_body_rate),
                            ("--max-buffered-mb", self.max_buffered_bytes)):
            if value <= 0:
                raise UsageError("{} must be positive".format(name))
        if self.max_buffered_bytes < self.max_body_bytes:
            raise UsageError("--max-buffered-mb must be at least --max-body-mb")
        for name, value in (("--memory-threshold-mb", self.memory_threshold_mb), ("--max-rss-mb", self.max_rss_mb)):
            if value is not None and value < 0:
                raise UsageError("{} must not be negative, got {}".format(name, value))

    def body_seconds(self, length):
        """Seconds a body of ``length`` bytes may take: the grace of ``header_timeout`` plus the minimum rate."""
        return self.header_timeout + float(length) / self.min_body_rate

    @property
    def stop_upload_seconds(self):
        """After a stop signal, how long requests still arriving (headers or body) may take: ``header_timeout``."""
        return self.header_timeout

    @property
    def drain_seconds(self):
        """How long shutdown waits for requests in flight: the uploads' last ``stop_upload_seconds`` plus a
        full inference wait (10 + 30 s at the defaults, inside a systemd ``TimeoutStopSec=60``)."""
        return self.stop_upload_seconds + self.timeout + 1.0

    @property
    def exposed(self):
        """True when the server listens on every interface (0.0.0.0 / ::)."""
        return self.host in ("", "0.0.0.0", "::", "[::]")


def mib_bytes(value):
    """``value`` MiB in bytes; None for None or 0 (a check that is off)."""
    return int(float(value) * MIB) if value else None
