"""``jetcap serve-engine``: real servers in subprocesses on free loopback ports, real HTTP.

Every server of this module is started at once (module fixture) so their start-up overlaps; each test
talks to one of them with http.client.  A few in-process tests cover the pieces (metrics text,
multipart parsing, memory guard, dispatcher) with the real readers and threads.
"""
import http.client
import io
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from jetcap.errors import UsageError
from jetcap.runtime import metrics
from jetcap.runtime.server import parse_multipart
from jetcap.runtime.serving import Dispatcher, JsonLog, MemoryGuard, QueueFull

HOST = "127.0.0.1"
START_TIMEOUT = 120.0


# -- helpers --------------------------------------------------------------------------------------
class Server(object):
    """``python -m jetcap serve-engine BUNDLE --port 0 ARGS`` with its stdout read on a thread."""

    def __init__(self, bundle, args, log_path):
        self.log_path = str(log_path)
        self._stderr = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "jetcap", "serve-engine", str(bundle), "--host", HOST, "--port", "0"]
        self.proc = subprocess.Popen(command + list(args), stdout=subprocess.PIPE, stderr=self._stderr, env=env,
                                     universal_newlines=True)
        self.lines = []
        self.port = None
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read)
        self._reader.daemon = True
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            with self._seen:
                self.lines.append(line.rstrip("\n"))
                self._seen.notify_all()
        with self._seen:
            self.lines.append(None)  # EOF
            self._seen.notify_all()

    def wait_line(self, pattern, timeout=START_TIMEOUT):
        """The first stdout line matching ``pattern`` (regex match object)."""
        deadline = time.time() + timeout
        with self._seen:
            while True:
                for line in self.lines:
                    match = re.search(pattern, line) if line is not None else None
                    if match:
                        return match
                if None in self.lines or time.time() > deadline:
                    raise AssertionError("no line matching {!r}; stdout: {}; stderr: {}".format(
                        pattern, self.lines, self.stderr()[-3000:]))
                self._seen.wait(0.2)

    def wait_listening(self):
        match = self.wait_line(r"listening on http://127\.0\.0\.1:(\d+)")
        self.port = int(match.group(1))
        return self

    def wait_loaded(self):
        """Wait for the model-ready or model-failed line."""
        return self.wait_line(r"^model (ready|NOT ready)").group(1)

    def request(self, method, path, body=None, headers=None, timeout=60):
        """``(status, headers, parsed JSON or text)``."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            head = dict((k.lower(), v) for k, v in response.getheaders())
        finally:
            conn.close()
        if head.get("content-type", "").startswith("application/json"):
            return response.status, head, json.loads(data.decode("utf-8"))
        return response.status, head, data.decode("utf-8")

    def metrics(self):
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        return metrics.parse_text(text)

    def stderr(self):
        self._stderr.flush()
        with open(self.log_path) as handle:
            return handle.read()

    def log_records(self):
        return [json.loads(line) for line in self.stderr().splitlines() if line.startswith("{")]

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._stderr.close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._stderr.close()


def sample(metric_values, name, **labels):
    """The value of one series in parsed metrics (0 when absent)."""
    return metric_values.get((name, tuple(sorted(labels.items()))), 0.0)


def png_chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def blank_png(width, height, rows=None):
    """A valid black RGB PNG of ``width`` x ``height`` built row by row (never held decoded in memory);
    ``rows`` < height truncates the pixel data (a header that promises more than it holds)."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * width)
    data = []
    for _ in range(height if rows is None else rows):
        data.append(compressor.compress(row))
    data.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(data))
            + png_chunk(b"IEND", b""))


