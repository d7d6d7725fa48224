"""One request's bytes: body reading, multipart, JSON, option values, error details (Python 3.6).

Everything here treats the client as hostile: a body is read only after its ``Content-Length`` was
checked against ``--max-body-mb`` and reserved in the :class:`BodyBudget` (bodies being received are
memory too), against its deadline; JSON cannot reach the recursion limit or turn huge integers into
overflows; details sent back never contain heap addresses.
"""
import re
import threading

from jetcap.errors import UsageError
from jetcap.runtime.sequences import parse_sequence_json

_PARAM = re.compile(r';\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ADDRESS = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9A-Fa-f]+>")
_HEX_ADDRESS = re.compile(r"\bat 0x[0-9A-Fa-f]{6,}\b")
# ASCII digits only: str.isdigit() and int() also take "²" or "٣", which no HTTP client means
_DECIMAL = re.compile(r"[0-9]{1,18}\Z")
_INTEGER = re.compile(r"[-+]?[0-9]{1,11}\Z")
RETRY_AFTER_BUFFERS = 1


class HttpError(Exception):
    """An error answered to the client as ``{"error": ..., "detail": ...}`` with ``status``.

    ``body_read``: False while the request body is still unread (it is drained before closing).
    ``close``: the connection must be closed after the answer (always so with HTTP/1.0 here).
    """

    def __init__(self, status, error, detail=None, headers=None, body_read=False):
        super(HttpError, self).__init__(error)
        self.status = int(status)
        self.error = error
        self.detail = detail
        self.headers = dict(headers or {})
        self.body_read = body_read


def scrub(detail):
    """``detail`` without object reprs or heap addresses (``<_io.BytesIO object at 0x7f..>`` -> ``<request body>``)."""
    if detail is None:
        return None
    text = _ADDRESS.sub(lambda m: "<request body>" if "BytesIO" in m.group(1) else "<{}>".format(m.group(1)),
                        str(detail))
    return _HEX_ADDRESS.sub("", text)


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
    if not boundary or len(boundary) > 200:
        raise UsageError("multipart/form-data without a usable boundary")
    delimiter = b"\r\n--" + boundary.encode("latin-1", "replace")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 3:
        raise UsageError("malformed multipart/form-data body (boundary not found)")
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


def int_option(values, name, default, low, high):
    """``values[name]`` as an int in ``[low, high]`` (``default`` when absent); UsageError otherwise."""
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    text = str(raw).strip()
    if len(text) > 12:
        raise UsageError("{} must be an integer between {} and {}".format(name, low, high))
    if not _INTEGER.match(text):
        raise UsageError("{} must be an integer, got {!r}".format(name, text[:20]))
    value = int(text)
    if not low <= value <= high:
        raise UsageError("{} must be between {} and {}, got {}".format(name, low, high, value))
    return value


def parse_predict_body(body):
    """The ``sequence`` of a ``/predict`` body ``{"sequence": [[...], ...]}``; UsageError when it is not one."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the body is not UTF-8 JSON")
    data = parse_sequence_json(text, "the body")
    if isinstance(data, list):  # the frames themselves, as jetcap predict reads a JSON file
        return data
    if not isinstance(data, dict) or "sequence" not in data:
        raise UsageError('expected a JSON object {"sequence": [[...], ...]} of frames x features, or the list '
                         'of frames itself')
    return data["sequence"]


class BodyBudget(object):
    """Bytes of request bodies being received or held, all connections together (at most ``limit``).

    A request reserves its body as it arrives, a chunk ahead of the bytes read (:meth:`reservation`), so
    40 slow uploads of 8 MiB cannot add 320 MB of RSS behind the memory guard's back, and a connection
    that declares 8 MiB and sends nothing holds one chunk, not 8 MiB: filling the budget takes sending
    it, at the minimum rate or faster.
    """

    def __init__(self, limit):
        self.limit = int(limit)
        self.held = 0
        self._lock = threading.Lock()

    def reserve(self, length):
        """Reserve ``length`` bytes; HttpError 503 when they do not fit now."""
        with self._lock:
            if self.held + length > self.limit:
                held = self.held
            else:
                self.held += length
                return
        raise HttpError(503, "busy receiving", "{} bytes of request bodies are being received; {} more do not fit "
                        "in --max-buffered-mb ({} bytes)".format(held, length, self.limit),
                        {"Retry-After": RETRY_AFTER_BUFFERS})

    def release(self, length):
        with self._lock:
            self.held = max(0, self.held - length)

    def reservation(self):
        """A :class:`Reservation` of this budget (a context manager that releases what it took)."""
        return Reservation(self)


class Reservation(object):
    """The part of a :class:`BodyBudget` one request holds; ``with`` releases all of it."""

    def __init__(self, budget):
        self.budget = budget
        self.held = 0

    def take(self, length):
        """Reserve ``length`` more bytes; HttpError 503 "busy receiving" when they do not fit now."""
        self.budget.reserve(length)
        self.held += length

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.budget.release(self.held)
        self.held = 0


def content_length(headers, max_body_bytes):
    """The request's body length from its headers; HttpError 411/400/413 when missing, bad or too large."""
    if "chunked" in (headers.get("Transfer-Encoding") or "").lower():
        raise HttpError(411, "length required", "chunked uploads are not supported; send a Content-Length")
    raw = headers.get("Content-Length")
    if raw is None:
        raise HttpError(411, "length required", "POST needs a Content-Length header")
    every = headers.get_all("Content-Length") if hasattr(headers, "get_all") else [raw]
    if len(set(value.strip() for value in every)) > 1:  # a proxy and this server could frame it differently
        raise HttpError(400, "bad request", "conflicting Content-Length headers")
    length = parse_length(raw)
    if length is None:
        raise HttpError(400, "bad request", "invalid Content-Length {!r}".format(raw.strip()[:40]))
    if length > max_body_bytes:
        raise HttpError(413, "request body too large", "{} bytes, the limit is {} (--max-body-mb)".format(
            length, max_body_bytes))
    return length


def parse_length(raw):
    """The integer of a Content-Length value (ASCII digits, at most 18 of them); None when it is not one."""
    raw = (raw or "").strip()
    return int(raw) if _DECIMAL.match(raw) else None


BODY_CHUNK = 64 << 10  # a body is reserved in the budget this much ahead of the bytes read (64 connections: 4 MiB)


def read_body(reader, length, seconds, min_rate=None, grace=0.0, reservation=None):
    """Read exactly ``length`` body bytes from ``reader`` (a DeadlineReader) within ``seconds``, arriving at
    ``min_rate`` bytes/s or faster after ``grace`` seconds (None: only the deadline), each chunk reserved in
    ``reservation`` (a :class:`Reservation`, or None; what it already holds counts) before it is read.

    Raises RequestDeadline (408) when the deadline passes or the body falls below the rate, HttpError 400
    when the client stops early, HttpError 503 when the budget has no room for the next chunk (the rest
    of the body is drained).  The reader's phase is "request" afterwards (the body is in).
    """
    import socket

    from jetcap.serve.connection import RequestDeadline

    reader.set_deadline("body", seconds, min_rate=min_rate, grace=grace)
    parts, got = [], 0
    try:
        while got < length:
            # 64 KiB at a time: an idle connection holds 64 KiB of the budget, and the pieces stay below the
            # pinned mmap threshold (measured: an 8 MiB body in 64 KiB reads 10 ms, doubling reads 15 ms,
            # one read 17-28 ms, each large buffer being fresh pages)
            want = min(BODY_CHUNK, length - got)
            if reservation is not None and got + want > reservation.held:
                reservation.take(got + want - reservation.held)  # 503 when no room: the rest is drained
            chunk = reader.read(want)
            parts.append(chunk)
            got += len(chunk)
            if len(chunk) < want:
                break
    except socket.timeout:
        raise RequestDeadline("body", reader.idle_timeout)
    if got < length:
        raise HttpError(400, "bad request", "body ended after {} of {} bytes".format(got, length),
                        body_read=True)
    reader.phase = "request"  # no longer receiving: neither a stalled upload to evict nor one to stop
    return parts[0] if len(parts) == 1 else b"".join(parts)
