"""Slow and hostile HTTP clients against a real ``serve-engine`` on loopback, every test bounded in time."""
import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

from jetcap.runtime import metrics
from tests.runtime.test_server import HOST, Server

LIMITS = ["--threads", "1", "--max-connections", "4", "--probe-slots", "2", "--header-timeout", "1.5",
          "--max-body-mb", "1", "--max-buffered-mb", "2", "--min-body-rate-kib", "64"]


@pytest.fixture(scope="module")
def server(classifier_bundle, tmp_path_factory):
    logs = tmp_path_factory.mktemp("hostile-logs")
    started = Server(classifier_bundle, LIMITS, logs / "hostile.log")
    try:
        started.wait_listening()
        assert started.wait_loaded() == "ready"
        yield started
    finally:
        started.kill()


@pytest.fixture(scope="module")
def guarded(classifier_bundle, tmp_path_factory):
    logs = tmp_path_factory.mktemp("guarded-logs")
    started = Server(classifier_bundle, ["--threads", "1", "--allowed-host", "localhost"], logs / "guarded.log")
    try:
        started.wait_listening()
        started.wait_loaded()
        yield started
    finally:
        started.kill()


def _url(server, path):
    return "http://{}:{}{}".format(HOST, server.port, path)


def _slow(server, head=b"GET /health HTTP/1.0\r\nX-Slow: "):
    sock = socket.create_connection((HOST, server.port), timeout=10)
    sock.sendall(head)
    return sock


def _sequence_body(server):
    model = server.request("GET", "/model")[2]
    return json.dumps({"sequence": [[0.0] * model["input_size"]] * model["sequence_length"]["min"]}).encode()


def _exchange(server, raw):
    """Send the raw request bytes ``raw`` and return everything the server answers before closing."""
    sock = _slow(server, raw)
    try:
        sock.settimeout(10)
        return _read_until_closed(sock)
    finally:
        sock.close()