def multipart(fields, boundary="jetcapBoundary7MA4YWxk"):
    """``(body, content_type)`` of a multipart/form-data request with ``{name: bytes | str}``."""
    parts = []
    for name, value in fields.items():
        if isinstance(value, bytes):
            head = 'Content-Disposition: form-data; name="{}"; filename="{}.png"\r\nContent-Type: image/png'.format(
                name, name)
        else:
            head = 'Content-Disposition: form-data; name="{}"'.format(name)
            value = value.encode("utf-8")
        parts.append(b"--" + boundary.encode() + b"\r\n" + head.encode() + b"\r\n\r\n" + value + b"\r\n")
    body = b"".join(parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, "multipart/form-data; boundary=" + boundary


def sample_images():
    from jetcap import samples

    return [path.read_bytes() for path in samples.sample_images()]


# -- the servers ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(captioner_bundle, classifier_bundle, tmp_path_factory):
    """Every server of this module, started together."""
    logs = tmp_path_factory.mktemp("server-logs")
    not_a_bundle = tmp_path_factory.mktemp("not-a-bundle")
    specs = {
        # one ONNX Runtime thread per worker: the default (one per core) oversubscribes a shared CI machine
        "cap": (captioner_bundle, ["--queue", "64", "--max-concurrency", "2", "--threads", "1", "--max-body-mb", "1"]),
        "cls": (classifier_bundle, ["--queue", "8"]),
        "slow": (captioner_bundle, ["--queue", "0", "--timeout", "0.05", "--max-concurrency", "1"]),
        "guard": (classifier_bundle, ["--max-rss-mb", "1"]),
        "shutdown": (classifier_bundle, []),
        "bad": (not_a_bundle, []),
        "trt": (classifier_bundle, ["--backend", "tensorrt"]),
        "memory": (classifier_bundle, ["--max-memory-mb", "1"]),
    }
    started = {}
    try:
        for name, (bundle, args) in specs.items():
            started[name] = Server(bundle, args, logs / (name + ".log"))
        for server in started.values():
            server.wait_listening()
            server.wait_loaded()
        yield started
    finally:
        for server in started.values():
            server.kill()


# -- endpoints ------------------------------------------------------------------------------------
def test_health_ready_model_of_a_captioner(servers, captioner_bundle):
    from jetcap.runtime.manifest import Manifest

    cap = servers["cap"]
    assert cap.wait_line(r"model ready: captioner bundle on onnxruntime fp32 .* loaded in [\d.]+ s")
    status, _, health = cap.request("GET", "/health")
    assert status == 200 and health["status"] == "alive" and health["model"] == "ready"
    status, _, ready = cap.request("GET", "/ready")
    assert status == 200 and ready["ready"] is True
    assert ready["backend"] == "onnxruntime" and ready["precision"] == "fp32" and ready["load_seconds"] > 0
    assert ready["load"]["queue_limit"] == 64 and ready["load"]["workers"] == 2 and ready["load"]["queued"] == 0
    status, _, model = cap.request("GET", "/model")
    manifest = Manifest.load(captioner_bundle)
    assert status == 200
    assert model["family"] == "captioner" and sorted(model["graphs"]) == sorted(manifest.graph_names)
    assert model["backend"] == "onnxruntime" and model["precision"] == "fp32"
    assert model["vocab_size"] == len(manifest.vocabulary().itos)
    assert model["precisions"] == manifest.precisions


def test_caption_raw_and_multipart_with_options(servers):
    cap = servers["cap"]
    image = sample_images()[0]
    status, _, raw = cap.request("POST", "/caption", image, {"Content-Type": "image/png"})
    assert status == 200, raw
    assert set(raw) >= {"caption", "tokens", "score", "backend", "precision", "latency_ms"}
    assert raw["caption"] and raw["backend"] == "onnxruntime" and raw["precision"] == "fp32"
    assert raw["latency_ms"] > 0 and all(isinstance(t, int) for t in raw["tokens"])
    body, content_type = multipart({"image": image, "beam": "3", "max_len": "4"})
    status, _, form = cap.request("POST", "/caption", body, {"Content-Type": content_type})
    assert status == 200, form
    assert len(form["tokens"]) <= 4
    status, _, query = cap.request("POST", "/caption?beam=3&max_len=4", image)
    assert status == 200 and query["caption"] == form["caption"] and query["tokens"] == form["tokens"]


def test_predict_on_a_classifier(servers, classifier_bundle):
    from jetcap import samples
    from jetcap.runtime.manifest import Manifest

    cls = servers["cls"]
    labels = Manifest.load(classifier_bundle).labels
    status, _, model = cls.request("GET", "/model")
    assert status == 200 and model["family"] == "classifier" and model["labels"] == labels
    for path in samples.sample_sequences()[:2]:
        sequence = np.load(str(path)).tolist()
        status, _, result = cls.request("POST", "/predict", json.dumps({"sequence": sequence}),
                                        {"Content-Type": "application/json"})
        assert status == 200, result
        assert result["label"] in labels and set(result["probabilities"]) == set(labels)
        assert abs(sum(result["probabilities"].values()) - 1.0) < 1e-6 and result["latency_ms"] > 0
        # the list of frames itself, as jetcap predict reads a JSON file: the same answer
        status, _, bare = cls.request("POST", "/predict", json.dumps(sequence), {"Content-Type": "application/json"})
        assert status == 200 and bare["label"] == result["label"] and bare["probabilities"] == result["probabilities"]
    body, content_type = multipart({"sequence": json.dumps({"sequence": sequence})})
    status, _, refused = cls.request("POST", "/predict", body, {"Content-Type": content_type})
    assert status == 415 and "JSON body" in refused["detail"]


def test_wrong_endpoint_path_and_method(servers):
    cap, cls = servers["cap"], servers["cls"]
    for server, path in ((cap, "/predict"), (cls, "/caption"), (cap, "/nope"), (cap, "/")):
        status, _, payload = server.request("POST", path, b"{}")
        assert status == 404 and payload["error"] == "not found", (path, payload)
    status, head, payload = cap.request("GET", "/caption")
    assert status == 405 and head["allow"] == "POST" and "error" in payload
    status, head, payload = cap.request("DELETE", "/health")
    assert status == 405 and head["allow"] == "GET, HEAD"
    status, _, payload = cap.request("BREW", "/health")  # not an HTTP method at all
    assert status == 501 and "error" in payload
    assert sample(cap.metrics(), "jetcap_http_requests_total", endpoint="other", method="other", status="501") >= 1


def test_bad_inputs_are_400(servers):
    cap, cls = servers["cap"], servers["cls"]
    bad = [
        (cap, "/caption", b"this is not an image", {}),
        (cap, "/caption", blank_png(64, 64)[:60], {}),               # truncated file
        (cap, "/caption", blank_png(7000, 6000, rows=1), {}),        # 42 Mpx: over the pixel limit
        (cap, "/caption", blank_png(20000, 20000, rows=1), {}),      # Pillow's own bomb refusal
        (cap, "/caption", b"", {}),
        (cap, "/caption?beam=0", sample_images()[0], {}),
        (cap, "/caption?max_len=abc", sample_images()[0], {}),
        (cap, "/caption?beam=9", sample_images()[0], {}),          # over the bundle's max batch of 8
        (cap, "/caption?beam=%D9%A3", sample_images()[0], {}),     # an Arabic-Indic 3: digits are ASCII
        (cls, "/predict", json.dumps({"sequence": [[0.0, "1"]]}), {}),   # a string is not a number
        (cls, "/predict", json.dumps({"sequence": [[0.0, True]]}), {}),  # nor is a boolean
        (cap, "/caption", multipart({"picture": sample_images()[0]})[0], {"Content-Type": multipart({})[1]}),
        (cls, "/predict", b"{not json", {}),
        (cls, "/predict", json.dumps({"frames": [[0.0]]}), {}),
        (cls, "/predict", json.dumps({"sequence": np.zeros((10, 5)).tolist()}), {}),     # wrong width
        (cls, "/predict", json.dumps({"sequence": []}), {}),
        (cls, "/predict", json.dumps({"sequence": [[0.0, "x"]]}), {}),
    ]
    width = servers["cls"].request("GET", "/model")[2]["input_size"]
    too_long = servers["cls"].request("GET", "/model")[2]["sequence_length"]["max"] + 1
    bad.append((cls, "/predict", json.dumps({"sequence": np.zeros((too_long, width)).tolist()}), {}))
    for server, path, body, headers in bad:
        status, _, payload = server.request("POST", path, body, headers)
        assert status == 400, (path, body[:40], payload)
        assert set(payload) == {"error", "detail"} and "Traceback" not in payload["detail"]
    assert "over the limit" in cap.request("POST", "/caption", blank_png(7000, 6000, rows=1))[2]["detail"]
    assert "between 1 and 8" in cap.request("POST", "/caption?beam=9", sample_images()[0])[2]["detail"]
    assert "more than the bundle's maximum" in cls.request(
        "POST", "/predict", json.dumps({"sequence": np.zeros((too_long, width)).tolist()}))[2]["detail"]


def test_body_too_large_is_413_before_reading(servers):
    cap = servers["cap"]
    conn = http.client.HTTPConnection(HOST, cap.port, timeout=30)
    try:
        # announce 5 MiB (limit 1 MiB) and send none of it: the answer must come without the body
        conn.putrequest("POST", "/caption")
        conn.putheader("Content-Length", str(5 * 1024 * 1024))
        conn.endheaders()
        response = conn.getresponse()
        payload = json.loads(response.read().decode("utf-8"))
    finally:
        conn.close()
    assert response.status == 413 and "limit" in payload["detail"]


def test_metrics_are_prometheus_text(servers):
    cap = servers["cap"]
    cap.request("GET", "/nope")
    assert cap.request("POST", "/caption", sample_images()[0], {"Content-Type": "image/png"})[0] == 200
    values = cap.metrics()
    assert sample(values, "jetcap_http_requests_total", endpoint="other", method="GET", status="404") >= 1
    assert sample(values, "jetcap_http_request_duration_seconds_count", endpoint="/ready") >= 1
    assert sample(values, "jetcap_model_ready") == 1 and sample(values, "jetcap_model_load_seconds") > 0
    assert sample(values, "jetcap_process_resident_memory_bytes") > 10 * 1024 * 1024
    assert sample(values, "jetcap_memory_available_bytes") > 0
    for name in ("jetcap_inferences_in_flight", "jetcap_queue_depth", "jetcap_memory_guard_trips_total",
                 "jetcap_memory_guard_shedding"):
        assert (name, ()) in values, name
    # the decode loop: how long its graphs ran, and how long it was busy (near the uptime: saturated)
    ran = [sample(values, "jetcap_batch_{}_run_seconds".format(graph)) for graph in ("encoder", "decoder_step")]
    assert min(ran) > 0 and sum(ran) <= sample(values, "jetcap_decode_loop_busy_seconds")
    assert sample(values, "jetcap_batch_decoder_step_mean_run_ms") > 0
    assert sample(values, "jetcap_decode_loop_reruns") == 0


def test_request_log_is_one_json_line_per_request(servers):
    cls = servers["cls"]
    cls.request("GET", "/health?probe=log")
    deadline = time.time() + 10
    while time.time() < deadline:
        records = [r for r in cls.log_records() if r.get("event") == "request" and r["path"] == "/health?probe=log"]
        if records:
            break
        time.sleep(0.05)
    assert len(records) == 1
    assert records[0]["method"] == "GET" and records[0]["status"] == 200 and records[0]["latency_ms"] >= 0


# -- load, overload, time-outs, memory ------------------------------------------------------------
def test_1000_requests_8_concurrent_match_the_in_process_pipeline(servers, captioner_bundle):
    from jetcap.runtime import preprocess
    from jetcap.runtime.session import open_bundle

    cap = servers["cap"]
    images = sample_images()
    with open_bundle(captioner_bundle, backend="onnxruntime", threads=1) as session:
        pipeline = session.caption_pipeline()
        beam = int(session.manifest.decoding.get("beam_size") or 1)
        expected = []
        for data in images:
            array = preprocess.preprocess_image(preprocess.open_image(io.BytesIO(data)), session.manifest.preprocessing)
            expected.append(pipeline.text(pipeline.caption(array[None], beam_size=beam)[0]))
    before = cap.metrics()

    def one(index):
        status, _, payload = cap.request("POST", "/caption", images[index % len(images)])
        return index, status, payload

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(1000)))
    statuses = [status for _, status, _ in results]
    assert statuses.count(200) == 1000, sorted(set(statuses))
    wrong = [(i, p["caption"]) for i, _, p in results if p["caption"] != expected[i % len(images)]]
    assert not wrong, wrong[:5]
    after = cap.metrics()
    served = (sample(after, "jetcap_http_requests_total", endpoint="/caption", method="POST", status="200")
              - sample(before, "jetcap_http_requests_total", endpoint="/caption", method="POST", status="200"))
    assert served == 1000


