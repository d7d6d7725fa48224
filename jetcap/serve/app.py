"""The ``serve-engine`` application: model, workers, memory guard, metrics and HTTP together (Python 3.6).

:class:`EngineServer` owns the life cycle (bind, load in the background, graceful stop) and answers
every request in one place (:meth:`EngineServer.handle`: Host check, probe lane, route, respond,
drain, count, log; it never raises).  The routes are in :mod:`jetcap.serve.endpoints`, the reading of
a request in :mod:`jetcap.serve.parsing`, sockets and deadlines in :mod:`jetcap.serve.connection`.
"""
import json
import signal
import socket
import sys
import threading
import time
import traceback
from urllib.parse import urlsplit

from jetcap.errors import UsageError
from jetcap.runtime import memory, metrics
from jetcap.runtime.loader import current_rss_bytes
from jetcap.runtime.manifest import rows_independent
from jetcap.runtime.serving import Dispatcher, JsonLog, MemoryGuard, ModelState
from jetcap.serve.connection import PROBE_PATHS, EngineHTTPServer, RequestDeadline, drain_and_close
from jetcap.serve.endpoints import ENDPOINTS, Endpoints, allowed_methods
from jetcap.serve.handler import HTTP_METHODS, RequestHandler
from jetcap.serve.options import mib_bytes
from jetcap.serve.parsing import BodyBudget, HttpError, parse_length, scrub

BODY_METHODS = ("POST", "PUT", "PATCH")


