"""``jetcap serve-engine``: a small HTTP inference server for one bundle (Python 3.6, standard library only).

Built on ``socketserver.ThreadingMixIn`` + ``http.server.HTTPServer`` (``ThreadingHTTPServer`` is 3.7+,
and JetPack 4.6 has Python 3.6), no web framework.  One thread per connection parses HTTP; inference
runs on ``max_concurrency`` worker threads fed by a bounded wait queue, so the engine context is never
used by more requests at once than configured and excess load is refused early (503) instead of piling
up in memory.

* The model loads in a background thread: the server answers ``/health`` at once and ``/ready`` turns
  200 only after the bundle loaded (memory-checked, :mod:`jetcap.runtime.session`) and a warm-up
  inference succeeded.  A load failure (bad bundle, missing engine, too little memory) keeps the server
  up and unready, with the reason in ``/ready``.
* A :class:`MemoryGuard` thread reads the process RSS and ``MemAvailable`` (and the cgroup limit) every
  second and sheds new inference requests (503) while memory is short.
* Every request is logged as one JSON line on stderr; ``/metrics`` is Prometheus text.
* SIGTERM/SIGINT: stop accepting, finish the requests in flight, release the runners, exit 0.

The non-HTTP parts (log, memory guard, workers, model state) are in :mod:`jetcap.runtime.serving`.

Endpoints: ``GET /health``, ``GET /ready``, ``GET /model``, ``GET /metrics``, ``POST /caption``
(captioner bundles), ``POST /predict`` (classifier bundles).  See docs/SERVING.md.
"""
import collections
import json
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit

from jetcap import __version__
from jetcap.errors import JetcapError, UsageError
from jetcap.runtime import memory, metrics, preprocess
from jetcap.runtime.loader import current_rss_bytes
from jetcap.runtime.serving import Dispatcher, JsonLog, MemoryGuard, ModelState, QueueFull

MIB = 1 << 20
# after an early error response, read (and drop) at most this much of an unread body before closing,
# so the client sees the response instead of a connection reset
DRAIN_LIMIT_BYTES = 1 * MIB
DRAIN_SECONDS = 0.5
RETRY_AFTER_QUEUE = 1
RETRY_AFTER_MEMORY = 5
RETRY_AFTER_LOADING = 2

GET_ENDPOINTS = ("/health", "/ready", "/model", "/metrics")
INFERENCE_ENDPOINTS = {"/caption": "captioner", "/predict": "classifier"}
ENDPOINTS = GET_ENDPOINTS + tuple(sorted(INFERENCE_ENDPOINTS))
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")


