"""The per-connection request handler: HTTP/1.0 parsing by ``http.server``, reads through a deadline (3.6).

``http.server`` parses the request line and headers; its ``rfile`` is a
:class:`jetcap.serve.connection.DeadlineReader`, so reading them ends at ``--header-timeout`` however
slowly the client sends (a probe-lane connection gets two seconds).  Everything after the headers is
:class:`jetcap.serve.app.EngineServer`'s.
"""
from http.server import BaseHTTPRequestHandler

from jetcap import __version__
from jetcap.serve.connection import PROBE_HEADER_SECONDS, DeadlineReader, RequestDeadline

HTTP_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD")


class RequestHandler(BaseHTTPRequestHandler):
    """Parses one HTTP/1.0 request and hands it to the server's app (``self.server.app``)."""

    protocol_version = "HTTP/1.0"
    server_version = "jetcap-serve-engine/" + __version__
    error_content_type = "application/json"

    def setup(self):
        options = self.server.app.options
        self.timeout = options.read_timeout
        BaseHTTPRequestHandler.setup(self)
        self.rfile.close()  # http.server's own buffered reader: replaced by one with a deadline
        self.probe_only = bool(getattr(self.server.lane, "probe_only", False))
        self.rfile = DeadlineReader(self.connection, options.read_timeout)
        self.rfile.set_deadline("headers", min(PROBE_HEADER_SECONDS, options.header_timeout) if self.probe_only
                                else options.header_timeout)
        self.server.lane.reader = self.rfile
        self.server.register(self.rfile, self.probe_only)
        # what send_response needs if the request line never arrives
        self.request_version, self.command, self.path, self.requestline = "HTTP/1.0", None, "", ""

    def handle(self):
        self.close_connection = True
        try:
            self.handle_one_request()
        except RequestDeadline as exc:  # headers too slow: 408, then close
            self.server.app.answer_deadline(self, exc)
        except OSError:
            if self.rfile.phase != "evicted":  # an evicted probe-lane connection: closed on purpose
                raise

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
        payload = {"error": message or short, "detail": explain or message or short}
        # http.server resets the version to HTTP/0.9 before parsing, and answers a request line it could not
        # parse without a status line (HTTP/0.9 style): this server speaks HTTP/1.0 to everyone
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"
        command = getattr(self, "command", None)
        app = self.server.app
        app.log("request", method=command if command in HTTP_METHODS else "other",
                path=(getattr(self, "path", None) or "")[:200], status=code, latency_ms=0.0,
                client=self.client_address[0])
        # the method is client-controlled: only known ones become label values (bounded metric cardinality)
        app.metrics_requests.inc(endpoint="other", method=command if command in HTTP_METHODS else "other",
                                 status=str(code))
        self.close_connection = True
        app.write_json(self, code, payload)

    def log_request(self, code="-", size="-"):
        """Requests are logged once, as JSON, by the server (see :meth:`EngineServer.handle`)."""

    def log_message(self, format, *args):
        self.server.app.log("http", message=format % args, client=self.client_address[0])