def test_queue_full_is_503_and_timeout_is_504(servers):
    slow = servers["slow"]  # --queue 0 --timeout 0.05: one worker, nobody may wait
    big = blank_png(4000, 4000)  # decoding 16 Mpx takes far longer than 50 ms
    outcome = {}

    def send_big():
        outcome["big"] = slow.request("POST", "/caption", big)

    thread = threading.Thread(target=send_big)
    thread.start()
    busy = None
    deadline = time.time() + 30
    while time.time() < deadline:
        if sample(slow.metrics(), "jetcap_inferences_in_flight") >= 1:
            busy = slow.request("POST", "/caption", sample_images()[0])
            break
        time.sleep(0.005)
    thread.join(60)
    status, _, payload = outcome["big"]
    assert status == 504 and "--timeout" in payload["detail"], payload
    assert busy is not None, "the big image never showed up as in flight"
    status, head, payload = busy
    assert status == 503 and head["retry-after"] == "1" and "--queue" in payload["detail"], payload
    values = slow.metrics()
    assert sample(values, "jetcap_rejected_requests_total", reason="queue_full") >= 1
    assert sample(values, "jetcap_rejected_requests_total", reason="timeout") >= 1


def test_memory_guard_sheds_load_with_503(servers):
    guard = servers["guard"]  # --max-rss-mb 1: always over
    status, head, payload = guard.request("POST", "/predict", json.dumps({"sequence": [[0.0] * 3]}))
    assert status == 503 and int(head["retry-after"]) > 0 and "--max-rss-mb" in payload["detail"], payload
    status, _, ready = guard.request("GET", "/ready")
    assert status == 503 and ready["state"] == "shedding"
    assert guard.request("GET", "/health")[0] == 200
    values = guard.metrics()
    assert sample(values, "jetcap_memory_guard_trips_total") >= 1
    assert sample(values, "jetcap_memory_guard_shedding") == 1
    assert any(r.get("event") == "memory_guard" and r["state"] == "shedding" for r in guard.log_records())