class ServeOptions(object):
    """Settings of one server (checked on creation; UsageError when out of range).

    Args:
        host: address to bind (default 127.0.0.1, loopback only).
        port: TCP port; 0 picks a free one (default 8080).
        backend: "auto", "onnxruntime" or "tensorrt" (default "auto").
        precision: bundle variant / engine precision (default "fp32").
        engine_cache: TensorRT engine cache directory (default ``<bundle>/engines``).
        max_memory_mb: refuse to load when the estimate exceeds this many MiB (default: what is available).
        max_concurrency: inferences running at once (default 1: one engine context).
        queue: requests that may wait for a free worker; more get 503 (default 8).
        max_body_mb: largest request body in MiB; larger gets 413 (default 8).
        timeout: seconds a request may wait for its result, queueing included; then 504 (default 30).
        memory_threshold_mb: shed load while the memory still available (MemAvailable / cgroup) is below
            this many MiB (default 64; None or 0: off).
        max_rss_mb: shed load while this process's resident memory is above this many MiB (default None: off).
        max_pixels: largest image (width x height) accepted, checked from its header (default 40 M).
        guard_interval: seconds between memory checks (default 1).
        read_timeout: seconds a connection may stall while sending its request (default 30).
        max_connections: connections handled at once; more are answered 503 at once (default 64).
        threads: ONNX Runtime intra-op threads (default: its own choice).
        max_beam: largest ``beam`` a client may ask for (default 16).
        max_len_limit: largest ``max_len`` a client may ask for (default 100).
    """

    def __init__(self, host="127.0.0.1", port=8080, backend="auto", precision="fp32", engine_cache=None,
                 max_memory_mb=None, max_concurrency=1, queue=8, max_body_mb=8.0, timeout=30.0,
                 memory_threshold_mb=64, max_rss_mb=None, max_pixels=preprocess.DEFAULT_MAX_PIXELS,
                 guard_interval=1.0, read_timeout=30.0, max_connections=64, threads=None, max_beam=16,
                 max_len_limit=100):
        self.host = str(host)
        self.port = int(port)
        self.backend = backend
        self.precision = precision
        self.engine_cache = engine_cache
        self.max_memory_mb = max_memory_mb
        self.max_concurrency = int(max_concurrency)
        self.queue = int(queue)
        self.max_body_bytes = int(float(max_body_mb) * MIB)
        self.timeout = float(timeout)
        self.memory_threshold_mb = memory_threshold_mb
        self.max_rss_mb = max_rss_mb
        self.max_pixels = int(max_pixels)
        self.guard_interval = float(guard_interval)
        self.read_timeout = float(read_timeout)
        self.max_connections = int(max_connections)
        self.threads = threads
        self.max_beam = int(max_beam)
        self.max_len_limit = int(max_len_limit)
        self._check()

    def _check(self):
        if not 0 <= self.port <= 65535:
            raise UsageError("--port must be between 0 and 65535, got {}".format(self.port))
        for name, value, low in (("--max-concurrency", self.max_concurrency, 1), ("--queue", self.queue, 0),
                                 ("--max-connections", self.max_connections, 1), ("max_pixels", self.max_pixels, 1)):
            if value < low:
                raise UsageError("{} must be at least {}, got {}".format(name, low, value))
        for name, value in (("--max-body-mb", self.max_body_bytes), ("--timeout", self.timeout),
                            ("guard interval", self.guard_interval), ("read timeout", self.read_timeout)):
            if value <= 0:
                raise UsageError("{} must be positive".format(name))
        for name, value in (("--memory-threshold-mb", self.memory_threshold_mb), ("--max-rss-mb", self.max_rss_mb)):
            if value is not None and value < 0:
                raise UsageError("{} must not be negative, got {}".format(name, value))

    @property
    def drain_seconds(self):
        """How long shutdown waits for requests in flight: a stalled upload plus a full inference wait."""
        return self.read_timeout + self.timeout


def _mib_bytes(value):
    """``value`` MiB in bytes; None for None or 0 (a check that is off)."""
    return int(float(value) * MIB) if value else None


class HttpError(Exception):
    """An error answered to the client as ``{"error": ..., "detail": ...}`` with ``status``."""

    def __init__(self, status, error, detail=None, headers=None, body_read=False):
        super(HttpError, self).__init__(error)
        self.status = int(status)
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
        self.body_read = body_read  # False: the request body is still unread (drained before closing)


