"""What each path answers (Python 3.6): probes, the model summary, metrics and the two inference endpoints.

:class:`Endpoints` is mixed into :class:`jetcap.serve.app.EngineServer`; it uses the app's ``model``
(:class:`jetcap.runtime.serving.ModelState`), ``dispatcher``, ``guard``, ``buffers``, ``options`` and
metrics.  Each route returns ``(status, payload, headers, content_type, body_read)`` or raises
:class:`jetcap.serve.parsing.HttpError`.
"""
import collections
import time
from urllib.parse import parse_qs

from jetcap import __version__
from jetcap.errors import JetcapError, UsageError
from jetcap.runtime import metrics
from jetcap.runtime.serving import ModelUnavailable, QueueFull
from jetcap.serve.parsing import (BODY_CHUNK, HttpError, content_length, int_option, parse_header_params,
                                  parse_multipart, parse_predict_body, read_body, scrub)

RETRY_AFTER_QUEUE = 1
# bodies /predict refuses (415) rather than parse as JSON: a multipart form is never a sequence.  Other
# types are read as JSON: curl -d sends application/x-www-form-urlencoded unless told otherwise
FORM_TYPES = ("multipart/form-data",)
RETRY_AFTER_MEMORY = 5
RETRY_AFTER_LOADING = 2

GET_ENDPOINTS = ("/health", "/ready", "/model", "/metrics")
INFERENCE_ENDPOINTS = {"/caption": "captioner", "/predict": "classifier"}
ENDPOINTS = GET_ENDPOINTS + tuple(sorted(INFERENCE_ENDPOINTS))


def allowed_methods(path):
    """Methods ``path`` takes (GET endpoints also answer HEAD)."""
    return ["GET", "HEAD"] if path in GET_ENDPOINTS else ["POST"]


def continue_upload(handler):
    """Answer ``Expect: 100-continue`` (curl sends it before bodies over 1 MiB and otherwise waits a second
    for the server) once the request passed every check made before its body: send ``100 Continue``.

    Only for HTTP/1.1 requests (an HTTP/1.0 request's expectation must be ignored, RFC 7231 5.1.1); the
    final answer stays HTTP/1.0 with ``Connection: close``.  A request refused before its body (413, 503)
    gets its final answer instead, so the client never sends the body.
    """
    expect = (handler.headers.get("Expect") or "").strip().lower()
    if expect and expect != "100-continue":
        raise HttpError(417, "expectation failed", "only Expect: 100-continue is understood here")
    if expect == "100-continue" and handler.request_version == "HTTP/1.1":
        handler.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        handler.wfile.flush()


