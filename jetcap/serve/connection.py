"""Connections: slots, the probe lane, per-request deadlines, draining and lingering (Python 3.6).

A thread per connection (``socketserver.ThreadingMixIn``) is simple and fine for a Nano's handful of
clients, but a thread only protects the server when nothing can hold it for long:

* :class:`DeadlineReader` replaces the handler's ``rfile``: every read gets the time left until the
  request's deadline (headers: ``--header-timeout`` from the connection's start; body: a minimum rate)
  as its socket timeout, so a client sending a byte every few seconds cannot stretch a request beyond
  its deadline; it gets 408 and the connection is closed.
* :class:`EngineHTTPServer` serves at most ``max_connections`` connections; while they are all busy,
  up to ``probe_slots`` more are taken on a probe lane that answers only GET/HEAD of the probe
  endpoints (with a short deadline), so a load balancer's health checks keep working while slow
  clients saturate the server; when the lane is full too, the lane connection that has waited longest
  for its headers is closed to make room (a real probe sends its request at once).  Beyond that, 503,
  written and drained off the accept loop (``REFUSERS`` at once).
* :func:`drain_and_close`: after an early answer (413, 503 before the body was read) the unread body is
  read and dropped (bounded in bytes and time) and the write side shut first, so a client that sends
  its whole body before reading (Python's ``urllib`` / ``http.client``) sees the answer instead of a
  reset (``BrokenPipeError``).
"""
import json
import socket
import socketserver
import threading
import time
import traceback
from http.server import HTTPServer

PROBE_PATHS = ("/health", "/ready", "/metrics")
PROBE_HEADER_SECONDS = 2.0
PROBE_EVICT_SECONDS = 0.2
MAIN_EVICT_SECONDS = 1.0
_EVICTED_408 = ('HTTP/1.0 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n'
                '{{"error": "request timeout", "detail": "the request {} was too slow while every connection slot '
                'was taken"}}\n')
_SHUTTING_DOWN_503 = ('HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n'
                      '{{"error": "shutting down", "detail": "the server is stopping and the request {} had not '
                      'arrived {:.0f} s after the stop began"}}\n')
RETRY_AFTER_CONNECTIONS = 1
# draining an unread body after an early answer: at most this much and this long
DRAIN_LIMIT_BYTES = 64 << 20
DRAIN_SECONDS = 5.0
LINGER_SECONDS = 1.0
# refusals (503 "too many connections") written, drained and lingered at once; more are closed at once
REFUSERS = 8


class RequestDeadline(Exception):
    """A request did not arrive by its deadline (answered 408).  ``phase`` is "headers" or "body"."""

    def __init__(self, phase, seconds, detail=None):
        super(RequestDeadline, self).__init__(
            detail or "the request {} did not arrive within {:.1f} s".format(phase, seconds))
        self.phase = phase
        self.seconds = seconds


class DeadlineReader(object):
    """A buffered binary reader on a socket whose reads stop at a deadline (the handler's ``rfile``).

    Args:
        sock: the connected socket.
        idle_timeout: longest silence of one read (seconds).
    ``deadline`` (a ``time.time()`` value) and ``phase`` are set by the server for each part of the request.
    """

    def __init__(self, sock, idle_timeout):
        self.sock = sock
        self.idle_timeout = float(idle_timeout)
        self.deadline = None
        self.phase = "headers"
        self.started = time.time()
        self.closed = False
        self.slot_handed_over = False
        self.lane = "main"
        self.received = 0
        self.min_rate = None
        self.grace = 0.0
        self._buffer = bytearray()

    def set_deadline(self, phase, seconds, min_rate=None, grace=0.0):
        """Give the next part of the request ``seconds`` from now.

        With ``min_rate`` (bytes/s) the part must also keep arriving at that rate all along: by any moment
        ``t`` after ``grace`` seconds, ``min_rate * (t - grace)`` bytes must be in (Apache's
        ``mod_reqtimeout`` MinRate), so a client cannot hold a large reservation by trickling a byte now
        and then until the overall deadline.
        """
        self.phase = phase
        self.started = time.time()
        self.received = len(self._buffer)
        self.deadline = self.started + float(seconds)
        self.min_rate = float(min_rate) if min_rate else None
        self.grace = float(grace)

    def _limit(self):
        """``(moment, why)``: when the current read must have returned, and the message if it has not."""
        limit, why = self.deadline, None
        if self.min_rate:
            rate_limit = self.started + self.grace + self.received / self.min_rate
            if rate_limit < limit:
                limit = rate_limit
                why = ("the request {} came slower than {:.0f} KiB/s ({} bytes in {:.1f} s)".format(
                    self.phase, self.min_rate / 1024.0, self.received, time.time() - self.started))
        return limit, why

    def _fill(self, size=65536):
        timeout = self.idle_timeout
        limit = why = None
        if self.deadline is not None:
            limit, why = self._limit()
            left = limit - time.time()
            if left <= 0:
                raise RequestDeadline(self.phase, time.time() - self.started, why)
            timeout = min(timeout, left)
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(size)
        except socket.timeout:
            if limit is not None and time.time() >= limit - 1e-3:
                raise RequestDeadline(self.phase, time.time() - self.started, self._limit()[1] or why)
            raise
        self._buffer.extend(chunk)
        self.received += len(chunk)
        return len(chunk)

    def readline(self, limit=-1):
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0 and (limit < 0 or end < limit):
                return self._take(end + 1)
            if 0 <= limit <= len(self._buffer):
                return self._take(limit)
            if not self._fill():
                return self._take(len(self._buffer))

    def read(self, size=-1):
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buffer))
        while len(self._buffer) < size:
            if not self._fill(max(65536, min(size - len(self._buffer), 1 << 20))):
                break
        return self._take(min(size, len(self._buffer)))

    def read1(self, size=-1):
        if not self._buffer:
            self._fill(size if size and size > 0 else 65536)
        return self._take(len(self._buffer) if size is None or size < 0 else min(size, len(self._buffer)))

    def buffered(self):
        return len(self._buffer)

    def _take(self, count):
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data

    def close(self):
        self.closed = True