# -- request parsing helpers ----------------------------------------------------------------------
_PARAM = re.compile(r';\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def parse_header_params(value):
    """``'multipart/form-data; boundary="x"'`` -> ``('multipart/form-data', {'boundary': 'x'})``."""
    value = value or ""
    main, _, rest = value.partition(";")
    params = {}
    for match in _PARAM.finditer(";" + rest):
        raw = match.group(2).strip()
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            raw = raw[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        params[match.group(1).lower()] = raw
    return main.strip().lower(), params


def parse_multipart(body, content_type):
    """``{field: bytes}`` of a ``multipart/form-data`` body; UsageError when it is malformed."""
    _, params = parse_header_params(content_type)
    boundary = params.get("boundary")
    if not boundary:
        raise UsageError("multipart/form-data without a boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 3:
        raise UsageError("malformed multipart/form-data body (boundary {!r} not found)".format(boundary))
    fields = {}
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break  # the closing delimiter
        head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            raise UsageError("malformed multipart/form-data part (no blank line after its headers)")
        name = None
        for line in head.decode("latin-1").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() == "content-disposition":
                name = parse_header_params(value)[1].get("name")
        if name is None:
            raise UsageError("multipart/form-data part without a Content-Disposition name")
        fields[name] = content
    return fields


def _int_option(values, name, default, low, high):
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise UsageError("{} must be an integer, got {!r}".format(name, raw))
    if not low <= value <= high:
        raise UsageError("{} must be between {} and {}, got {}".format(name, low, high, value))
    return value


# -- HTTP -----------------------------------------------------------------------------------------
class EngineHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    """HTTPServer with a thread per connection, counted (for draining) and capped (``max_connections``)."""

    daemon_threads = True
    block_on_close = False  # 3.7+: do not keep a list of every thread; draining is done with our count
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address, handler, app):
        self.app = app
        self.active = 0
        self._active_cond = threading.Condition(threading.Lock())
        HTTPServer.__init__(self, address, handler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang for seconds
        # on a Jetson without network; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def process_request(self, request, client_address):
        with self._active_cond:
            if self.active >= self.app.options.max_connections:
                full = True
            else:
                full = False
                self.active += 1
        if full:
            self._refuse(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address))
        thread.daemon = True
        thread.start()

    def _serve_connection(self, request, client_address):
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._active_cond:
                self.active -= 1
                self._active_cond.notify_all()

    def _refuse(self, request):
        body = json.dumps({"error": "too many connections",
                           "detail": "{} connections are being served (--max-connections)".format(
                               self.app.options.max_connections)}).encode("utf-8")
        head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
                "Retry-After: {}\r\nConnection: close\r\n\r\n").format(len(body), RETRY_AFTER_QUEUE)
        self.app.metrics_requests.inc(endpoint="other", method="-", status="503")
        try:
            request.settimeout(1.0)
            request.sendall(head.encode("latin-1") + body)
        except (socket.error, socket.timeout) as exc:
            self.app.log("client_gone", detail="refusing a connection: {}: {}".format(type(exc).__name__, exc))
        self.shutdown_request(request)

    def wait_idle(self, seconds):
        """Wait until no connection is being served (up to ``seconds``); returns how many remain."""
        deadline = time.time() + seconds
        with self._active_cond:
            while self.active and time.time() < deadline:
                self._active_cond.wait(min(0.1, max(0.0, deadline - time.time())))
            return self.active

    def handle_error(self, request, client_address):
        self.app.log("connection_error", client=client_address[0], traceback=traceback.format_exc())


class RequestHandler(BaseHTTPRequestHandler):
    """Parses one HTTP/1.0 request and hands it to the :class:`EngineServer` (``self.server.app``)."""

    protocol_version = "HTTP/1.0"
    server_version = "jetcap-serve-engine/" + __version__
    error_content_type = "application/json"

    def setup(self):
        self.timeout = self.server.app.options.read_timeout
        BaseHTTPRequestHandler.setup(self)

    def do_GET(self):
        self.server.app.handle(self, "GET")

    def do_POST(self):
        self.server.app.handle(self, "POST")

    def do_PUT(self):
        self.server.app.handle(self, "PUT")

    def do_DELETE(self):
        self.server.app.handle(self, "DELETE")

    def do_PATCH(self):
        self.server.app.handle(self, "PATCH")

    def do_OPTIONS(self):
        self.server.app.handle(self, "OPTIONS")

    def do_HEAD(self):
        self.server.app.handle(self, "HEAD")

    def send_error(self, code, message=None, explain=None):
        """JSON errors for what http.server rejects itself (malformed request line, unknown method...)."""
        try:
            short = self.responses.get(code, ("error",))[0]
        except AttributeError:
            short = "error"
        payload = {"error": message or short, "detail": explain}
        command = getattr(self, "command", None)
        self.server.app.log("request", method=command, path=getattr(self, "path", None), status=code,
                            latency_ms=0.0, client=self.client_address[0])
        # the method is client-controlled: only known ones become label values (bounded metric cardinality)
        self.server.app.metrics_requests.inc(endpoint="other", method=command if command in HTTP_METHODS else "other",
                                             status=str(code))
        self.close_connection = True
        self.server.app.write_json(self, code, payload)

    def log_request(self, code="-", size="-"):
        """Requests are logged once, as JSON, by the server (see :meth:`EngineServer.handle`)."""

    def log_message(self, format, *args):
        self.server.app.log("http", message=format % args, client=self.client_address[0])


class EngineServer(object):
    """The server application: model state, workers, memory guard, metrics and the HTTP server.

    Args:
        bundle: the bundle directory.
        options: :class:`ServeOptions`.
        log: a :class:`JsonLog` (default: stderr).
        out: where the start-up and shutdown lines go (default stdout).
    """

    def __init__(self, bundle, options, log=None, out=None):
        self.bundle = str(bundle)
        self.options = options
        self.log = log or JsonLog()
        self.out = out
        self.started = time.time()
        self.model = ModelState(bundle, options, self.log)
        self.dispatcher = Dispatcher(options.max_concurrency, options.queue, self.log)
        self.guard = MemoryGuard(max_rss_bytes=_mib_bytes(options.max_rss_mb),
                                 min_available_bytes=_mib_bytes(options.memory_threshold_mb),
                                 interval=options.guard_interval, log=self.log,
                                 on_trip=lambda: self.metrics_guard_trips.inc())
        self.httpd = None
        self._serve_thread = None
        self._setup_metrics()

    # -- metrics ------------------------------------------------------------------------------------
    def _setup_metrics(self):
        registry = self.registry = metrics.Registry()
        self.metrics_requests = registry.counter(
            "jetcap_http_requests_total", "HTTP requests by endpoint, method and status code.",
            ["endpoint", "method", "status"])
        self.metrics_latency = registry.histogram(
            "jetcap_http_request_duration_seconds", "Time from reading the request to the response, by endpoint.",
            ["endpoint"])
        self.metrics_inference = registry.histogram(
            "jetcap_inference_duration_seconds", "Worker time of one inference (decoding + preprocessing + model).",
            ["endpoint"])
        registry.gauge("jetcap_inferences_in_flight", "Inferences running on a worker now.",
                       function=lambda: self.dispatcher.running)
        registry.gauge("jetcap_queue_depth", "Inference requests waiting for a worker.",
                       function=lambda: self.dispatcher.waiting)
        registry.gauge("jetcap_connections_active", "HTTP connections being served.",
                       function=lambda: self.httpd.active if self.httpd is not None else 0)
        registry.gauge("jetcap_process_resident_memory_bytes", "Resident memory (VmRSS) of the server process.",
                       function=current_rss_bytes)
        registry.gauge("jetcap_memory_available_bytes",
                       "Memory the process may still use: MemAvailable or the cgroup limit, whichever is less.",
                       function=lambda: memory.read_memory_info().available)
        registry.gauge("jetcap_meminfo_available_bytes", "MemAvailable from /proc/meminfo.",
                       function=lambda: memory.read_memory_info().mem_available)
        registry.gauge("jetcap_model_load_seconds", "Time to load the bundle's runners (memory check included).",
                       function=lambda: self.model.load_seconds)
        registry.gauge("jetcap_model_warmup_seconds", "Time of the warm-up inference.",
                       function=lambda: self.model.warmup_seconds)
        registry.gauge("jetcap_model_ready", "1 when the model is loaded and warmed up, else 0.",
                       function=lambda: 1 if self.model.ready else 0)
        registry.gauge("jetcap_memory_guard_shedding", "1 while the memory guard refuses new inferences.",
                       function=lambda: 1 if self.guard.tripped else 0)
        self.metrics_guard_trips = registry.counter(
            "jetcap_memory_guard_trips_total", "Times the memory guard started shedding load.")
        self.metrics_rejected = registry.counter(
            "jetcap_rejected_requests_total", "Inference requests refused before running, by reason.", ["reason"])
        registry.gauge("jetcap_uptime_seconds", "Seconds since the server started.",
                       function=lambda: round(time.time() - self.started, 3))

    # -- life cycle ---------------------------------------------------------------------------------
    def start(self):
        """Bind, start serving, start the workers, the memory guard and loading; returns the URL."""
        server_class = EngineHTTPServer
        if ":" in self.options.host:
            server_class = type("EngineHTTPServer6", (EngineHTTPServer,), {"address_family": socket.AF_INET6})
        try:
            self.httpd = server_class((self.options.host, self.options.port), RequestHandler, self)
        except (socket.error, OverflowError) as exc:
            raise UsageError("cannot listen on {}:{}: {}".format(self.options.host, self.options.port, exc))
        self.dispatcher.start()
        self.guard.start()
        self._serve_thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                              name="jetcap-http")
        self._serve_thread.daemon = True
        self._serve_thread.start()
        self.model.start_loading(self._loaded)
        self.log("listening", url=self.url, bundle=self.bundle, backend=self.options.backend,
                 precision=self.options.precision, max_concurrency=self.options.max_concurrency,
                 queue=self.options.queue)
        return self.url

    @property
    def url(self):
        host, port = self.httpd.server_address[:2]
        if ":" in host:
            host = "[{}]".format(host)
        return "http://{}:{}".format(host, port)

    def say(self, line):
        """A line for the operator on stdout."""
        stream = self.out or sys.stdout
        try:
            stream.write(line + "\n")
            stream.flush()
        except (IOError, OSError, ValueError) as exc:
            self.log("stdout_unavailable", line=line, detail=str(exc))

    def _loaded(self, model):
        if model.state == "ready":
            session = model.session
            self.say("model ready: {} bundle on {} {} ({}), loaded in {:.2f} s, warm-up {:.1f} ms".format(
                model.family, session.backend, session.precision, session.reason, model.load_seconds,
                model.warmup_seconds * 1000.0))
        elif model.state == "failed":
            self.say("model NOT ready (the server stays up; GET /ready says why): " + model.reason)

    def shutdown(self, why="shutdown"):
        """Stop accepting, finish requests in flight, stop workers and guard, release the runners.

        Returns True when everything stopped cleanly within :attr:`ServeOptions.drain_seconds`.
        """
        began = time.time()
        in_flight = self.httpd.active if self.httpd is not None else 0
        self.log("shutting_down", signal=why, connections=in_flight, inferences=self.dispatcher.running,
                 queued=self.dispatcher.waiting)
        self.say("{}: stopping (finishing {} request(s) in flight)".format(why, in_flight))
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()  # new connections are now refused
            remaining = self.httpd.wait_idle(self.options.drain_seconds)
        else:
            remaining = 0
        left = max(1.0, self.options.drain_seconds - (time.time() - began))
        workers_stopped = self.dispatcher.close(left)
        self.guard.stop()
        clean = remaining == 0 and workers_stopped
        if workers_stopped:
            self.model.close()
        else:
            self.log("shutdown_incomplete", detail="an inference is still running; runners not released")
        self.model.join(1.0)
        self.log("stopped", seconds=round(time.time() - began, 3), clean=clean, unfinished_connections=remaining)
        self.say("stopped")
        return clean

    # -- requests -----------------------------------------------------------------------------------
    def write_json(self, handler, status, payload, headers=None, content_type="application/json"):
        """Send ``payload`` (a dict as JSON, or str/bytes as is) with ``status``; returns the bytes written."""
        if isinstance(payload, bytes):
            body = payload
        elif isinstance(payload, str):
            body = payload.encode("utf-8")
        else:
            body = (json.dumps(payload) + "\n").encode("utf-8")
            content_type = "application/json"
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            handler.send_header(key, str(value))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(body)
        handler.wfile.flush()
        return len(body)

    def handle(self, handler, method):
        """Answer one request: route, run, respond, count and log it; never raises."""
        began = time.time()
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/") or "/"
        endpoint = path if path in ENDPOINTS else "other"
        status, headers, body_read = 500, {}, False
        try:
            try:
                status, payload, headers, content_type, body_read = self._route(handler, method, path, parts.query)
            except HttpError as exc:
                status, headers, content_type = exc.status, exc.headers, "application/json"
                payload = {"error": exc.error, "detail": exc.detail}
                body_read = exc.body_read
            if status == 405:
                headers.setdefault("Allow", ", ".join(self._allowed(path)))
            self.write_json(handler, status, payload, headers, content_type)
            if method in ("POST", "PUT", "PATCH") and not body_read:
                self._drain(handler)
        except (socket.timeout, ConnectionError, BrokenPipeError) as exc:
            status = 499  # nginx's "client closed request": nothing could be answered
            self.log("client_gone", method=method, path=path, detail="{}: {}".format(type(exc).__name__, exc))
        except Exception as exc:  # a bug: log it with its traceback, answer 500 if still possible
            status = 500
            self.log("internal_error", method=method, path=path, traceback=traceback.format_exc())
            try:
                self.write_json(handler, 500, {"error": "internal server error",
                                               "detail": "{}: {}".format(type(exc).__name__, exc)})
            except (socket.error, ValueError) as write_error:
                self.log("client_gone", method=method, path=path, detail=str(write_error))
        finally:
            handler.close_connection = True
            elapsed = time.time() - began
            self.metrics_requests.inc(endpoint=endpoint, method=method, status=str(status))
            self.metrics_latency.observe(elapsed, endpoint=endpoint)
            self.log("request", method=method, path=handler.path[:200], status=status,
                     latency_ms=round(elapsed * 1000.0, 3), client=handler.client_address[0])

    def _allowed(self, path):
        return ["GET"] if path in GET_ENDPOINTS else ["POST"]

    def _drain(self, handler):
        """Read and drop what is left of an unread body (bounded), so closing does not reset the connection."""
        try:
            length = int(handler.headers.get("Content-Length") or 0)
        except ValueError:
            return
        remaining = min(max(0, length), DRAIN_LIMIT_BYTES)
        handler.connection.settimeout(DRAIN_SECONDS)
        while remaining > 0:
            try:
                chunk = handler.rfile.read1(min(65536, remaining))
            except (socket.timeout, socket.error, ValueError):
                return  # the client stopped sending: the response is already out, close now
            if not chunk:
                return
            remaining -= len(chunk)

    def _route(self, handler, method, path, query):
        if path not in ENDPOINTS:
            raise HttpError(404, "not found", "no endpoint {}; endpoints: {}".format(
                path, ", ".join(self._endpoints())))
        if method not in self._allowed(path):
            raise HttpError(405, "method not allowed", "{} takes {}, not {}".format(
                path, " or ".join(self._allowed(path)), method))
        if path == "/health":
            return 200, self._health(), {}, "application/json", False
        if path == "/ready":
            return self._ready()
        if path == "/model":
            summary = self.model.summary()
            if summary is None:
                raise HttpError(503, "model not loaded", self.model.reason, {"Retry-After": RETRY_AFTER_LOADING}
                                if self.model.state == "loading" else None)
            return 200, summary, {}, "application/json", False
        if path == "/metrics":
            return 200, self.registry.render(), {}, metrics.CONTENT_TYPE, False
        return self._infer(handler, path, query)

    def _endpoints(self):
        family = self.model.family
        return [e for e in ENDPOINTS if e not in INFERENCE_ENDPOINTS or family is None
                or INFERENCE_ENDPOINTS[e] == family]

    def _health(self):
        return collections.OrderedDict([
            ("status", "alive"), ("model", self.model.state), ("uptime_s", round(time.time() - self.started, 3)),
            ("version", __version__)])

    def _ready(self):
        model = self.model
        if model.state != "ready":
            headers = {"Retry-After": RETRY_AFTER_LOADING} if model.state == "loading" else {}
            payload = {"error": "not ready", "detail": model.reason, "state": model.state,
                       "error_type": model.error_type}
            return 503, payload, headers, "application/json", False
        if self.guard.tripped:
            payload = {"error": "not ready", "detail": "memory guard: " + str(self.guard.reason), "state": "shedding"}
            return 503, payload, {"Retry-After": RETRY_AFTER_MEMORY}, "application/json", False
        session = model.session
        payload = collections.OrderedDict([
            ("ready", True), ("family", model.family), ("backend", session.backend),
            ("backend_reason", session.reason), ("precision", session.precision),
            ("load_seconds", round(model.load_seconds, 3)), ("warmup_ms", round(model.warmup_seconds * 1000.0, 3))])
        return 200, payload, {}, "application/json", False

    def _read_body(self, handler):
        if "chunked" in (handler.headers.get("Transfer-Encoding") or "").lower():
            raise HttpError(411, "length required", "chunked uploads are not supported; send a Content-Length")
        raw = handler.headers.get("Content-Length")
        if raw is None:
            raise HttpError(411, "length required", "POST needs a Content-Length header")
        try:
            length = int(raw)
            if length < 0:
                raise ValueError(raw)
        except ValueError:
            raise HttpError(400, "bad request", "invalid Content-Length {!r}".format(raw))
        if length > self.options.max_body_bytes:
            raise HttpError(413, "request body too large", "{} bytes, the limit is {} (--max-body-mb)".format(
                length, self.options.max_body_bytes))
        try:
            body = handler.rfile.read(length)
        except socket.timeout:
            raise HttpError(408, "request timeout", "the body did not arrive within {} s".format(
                self.options.read_timeout), body_read=True)
        if len(body) < length:
            raise HttpError(400, "bad request", "body ended after {} of {} bytes".format(len(body), length),
                            body_read=True)
        return body

    def _infer(self, handler, path, query):
        family = INFERENCE_ENDPOINTS[path]
        model = self.model
        if model.family is not None and model.family != family:
            raise HttpError(404, "not found", "this server runs a {} bundle; its endpoints: {}".format(
                model.family, ", ".join(self._endpoints())))
        if model.state != "ready":
            self.metrics_rejected.inc(reason="not_ready")
            raise HttpError(503, "model not ready", model.reason,
                            {"Retry-After": RETRY_AFTER_LOADING} if model.state == "loading" else None)
        if self.guard.tripped:
            self.metrics_rejected.inc(reason="memory")
            raise HttpError(503, "memory guard: shedding load", self.guard.reason, {"Retry-After": RETRY_AFTER_MEMORY})
        body = self._read_body(handler)
        try:
            if family == "captioner":
                fn = self._caption_job(handler, body, parse_qs(query))
            else:
                fn = self._predict_job(body)
        except UsageError as exc:
            raise HttpError(400, "bad request", str(exc), body_read=True)
        try:
            job = self.dispatcher.submit(fn)
        except QueueFull as exc:
            self.metrics_rejected.inc(reason="queue_full")
            raise HttpError(503, "busy", str(exc), {"Retry-After": RETRY_AFTER_QUEUE}, body_read=True)
        if not job.done.wait(self.options.timeout):
            self.dispatcher.cancel(job)
            self.metrics_rejected.inc(reason="timeout")
            raise HttpError(504, "inference timed out", "no result within {} s (--timeout); {}".format(
                self.options.timeout, "it was still waiting for a worker" if job.started is None
                else "the inference is still running"), body_read=True)
        if isinstance(job.error, UsageError):  # the input: unreadable image, wrong sequence shape ...
            raise HttpError(400, "bad request", str(job.error), body_read=True)
        if job.error is not None:
            self.log("inference_error", path=path, error=str(job.error), traceback=job.traceback)
            detail = str(job.error) if isinstance(job.error, JetcapError) else "{}: {}".format(
                type(job.error).__name__, job.error)
            raise HttpError(500, "inference failed", detail, body_read=True)
        self.metrics_inference.observe(job.finished - job.started, endpoint=path)
        result = job.result
        result["latency_ms"] = round((job.finished - job.started) * 1000.0, 3)
        result["queue_ms"] = round((job.started - job.enqueued) * 1000.0, 3)
        return 200, result, {}, "application/json", True

    def _caption_job(self, handler, body, query):
        values = dict((key, items[-1]) for key, items in query.items())
        content_type = handler.headers.get("Content-Type") or ""
        if parse_header_params(content_type)[0] == "multipart/form-data":
            fields = parse_multipart(body, content_type)
            if "image" not in fields:
                raise UsageError("multipart/form-data without an 'image' field (has: {})".format(
                    ", ".join(sorted(fields)) or "nothing"))
            image = fields.pop("image")
            for key, value in fields.items():
                try:
                    values[key] = value.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise UsageError("form field {!r} is not text".format(key))
        else:
            image = body
        if not image:
            raise UsageError("empty image: send the encoded image as the request body or as the form field 'image'")
        model = self.model
        beam = _int_option(values, "beam", model.default_beam(), 1, self.options.max_beam)
        max_len = _int_option(values, "max_len", model.default_max_len(), 1, self.options.max_len_limit)
        return lambda: model.caption(image, beam, max_len)

    def _predict_job(self, body):
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise UsageError("the body is not valid JSON: {}".format(exc))
        if not isinstance(data, dict) or "sequence" not in data:
            raise UsageError('expected a JSON object {"sequence": [[...], ...]} of frames x features')
        sequence = data["sequence"]
        model = self.model
        return lambda: model.predict(sequence)