class EngineServer(Endpoints):
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
        self.guard = MemoryGuard(max_rss_bytes=mib_bytes(options.max_rss_mb),
                                 min_available_bytes=mib_bytes(options.memory_threshold_mb),
                                 interval=options.guard_interval, log=self.log,
                                 on_trip=lambda: self.metrics_guard_trips.inc())
        self.buffers = BodyBudget(options.max_buffered_bytes)
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
        registry.gauge("jetcap_probe_connections_active",
                       "Connections on the probe lane (taken while every connection slot is busy).",
                       function=lambda: self.httpd.probing if self.httpd is not None else 0)
        registry.gauge("jetcap_request_body_bytes_buffered",
                       "Request-body bytes reserved by connections receiving or holding a body (--max-buffered-mb).",
                       function=lambda: self.buffers.held)
        self.metrics_evictions = registry.counter(
            "jetcap_connection_evictions_total",
            "Stalled connections closed (408) to make room while every slot was taken.")
        self.metrics_deadlines = registry.counter(
            "jetcap_request_deadlines_total", "Requests answered 408 because headers or body came too slowly.",
            ["phase"])
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
        for graph in ("encoder", "decoder_step"):
            for key, what in (("calls", "calls run"), ("mean_rows", "mean rows per call"),
                              ("occupancy", "mean rows per call / the bundle's max batch"),
                              ("mean_queue_ms", "mean wait of a request's call before it ran, ms"),
                              ("max_queue_ms", "longest wait of a call before it ran, ms"),
                              ("mean_run_ms", "mean time a call ran (the graph alone), ms"),
                              ("run_seconds", "seconds its calls ran since the model was loaded")):
                registry.gauge("jetcap_batch_{}_{}".format(graph, key), "Batched {} {} (--batching).".format(
                    graph.replace("_", " "), what), function=self._batch_stat(graph, key))
        registry.gauge("jetcap_decode_loop_busy_seconds", "Seconds the decode loop (--batching) spent not waiting "
                       "for work since the model was loaded; minus the graphs' run_seconds, its own Python. Growing "
                       "as fast as the clock: the loop is the bottleneck.", function=self._loop_busy)
        registry.gauge("jetcap_decode_loop_iteration_seconds", "How long the decode loop's iteration in progress "
                       "(--batching: one encoder call and one step) has run, 0 while it waits for work. Milliseconds "
                       "when healthy; over --timeout (at least 5 s), /ready answers 503 (stalled).",
                       function=self._loop_iteration)
        registry.gauge("jetcap_decode_loop_reruns", "Batched decoder-step calls of the decode loop (--batching) that "
                       "failed and were run again search by search (each search then gets its own error or "
                       "caption): a failing search, a bug or the device out of memory.", function=self._loop_reruns)

    def _batch_stat(self, graph, key):
        def value():
            stats = self.model.batch_stats.get(graph)
            return round(stats.snapshot()[key], 4) if stats is not None else None
        return value

    def _loop_busy(self):
        scheduler = self.model.scheduler
        return round(scheduler.busy_seconds, 4) if scheduler is not None else None

    def _loop_iteration(self):
        scheduler = self.model.scheduler
        return round(scheduler.iteration_seconds(), 4) if scheduler is not None else None

    def _loop_reruns(self):
        scheduler = self.model.scheduler
        return scheduler.reruns if scheduler is not None else None

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
        # large decodes must give their memory back (docs/SERVING.md, "memory")
        self.log("malloc", mmap_threshold_pinned=memory.pin_mmap_threshold())
        self._serve_thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                              name="jetcap-http")
        self._serve_thread.daemon = True
        self._serve_thread.start()
        self.model.start_loading(self._loaded)
        if self.options.exposed:
            warning = ("WARNING: listening on every network interface ({}): the server has no TLS and no "
                       "authentication; put a reverse proxy in front of it, or bind 127.0.0.1").format(
                           self.options.host or "0.0.0.0")
            self.log("warning", detail=warning)
            self.say(warning)
        self.log("listening", url=self.url, bundle=self.bundle, backend=self.options.backend,
                 precision=self.options.precision, max_concurrency=self.options.max_concurrency,
                 # int8-cpu requests never share a call (runtime/manifest.py rows_independent)
                 batching=bool(self.options.batching and rows_independent(self.options.precision)),
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
            self.httpd.stop_receiving(self.options.stop_upload_seconds)
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
        if self.model.loading:  # close() left them to the loader, which has not finished (a TensorRT build?)
            self.log("runners_kept", detail="the bundle was still loading; its runners are left to the process exit")
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
        handler.connection.settimeout(self.options.read_timeout)  # a client that does not read cannot hold us
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
        """Answer one request: Host check, probe lane, route, run, respond, drain, count and log it; never raises."""
        began = time.time()
        parts = urlsplit(handler.path)
        path = parts.path.rstrip("/") or "/"
        endpoint = path if path in ENDPOINTS else "other"
        status, headers, body_read, answered = 500, {}, False, False
        if getattr(handler.rfile, "phase", None) == "headers":
            handler.rfile.phase = "request"  # headers are in: no longer a stalled connection to evict
        try:
            try:
                self._admit(handler, method, path)
                status, payload, headers, content_type, body_read = self._route(handler, method, path, parts.query)
            except HttpError as exc:
                status, headers, content_type = exc.status, exc.headers, "application/json"
                payload = {"error": exc.error, "detail": scrub(exc.detail)}
                body_read = exc.body_read
            except RequestDeadline as exc:
                self._deadline(handler, exc, method, path)
                status, body_read = 408, True
                return
            if status == 405:
                headers.setdefault("Allow", ", ".join(self._allowed(path)))
            answered = True  # from here on, a failure must not write a second response on this connection
            self.write_json(handler, status, payload, headers, content_type)
            if method in BODY_METHODS and not body_read:
                unread = 0 if getattr(handler, "probe_only", False) else self._declared_length(handler)
                drain_and_close(handler.connection, handler.rfile, unread)
        except (socket.timeout, ConnectionError, BrokenPipeError) as exc:
            status = 499  # nginx's "client closed request": nothing could be answered
            self.log("client_gone", method=method, path=path[:200], detail=type(exc).__name__)
        except Exception as exc:  # a bug: log it with its traceback, answer 500 if still possible
            status = 500
            self.log("internal_error", method=method, path=path[:200], traceback=traceback.format_exc())
            if answered:
                return  # the answer (or part of it) is out: the connection closes; the log has the rest
            try:
                self.write_json(handler, 500, {"error": "internal server error",
                                               "detail": scrub("{}: {}".format(type(exc).__name__, exc))[:500]})
            except (socket.error, ValueError) as write_error:
                self.log("client_gone", method=method, path=path[:200], detail=type(write_error).__name__)
        finally:
            handler.close_connection = True
            elapsed = time.time() - began
            self.metrics_requests.inc(endpoint=endpoint, method=method, status=str(status))
            self.metrics_latency.observe(elapsed, endpoint=endpoint)
            self.log("request", method=method, path=handler.path[:200], status=status,
                     latency_ms=round(elapsed * 1000.0, 3), client=handler.client_address[0])

    def _admit(self, handler, method, path):
        """Refuse a request before routing: a Host not in --allowed-host (421); on the probe lane, anything
        but a probe (503: every connection slot is busy)."""
        allowed = self.options.allowed_hosts
        if allowed:
            host = host_name(handler.headers.get("Host"))
            if host not in allowed:
                raise HttpError(421, "misdirected request", "Host {!r} is not served here (--allowed-host)".format(
                    (handler.headers.get("Host") or "")[:100]))
        if getattr(handler, "probe_only", False) and not (path in PROBE_PATHS and method in ("GET", "HEAD")):
            raise HttpError(503, "too many connections", "{} connections are being served (--max-connections); "
                            "only {} answer now".format(self.options.max_connections, ", ".join(PROBE_PATHS)),
                            {"Retry-After": 1})

    @staticmethod
    def _declared_length(handler):
        """The body length the client declared (0 when none or not a number): what to drain."""
        return (parse_length(handler.headers.get("Content-Length")) or 0) if handler.headers is not None else 0

    def answer_deadline(self, handler, exc):
        """408 for a request whose line or headers missed their deadline (called by the handler)."""
        began = time.time()
        try:
            self._deadline(handler, exc, handler.command or "-", "")
        finally:
            self.metrics_requests.inc(endpoint="other", method="-", status="408")
            self.log("request", method=handler.command if handler.command in HTTP_METHODS else "-",
                     path=(handler.path or "")[:200], status=408,
                     latency_ms=round((time.time() - began) * 1000.0, 3), client=handler.client_address[0])

    def _deadline(self, handler, exc, method, path):
        self.metrics_deadlines.inc(phase=exc.phase)
        self.log("request_deadline", phase=exc.phase, method=method, path=path[:200],
                 client=handler.client_address[0], detail=str(exc))
        try:
            payload = {"error": "request timeout", "detail": "{} (--header-timeout {} s, --min-body-rate-kib {})"
                       .format(exc, self.options.header_timeout, self.options.min_body_rate / 1024.0)}
            handler.close_connection = True
            self.write_json(handler, 408, payload)
        except (socket.error, ValueError) as write_error:
            self.log("client_gone", detail=type(write_error).__name__)

    def _allowed(self, path):
        return allowed_methods(path)


# -- running it -----------------------------------------------------------------------------------
def host_name(header):
    """The lower-case host of a Host header without its port (``[::1]:80`` -> ``::1``); "" when absent."""
    header = (header or "").strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    if header.count(":") == 1:
        return header.split(":", 1)[0]
    return header


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