def drain_and_close(sock, reader, unread_bytes, log=None):
    """After an early answer: read and drop up to ``unread_bytes`` (bounded), shut the write side, linger.

    Never raises: the answer is already sent; this only gives the client the time to read it.
    """
    try:
        sock.shutdown(socket.SHUT_WR)  # the answer is complete: the client's read ends here
    except (OSError, socket.error):
        return
    deadline = time.time() + DRAIN_SECONDS
    remaining = min(max(0, int(unread_bytes or 0)), DRAIN_LIMIT_BYTES) - (reader.buffered() if reader else 0)
    remaining = max(remaining, 0)
    linger_until = None
    while True:
        now = time.time()
        if remaining <= 0 and linger_until is None:
            linger_until = min(deadline, now + LINGER_SECONDS)
        end = linger_until if linger_until is not None else deadline
        if now >= end:
            return
        try:
            sock.settimeout(max(0.01, end - now))
            chunk = sock.recv(min(1 << 16, remaining) if remaining > 0 else 4096)
        except (OSError, socket.error, socket.timeout):
            return
        if not chunk:
            return  # the client closed: it has read the answer
        remaining -= len(chunk)


class EngineHTTPServer(socketserver.ThreadingMixIn, HTTPServer):
    """HTTPServer with a thread per connection, counted (for draining), capped (``max_connections``),
    with a probe lane of ``probe_slots`` while full."""

    daemon_threads = True
    block_on_close = False  # 3.7+: do not keep a list of every thread; draining is done with our count
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, app):
        self.app = app
        self.active = 0
        self.probing = 0
        self.lane = threading.local()
        self._readers = set()
        self.evictions = 0
        self._stop_receiving_at = None
        self._stop_receiving_seconds = 0.0
        self._active_cond = threading.Condition(threading.Lock())
        self._refusers = threading.BoundedSemaphore(REFUSERS)
        body = json.dumps({"error": "too many connections",
                           "detail": "{} connections are being served (--max-connections)".format(
                               app.options.max_connections)}).encode("utf-8")
        head = ("HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
                "Retry-After: {}\r\nConnection: close\r\n\r\n").format(len(body), RETRY_AFTER_CONNECTIONS)
        self._refusal = head.encode("latin-1") + body
        HTTPServer.__init__(self, address, handler)

    def server_bind(self):
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can hang for seconds
        # on a Jetson without network; the name is not needed.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = port

    def process_request(self, request, client_address):
        options = self.app.options
        with self._active_cond:
            if self.active < options.max_connections:
                lane = "main"
                self.active += 1
            elif self._evict_stalled("main"):
                lane = "main"  # the evicted connection's slot is handed over
            elif self.probing < options.probe_slots:
                lane = "probe"
                self.probing += 1
            elif options.probe_slots and self._evict_stalled("probe"):
                lane = "probe"
            else:
                lane = None
        if lane is None:
            self.refuse(request)
            return
        thread = threading.Thread(target=self._serve_connection, args=(request, client_address, lane))
        thread.daemon = True
        thread.start()

    def register(self, reader, probe_only):
        """Called by the handler with its reader, so a stalled connection can be evicted under pressure."""
        reader.lane = "probe" if probe_only else "main"
        with self._active_cond:
            self._readers.add(reader)

    def _stalled(self, reader, now):
        age = now - reader.started
        if reader.phase == "headers":
            return age >= (PROBE_EVICT_SECONDS if reader.lane == "probe" else MAIN_EVICT_SECONDS)
        if reader.phase == "body":  # trickling below the minimum rate
            return age >= MAIN_EVICT_SECONDS and reader.received < self.app.options.min_body_rate * age
        return False

    def _evict_stalled(self, lane):
        """Close the connection of ``lane`` that has waited longest for its headers (or trickles its body
        below the minimum rate), with a best-effort 408, and hand its slot over.  Called holding the lock.

        A real client sends its headers at once, so only stalled connections are ever evicted, and only
        while every slot is taken.
        """
        now = time.time()
        stalled = [r for r in self._readers if r.lane == lane and self._stalled(r, now)]
        if not stalled:
            return False
        victim = min(stalled, key=lambda r: r.started)
        victim.slot_handed_over = True
        self._close_reader(victim, _EVICTED_408.format(victim.phase))
        self.evictions += 1
        self.app.metrics_evictions.inc()
        return True

    def _close_reader(self, reader, answer):
        """Send ``answer`` (best effort, never blocking) on ``reader``'s connection and shut it; its thread's
        recv returns at once and the thread ends.  Called holding the lock."""
        self._readers.discard(reader)
        reader.phase = "evicted"
        try:
            reader.sock.send(answer.encode("latin-1"), getattr(socket, "MSG_DONTWAIT", 0))
        except (OSError, socket.error):
            pass
        try:
            reader.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, socket.error):
            pass

    def stop_receiving(self, seconds):
        """Shutdown began: connections still sending their request line, headers or body get ``seconds``
        more, then a 503 "shutting down" and close (requests whose body is in are left to finish)."""
        with self._active_cond:
            self._stop_receiving_seconds = float(seconds)
            self._stop_receiving_at = time.time() + float(seconds)

    def _close_late_uploads(self):
        """After :meth:`stop_receiving`'s grace, close the connections still receiving.  Called holding the lock."""
        if self._stop_receiving_at is None or time.time() < self._stop_receiving_at:
            return
        for reader in [r for r in self._readers if r.phase in ("headers", "body")]:
            self._close_reader(reader, _SHUTTING_DOWN_503.format(reader.phase, self._stop_receiving_seconds))

    def _serve_connection(self, request, client_address, lane):
        self.lane.probe_only = lane == "probe"  # read by the handler, which runs on this thread
        try:
            self.process_request_thread(request, client_address)
        finally:
            reader = getattr(self.lane, "reader", None)
            self.lane.reader = None
            with self._active_cond:
                if getattr(reader, "slot_handed_over", False):
                    pass  # an evicted connection: its slot already went to the one that evicted it
                elif lane == "main":
                    self.active -= 1
                else:
                    self.probing -= 1
                self._readers.discard(reader)
                self._active_cond.notify_all()

    def refuse(self, request):
        """Answer 503 "too many connections" on a connection that is not served.

        Called on the accept loop, so the answer is written by a short-lived thread (at most
        ``REFUSERS`` at once) that then drains what the client sends and lingers, as after any early
        answer: a client that sends its whole request before reading sees the 503, not a reset.  Beyond
        ``REFUSERS`` refusals in progress the answer is written without waiting and the connection closed.
        """
        self.app.metrics_requests.inc(endpoint="other", method="-", status="503")
        if not self._refusers.acquire(False):
            try:
                request.send(self._refusal, getattr(socket, "MSG_DONTWAIT", 0))
            except (OSError, socket.error) as exc:
                self.app.log("client_gone", detail="refusing a connection: {}".format(type(exc).__name__))
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self._refuse_and_drain, args=(request,))
        thread.daemon = True
        thread.start()

    def _refuse_and_drain(self, request):
        try:
            request.settimeout(1.0)
            request.sendall(self._refusal)
            drain_and_close(request, None, 0)
        except (OSError, socket.error, socket.timeout) as exc:
            self.app.log("client_gone", detail="refusing a connection: {}".format(type(exc).__name__))
        finally:
            self.shutdown_request(request)
            self._refusers.release()

    def wait_idle(self, seconds):
        """Wait until no connection is being served (up to ``seconds``); returns how many remain."""
        deadline = time.time() + seconds
        with self._active_cond:
            while (self.active or self.probing) and time.time() < deadline:
                self._close_late_uploads()
                self._active_cond.wait(min(0.1, max(0.0, deadline - time.time())))
            return self.active + self.probing

    def handle_error(self, request, client_address):
        self.app.log("connection_error", client=client_address[0], traceback=traceback.format_exc())