# -- running it -----------------------------------------------------------------------------------
def serve(bundle, options, out=None, log=None):
    """Run the server until SIGTERM/SIGINT, then shut down gracefully.

    Must be called from the main thread (it installs the signal handlers).  A second signal while
    shutting down exits at once (status 1).

    Args:
        bundle: the bundle directory (loaded in the background; a failure leaves the server up, unready).
        options: :class:`ServeOptions`.
        out: stream for the operator lines (default stdout): the URL first, then the load result.
        log: a :class:`JsonLog` (default: JSON lines on stderr).
    Returns:
        0 after a clean shutdown, 1 when requests or an inference were still unfinished at the deadline.
    """
    import os

    app = EngineServer(bundle, options, log=log, out=out)
    # The handler only appends to a list: taking a lock there (Event.set) could deadlock against the
    # main thread holding the same lock when the signal arrives.
    received = []

    def on_signal(signum, frame):
        name = signal.Signals(signum).name if hasattr(signal, "Signals") else str(signum)
        if received:
            os.write(2, "second {}: exiting at once\n".format(name).encode("ascii"))
            os._exit(1)
        received.append(name)

    previous = dict((sig, signal.signal(sig, on_signal)) for sig in (signal.SIGTERM, signal.SIGINT))
    try:
        url = app.start()
        app.say("jetcap serve-engine listening on {} (bundle {}; loading {} {} in the background)".format(
            url, app.bundle, options.backend, options.precision))
        while not received:
            time.sleep(0.2)
            if not app._serve_thread.is_alive():
                app.log("http_thread_died")
                received.append("http thread died")
        clean = app.shutdown(received[0] if received else "shutdown")
    finally:
        for sig, handler in previous.items():
            if handler is not None:  # None: installed from C, cannot be restored from Python
                signal.signal(sig, handler)
    return 0 if clean else 1