def _read_until_closed(sock, limit=65536):
    """Everything the server sends before closing (head and body may come in separate segments)."""
    chunks = []
    while sum(len(c) for c in chunks) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_slow_headers_get_408_within_the_deadline(server):
    sock = _slow(server)
    began = time.time()
    try:
        sock.settimeout(10)
        answer = _read_until_closed(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.0 408") and b"request timeout" in answer
    assert 1.0 < time.time() - began < 5.0


def test_slow_body_below_the_minimum_rate_gets_408(server):
    sock = _slow(server, b"POST /predict HTTP/1.0\r\nContent-Length: 200000\r\n\r\n{")
    began = time.time()
    try:
        for _ in range(3):
            time.sleep(0.5)
            sock.sendall(b" ")
        sock.settimeout(10)
        answer = sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        answer = b"reset"
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.0 408"), answer
    assert time.time() - began < 8.0  # 1.5 s grace + 200 000 B at 64 KiB/s


def test_probes_and_requests_answer_while_slow_clients_hold_every_slot(server):
    slow = [_slow(server) for _ in range(8)]  # 4 slots + 2 probe slots, and more
    try:
        time.sleep(1.1)  # they are now stalled (a real client sends its headers at once)
        began = time.time()
        for path in ("/health", "/ready", "/metrics"):
            assert urllib.request.urlopen(_url(server, path), timeout=5).status == 200
        request = urllib.request.Request(_url(server, "/predict"), data=_sequence_body(server))
        assert urllib.request.urlopen(request, timeout=5).status == 200
        assert time.time() - began < 3.0
    finally:
        for sock in slow:
            sock.close()


def _wait_slots_free(server, seconds=10.0):
    """Until the server has seen the held connections close (later tests need its slots)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        # until the server has seen the closes, this probe may itself be refused with 503
        status, _, text = server.request("GET", "/metrics", timeout=5)
        values = metrics.parse_text(text) if status == 200 else None
        # this probe's own connection is counted on the main lane
        if values is not None and values[("jetcap_connections_active", ())] <= 1 and values[("jetcap_probe_connections_active", ())] == 0:
            return
        time.sleep(0.1)
    raise AssertionError("the server still holds connections after {} s".format(seconds))


def test_refused_connection_reads_its_503_after_sending_a_whole_body(server):
    # every slot and probe slot is taken by connections too fresh to be evicted; a client that sends
    # its whole request before reading (http.client) must see the 503, not a reset
    time.sleep(0.5)  # connections of earlier tests are released
    body = _sequence_body(server) + b" " * (4 << 20)  # more than the socket buffers hold
    for attempt in range(3):
        held = [_slow(server) for _ in range(6)]  # 4 slots + 2 probe slots
        try:
            time.sleep(0.05)
            connection = http.client.HTTPConnection(HOST, server.port, timeout=10)
            connection.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            status, payload = response.status, json.loads(response.read().decode())
            connection.close()
        finally:
            for sock in held:
                sock.close()
        _wait_slots_free(server)
        if status == 503:
            break
    assert status == 503 and payload["error"] == "too many connections", payload
    assert "--max-connections" in payload["detail"]


def test_body_over_the_limit_is_a_readable_413_for_urllib(server):
    request = urllib.request.Request(_url(server, "/predict"), data=b"[" * (3 << 20))
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=20)
    assert info.value.code == 413
    assert "--max-body-mb" in json.loads(info.value.read().decode())["detail"]


def test_buffered_bodies_are_budgeted(server):
    # two connections send all but the last byte of 1 MiB each (the 2 MiB budget): a third gets 503
    held = [_slow(server, b"POST /predict HTTP/1.0\r\nContent-Length: 1048576\r\n\r\n" + b" " * 1048575)
            for _ in range(2)]
    try:
        time.sleep(0.3)
        status, head, payload = server.request("POST", "/predict", _sequence_body(server), timeout=10)
        assert status == 503 and "--max-buffered-mb" in payload["detail"] and "retry-after" in head
        values = server.metrics()
        assert values[("jetcap_request_body_bytes_buffered", ())] == 2 * 1048576
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("body", [b"[" * 100000, b'{"sequence": [[' + b"1" * 400 + b"]]}",
                                  b'{"sequence": [[1e999, 2]]}', b'{"sequence": [[NaN]]}', b"\xff\xfe"])
def test_hostile_json_is_400(server, body):
    status, _, payload = server.request("POST", "/predict", body, timeout=10)
    assert status == 400 and set(payload) == {"error", "detail"}, payload


def test_no_heap_addresses_in_details(server, captioner_bundle, tmp_path):
    status, _, payload = server.request("POST", "/predict", b"{", timeout=10)
    assert status == 400 and " at 0x" not in payload["detail"]
    from jetcap.serve.parsing import scrub

    assert scrub("cannot identify image file <_io.BytesIO object at 0x7f12ab34cd50>") == \
        "cannot identify image file <request body>"


def test_head_on_get_endpoints(server):
    for path in ("/health", "/ready", "/model", "/metrics"):
        conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
        try:
            conn.request("HEAD", path)
            response = conn.getresponse()
            assert response.status == 200 and response.read() == b""
            assert int(response.getheader("Content-Length")) > 0
        finally:
            conn.close()


def test_host_header_check(guarded):
    status, _, payload = guarded.request("GET", "/health", headers={"Host": "evil.example:80"})
    assert status == 421 and "--allowed-host" in payload["detail"]
    assert guarded.request("GET", "/health", headers={"Host": "localhost:1234"})[0] == 200


def test_binding_every_interface_warns():
    from jetcap.serve.options import ServeOptions

    assert ServeOptions(host="0.0.0.0").exposed and ServeOptions(host="::").exposed
    assert not ServeOptions().exposed


def test_a_trickled_body_is_cut_at_the_minimum_rate_not_at_its_whole_deadline(server):
    # 900 000 bytes declared: the whole body's deadline is 1.5 + 900000 / 64 KiB = 15 s; 70 000 bytes sent
    # at once and then a byte every 0.3 s fall below the rate at 1.5 + 70000 / 64 KiB = 2.6 s
    sock = _slow(server, b"POST /predict HTTP/1.0\r\nContent-Length: 900000\r\n\r\n" + b" " * 70000)
    began = time.time()
    answer = b""
    try:
        sock.settimeout(0.3)
        while time.time() - began < 10 and not answer:
            try:
                answer = sock.recv(4096)
            except socket.timeout:
                sock.sendall(b" ")
        sock.settimeout(5)
        answer += _read_until_closed(sock)
    except (ConnectionResetError, BrokenPipeError):
        answer = answer or b"reset"
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.0 408") and b"slower than 64 KiB/s" in answer, answer
    assert time.time() - began < 5.0
    deadline = time.time() + 5
    while server.metrics()[("jetcap_request_body_bytes_buffered", ())] and time.time() < deadline:
        time.sleep(0.1)
    assert server.metrics()[("jetcap_request_body_bytes_buffered", ())] == 0  # the reservation is released


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_non_ascii_content_length_gets_one_400_or_405(server, method):
    answer = _exchange(server, method.encode() + b" /predict HTTP/1.0\r\nContent-Length: \xb2\r\n\r\n")
    assert answer.count(b"HTTP/1.") == 1, answer  # never a second response on the same connection
    assert answer.startswith(b"HTTP/1.0 400" if method == "POST" else b"HTTP/1.0 405"), answer


def test_expect_100_continue_is_answered_before_the_body(server):
    body = _sequence_body(server)
    head = ("POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n"
            .format(len(body)).encode())
    sock = _slow(server, head)
    try:
        sock.settimeout(1.0)  # curl waits a second for this line before sending anyway
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        sock.settimeout(10)
        answer = _read_until_closed(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.0 200"), answer[:200]
    # refused before its body: the final answer comes instead of 100, so the client never sends the body
    answer = _exchange(server, b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                               b"Content-Length: 5000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 413") and b"100 Continue" not in answer


def test_stop_closes_uploads_that_do_not_arrive_in_time(classifier_bundle, tmp_path):
    """SIGTERM: a request whose body is still arriving gets --header-timeout more seconds, then 503."""
    import signal

    stopping = Server(classifier_bundle, ["--threads", "1", "--header-timeout", "1"], tmp_path / "stop.log")
    try:
        stopping.wait_listening()
        assert stopping.wait_loaded() == "ready"
        sock = _slow(stopping, b"POST /predict HTTP/1.0\r\nContent-Length: 500000\r\n\r\n" + b" " * 100000)
        time.sleep(0.3)
        began = time.time()
        stopping.proc.send_signal(signal.SIGTERM)
        sock.settimeout(10)
        answer = _read_until_closed(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.0 503") and b"shutting down" in answer, answer
        assert stopping.proc.wait(20) == 0
        assert time.time() - began < 6.0
    finally:
        stopping.kill()


@pytest.mark.parametrize("line", [b"GET /health HTTP/2.0", b"GARBAGE", b"BREW /health HTTP/1.0"])
def test_malformed_request_lines_get_a_status_line_and_a_detail(server, line):
    answer = _exchange(server, line + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 "), answer[:100]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1].decode())["detail"]


def test_declaring_a_body_and_sending_nothing_holds_one_chunk_not_the_budget(server):
    """Connections that declare 1 MiB and send nothing (reconnecting as their grace ends) would hold the
    whole budget if the declared length were reserved: only the first chunk is, so others still upload."""
    from jetcap.serve.parsing import BODY_CHUNK

    body = _sequence_body(server)
    _wait_slots_free(server)  # connections of earlier tests are released
    idle = [_slow(server, b"POST /predict HTTP/1.0\r\nContent-Length: 1048576\r\n\r\n") for _ in range(3)]
    try:
        time.sleep(0.3)
        assert server.metrics()[("jetcap_request_body_bytes_buffered", ())] == 3 * BODY_CHUNK
        status, _, payload = server.request("POST", "/predict", body, timeout=10)
        assert status == 200, payload
    finally:
        for sock in idle:
            sock.close()


def test_conflicting_content_lengths_are_400(server):
    answer = _exchange(server, b"POST /predict HTTP/1.0\r\nContent-Length: 5\r\nContent-Length: 50\r\n\r\n[1,2]")
    assert answer.startswith(b"HTTP/1.0 400") and b"conflicting Content-Length" in answer, answer[:300]