# -- load failures keep the server up -------------------------------------------------------------
@pytest.mark.parametrize("name, words", [
    ("bad", ["manifest.json"]),
    ("trt", ["tensorrt"]),
    ("memory", ["insufficient memory", "budget of 1.0 MiB", "MiB"]),
])
def test_load_failure_stays_up_and_unready(servers, name, words):
    server = servers[name]
    server.wait_line(r"^model NOT ready")
    status, _, health = server.request("GET", "/health")
    assert status == 200 and health["model"] == "failed"
    status, _, ready = server.request("GET", "/ready")
    assert status == 503 and ready["state"] == "failed"
    for word in words:
        assert word in ready["detail"], ready
    status, _, payload = server.request("POST", "/caption", b"x")
    assert status in (404, 503) and "error" in payload
    assert sample(server.metrics(), "jetcap_model_ready") == 0


# -- graceful shutdown ----------------------------------------------------------------------------
def test_sigterm_finishes_the_request_in_flight_then_exits_0(servers):
    server = servers["shutdown"]
    model = server.request("GET", "/model")[2]
    frames = model["sequence_length"]["min"]
    body = json.dumps({"sequence": np.zeros((frames, model["input_size"])).tolist()}).encode("utf-8")
    sock = socket.create_connection((HOST, server.port), timeout=30)
    try:
        head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n"
        sock.sendall(head.format(len(body)).encode("latin-1") + body[:len(body) // 2])
        time.sleep(0.3)  # the handler is now reading the body: a request in flight
        server.proc.send_signal(signal.SIGTERM)
        server.wait_line(r"SIGTERM: stopping \(finishing 1 request")
        refused = False
        deadline = time.time() + 10
        while time.time() < deadline and not refused:
            try:
                socket.create_connection((HOST, server.port), timeout=1).close()
                time.sleep(0.05)
            except (ConnectionError, socket.timeout):  # refused, or reset while the listener closed
                refused = True
        assert refused, "the server still accepts connections after SIGTERM"
        sock.sendall(body[len(body) // 2:])
        response = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            response += chunk
    finally:
        sock.close()
    assert response.startswith(b"HTTP/1.0 200"), response[:200]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1].decode("utf-8"))["label"]
    assert server.proc.wait(60) == 0
    events = [r["event"] for r in server.log_records()]
    assert events.index("shutting_down") < events.index("runners_released") < events.index("stopped")


def test_bad_bundle_server_exits_0_on_sigterm(servers):
    assert servers["bad"].stop() == 0


# -- the pieces, in process -----------------------------------------------------------------------
def test_metrics_registry_renders_and_parses():
    registry = metrics.Registry()
    counter = registry.counter("x_total", "X.", ["code"])
    counter.inc(code="200")
    counter.inc(2, code='a"b')
    histogram = registry.histogram("lat_seconds", "L.", ["e"], buckets=(0.1, 1.0))
    histogram.observe(0.05, e="/a")
    histogram.observe(0.5, e="/a")
    registry.gauge("g", "G.", function=lambda: 3.5)
    text = registry.render()
    assert "# TYPE x_total counter" in text and "# TYPE lat_seconds histogram" in text
    values = metrics.parse_text(text)
    assert values[("x_total", (("code", 'a"b'),))] == 2
    assert values[("lat_seconds_bucket", (("e", "/a"), ("le", "0.1")))] == 1
    assert values[("lat_seconds_bucket", (("e", "/a"), ("le", "+Inf")))] == 2
    assert values[("lat_seconds_count", (("e", "/a"),))] == 2 and values[("g", ())] == 3.5
    with pytest.raises(ValueError):
        registry.counter("x_total", "again")


def test_parse_multipart_keeps_binary_exact():
    payload = bytes(bytearray(range(256))) * 3 + b"\r\n--not-the-boundary\r\n"
    body, content_type = multipart({"image": payload, "beam": "2"})
    fields = parse_multipart(body, content_type)
    assert fields["image"] == payload and fields["beam"] == b"2"
    with pytest.raises(UsageError):
        parse_multipart(b"garbage", content_type)
    with pytest.raises(UsageError):
        parse_multipart(body, "multipart/form-data")


def test_memory_guard_trips_and_recovers_on_real_readings():
    from jetcap.runtime.loader import current_rss_bytes
    from jetcap.runtime.memory import read_memory_info

    log = JsonLog(stream=open(os.devnull, "w"))
    trips = []
    guard = MemoryGuard(max_rss_bytes=1 << 20, log=log, on_trip=lambda: trips.append(1))
    assert guard.check() is True and guard.trips == 1 and "--max-rss-mb" in guard.reason
    guard.max_rss_bytes = current_rss_bytes() * 4
    assert guard.check() is False and guard.reason is None
    available = read_memory_info().available
    floor = MemoryGuard(min_available_bytes=available * 4, log=log)
    assert floor.check() is True and "--memory-threshold-mb" in floor.reason
    floor.min_available_bytes = available // 4
    assert floor.check() is False and trips == [1]


def test_dispatcher_admits_workers_plus_queue():
    release = threading.Event()
    dispatcher = Dispatcher(workers=1, queue_size=1)
    dispatcher.start()
    first = dispatcher.submit(lambda: release.wait(10) and "first")
    deadline = time.time() + 10
    while dispatcher.running == 0 and time.time() < deadline:
        time.sleep(0.001)
    second = dispatcher.submit(lambda: "second")
    with pytest.raises(QueueFull):
        dispatcher.submit(lambda: "third")
    release.set()
    assert first.done.wait(10) and second.done.wait(10)
    assert (first.result, second.result) == ("first", "second")
    failing = dispatcher.submit(lambda: 1 / 0)
    assert failing.done.wait(10) and isinstance(failing.error, ZeroDivisionError)
    assert dispatcher.close(10)