class Endpoints(object):
    """The routes of the server application (a mixin of :class:`jetcap.serve.app.EngineServer`)."""

    def _route(self, handler, method, path, query):
        if path not in ENDPOINTS:
            raise HttpError(404, "not found", "no endpoint {}; endpoints: {}".format(
                path[:100], ", ".join(self._endpoints())))
        if method not in allowed_methods(path):
            raise HttpError(405, "method not allowed", "{} takes {}, not {}".format(
                path, " or ".join(allowed_methods(path)), method))
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
            payload = {"error": "not ready", "detail": scrub(model.reason), "state": model.state,
                       "error_type": model.error_type}
            return 503, payload, headers, "application/json", False
        stall = model.stall()
        if stall is not None:  # honestly unready while it lasts: every request would time out behind it
            payload = {"error": "not ready", "detail": stall, "state": "stalled"}
            return 503, payload, {"Retry-After": RETRY_AFTER_LOADING}, "application/json", False
        if self.guard.tripped:
            payload = {"error": "not ready", "detail": "memory guard: " + str(self.guard.reason), "state": "shedding"}
            return 503, payload, {"Retry-After": RETRY_AFTER_MEMORY}, "application/json", False
        session = model.session
        payload = collections.OrderedDict([
            ("ready", True), ("family", model.family), ("backend", session.backend),
            ("backend_reason", session.reason), ("precision", session.precision),
            ("load_seconds", round(model.load_seconds, 3)), ("warmup_ms", round(model.warmup_seconds * 1000.0, 3)),
            # ready, and how full: a request beyond these limits is refused with 503 + Retry-After, one by
            # one, rather than the instance taken out of rotation (which would move the load, not shed it)
            ("load", collections.OrderedDict([
                ("inferences_running", self.dispatcher.running), ("workers", self.dispatcher.workers),
                ("queued", self.dispatcher.waiting), ("queue_limit", self.dispatcher.queue_size),
                ("body_bytes_reserved", self.buffers.held), ("body_bytes_limit", self.buffers.limit)]))])
        return 200, payload, {}, "application/json", False

    def _infer(self, handler, path, query):
        family = INFERENCE_ENDPOINTS[path]
        model = self.model
        if model.family is not None and model.family != family:
            raise HttpError(404, "not found", "this server runs a {} bundle; its endpoints: {}".format(
                model.family, ", ".join(self._endpoints())))
        if model.state != "ready":
            self.metrics_rejected.inc(reason="not_ready")
            raise HttpError(503, "model not ready", scrub(model.reason),
                            {"Retry-After": RETRY_AFTER_LOADING} if model.state == "loading" else None)
        stall = model.stall()
        if stall is not None:
            self.metrics_rejected.inc(reason="stalled")
            raise HttpError(503, "model stalled", stall, {"Retry-After": RETRY_AFTER_LOADING})
        if self.guard.tripped:
            self.metrics_rejected.inc(reason="memory")
            raise HttpError(503, "memory guard: shedding load", self.guard.reason, {"Retry-After": RETRY_AFTER_MEMORY})
        length = content_length(handler.headers, self.options.max_body_bytes)
        with self.buffers.reservation() as reservation:
            try:
                reservation.take(min(length, BODY_CHUNK))  # room for the first chunk, or 503 before 100-continue
                continue_upload(handler)
                body = read_body(handler.rfile, length, self.options.body_seconds(length),
                                 min_rate=self.options.min_body_rate, grace=self.options.header_timeout,
                                 reservation=reservation)
            except HttpError as exc:
                if exc.status == 503:
                    self.metrics_rejected.inc(reason="buffers")
                raise
            return self._run(handler, path, family, body, query)

    def _run(self, handler, path, family, body, query):
        try:
            if family == "captioner":
                fn = self._caption_job(handler, body, parse_qs(query))
            else:
                fn = self._predict_job(handler, body)
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
        if isinstance(job.error, ModelUnavailable):  # closed or failed while this request waited for a worker
            self.metrics_rejected.inc(reason="not_ready")
            raise HttpError(503, "model not ready", str(job.error), body_read=True)
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
                    ", ".join(sorted(fields))[:200] or "nothing"))
            image = fields.pop("image")
            for key, value in fields.items():
                try:
                    values[key] = value.decode("utf-8").strip()
                except UnicodeDecodeError:
                    raise UsageError("form field {!r} is not text".format(key[:40]))
        else:
            image = body
        if not image:
            raise UsageError("empty image: send the encoded image as the request body or as the form field 'image'")
        model = self.model
        # a beam's rows run in one decoder-step call: at most the bundle's max batch (its TensorRT profiles)
        beam = int_option(values, "beam", model.default_beam(), 1, min(self.options.max_beam, model.max_batch()))
        max_len = int_option(values, "max_len", model.default_max_len(), 1, self.options.max_len_limit)
        try:  # opened here; a large image also decodes here, on this request's thread, not on a worker
            prepared = model.prepare(image, self.options.timeout)
        except QueueFull as exc:
            self.metrics_rejected.inc(reason="queue_full")
            raise HttpError(503, "busy", str(exc), {"Retry-After": RETRY_AFTER_QUEUE}, body_read=True)
        return lambda: model.caption(prepared, beam, max_len)

    def _predict_job(self, handler, body):
        content_type = parse_header_params(handler.headers.get("Content-Type") or "")[0]
        if content_type in FORM_TYPES:  # a form is not a sequence: say so rather than read it as JSON
            raise HttpError(415, "unsupported media type", "/predict takes the sequence as a JSON body "
                            '(Content-Type: application/json), not {}'.format(content_type), body_read=True)
        sequence = parse_predict_body(body)
        model = self.model
        return lambda: model.predict(sequence)
