"""``serve-engine --batching`` when its decode loop fails, hangs, or the server stops while loading.

A real server in this process on a loopback port, the real ONNX Runtime runners of the sample captioner;
the faults are injected by wrapping the decode loop's real step runner (what a bug outside the loop's
per-request guards or a hung device would do), never by replacing a component.
"""
import http.client
import io
import json
import threading
import time

import pytest

from jetcap.runtime import metrics
from jetcap.runtime.serving import JsonLog, ModelState
from jetcap.serve.app import EngineServer
from jetcap.serve.options import ServeOptions
from tests.runtime.recording import AnsweringNothing, Blocking
from tests.runtime.test_server import blank_png

HOST = "127.0.0.1"


class _Log(JsonLog):
    """The server's JSON log, kept as records."""

    def __init__(self):
        JsonLog.__init__(self, io.StringIO())

    def records(self, event=None):
        lines = [json.loads(line) for line in self.stream.getvalue().splitlines()]
        return [r for r in lines if event is None or r["event"] == event]


def _start(bundle, **options):
    log = _Log()
    app = EngineServer(bundle, ServeOptions(host=HOST, port=0, threads=1, **options), log=log, out=io.StringIO())
    app.start()
    app.model.join(120)
    assert app.model.state == "ready", app.model.reason
    return app, log


def _request(app, method, path, body=None, timeout=30):
    connection = http.client.HTTPConnection(HOST, app.httpd.server_address[1], timeout=timeout)
    try:
        connection.request(method, path, body=body, headers={"Content-Type": "image/png"} if body else {})
        response = connection.getresponse()
        data = response.read()
        text = data.decode("utf-8")
        return response.status, (json.loads(text) if response.getheader("Content-Type", "").startswith(
            "application/json") else text)
    finally:
        connection.close()


def _metric(app, name):
    values = metrics.parse_text(_request(app, "GET", "/metrics")[1])
    return [value for (sample, labels), value in values.items() if sample == name][0]


def test_a_loop_that_dies_makes_the_model_failed_not_the_clients_fault(captioner_bundle, capfd):
    app, log = _start(captioner_bundle)
    try:
        scheduler = app.model.scheduler
        scheduler.step = AnsweringNothing(scheduler.step)  # only the loop's thread reads it, at its next step
        status, payload = _request(app, "POST", "/caption", blank_png(32, 32))
        assert status == 500 and "the decode loop stopped: KeyError" in payload["detail"], payload
        status, payload = _request(app, "GET", "/ready")
        assert (status, payload["state"]) == (503, "failed") and "decode loop stopped" in payload["detail"]
        for _ in range(2):  # later requests: the server is unavailable, never "bad request"
            status, payload = _request(app, "POST", "/caption", blank_png(32, 32))
            assert status == 503 and "decode loop stopped" in payload["detail"], payload
        assert _request(app, "GET", "/health")[1]["model"] == "failed"
        assert _metric(app, "jetcap_model_ready") == 0
        failed = log.records("model_failed")
        assert len(failed) == 1 and failed[0]["error_type"] == "KeyError" and "Traceback" in failed[0]["traceback"]
    finally:
        app.shutdown()
    assert "Exception in thread" not in capfd.readouterr().err  # no raw traceback between the JSON log lines


def test_a_step_that_does_not_return_makes_the_server_stalled_until_it_does(captioner_bundle):
    app, log = _start(captioner_bundle, timeout=1.0, stall_seconds=1.0)
    blocking = None
    try:
        scheduler = app.model.scheduler
        blocking = scheduler.step = Blocking(scheduler.step)
        answers = []
        client = threading.Thread(target=lambda: answers.append(_request(app, "POST", "/caption", blank_png(32, 32))))
        client.start()
        assert blocking.entered.wait(30)
        time.sleep(1.3)  # past --timeout in one iteration
        status, payload = _request(app, "GET", "/ready")
        assert (status, payload["state"]) == (503, "stalled") and "one iteration" in payload["detail"], payload
        status, payload = _request(app, "POST", "/caption", blank_png(32, 32))
        assert status == 503 and "one iteration" in payload["detail"], payload
        assert _metric(app, "jetcap_decode_loop_iteration_seconds") > 1.0
        assert _metric(app, "jetcap_decode_loop_busy_seconds") > 1.0  # busy, not idle, while it hangs
        client.join(30)
        assert answers[0][0] == 504  # the stuck request timed out
        blocking.release.set()
        deadline = time.time() + 30
        while _request(app, "GET", "/ready")[0] != 200 and time.time() < deadline:
            time.sleep(0.05)
        assert _request(app, "GET", "/ready")[0] == 200
        status, payload = _request(app, "POST", "/caption", blank_png(32, 32))
        assert status == 200 and payload["caption"]
        assert not log.records("model_failed")
    finally:
        if blocking is not None:
            blocking.release.set()
        app.shutdown()


class _WarmUpHeld(ModelState):
    """The real model state, its warm-up held until ``go`` is set: a stop that arrives during the warm-up."""

    def __init__(self, *args):
        ModelState.__init__(self, *args)
        self.warming = threading.Event()
        self.go = threading.Event()

    def _warm_up(self):
        self.warming.set()
        self.go.wait(60)
        ModelState._warm_up(self)


@pytest.mark.parametrize("batching", [True, False])
def test_closing_during_the_warm_up_releases_the_runners_after_it_and_fails_nothing(captioner_bundle, batching):
    log = _Log()
    model = _WarmUpHeld(captioner_bundle, ServeOptions(port=0, threads=1, batching=batching), log)
    model.start_loading()
    assert model.warming.wait(120)
    session = model.session
    model.close()  # the shutdown, while the warm-up is about to use the runners
    assert not session.closed and model.state == "closed"  # not released under the warm-up
    model.go.set()
    model.join(60)
    assert session.closed and model.session is None and model.scheduler is None and model.state == "closed"
    assert not log.records("model_failed") and not log.records("model_ready")
    assert len(log.records("runners_released")) == 1


def test_closing_before_the_load_starts_opens_nothing(captioner_bundle):
    log = _Log()
    model = ModelState(captioner_bundle, ServeOptions(port=0, threads=1), log)
    model.close()
    model.load()
    assert model.session is None and model.state == "closed" and not log.records("model_failed")


class _LoopDiesInWarmUp(ModelState):
    """The real model state whose decode loop loses the warm-up's step outputs (a bug found at start-up)."""

    def _warm_up(self):
        self.scheduler.step = AnsweringNothing(self.scheduler.step)
        ModelState._warm_up(self)


def test_a_loop_that_dies_in_the_warm_up_is_reported_with_its_own_error_and_traceback(captioner_bundle):
    log = _Log()
    model = _LoopDiesInWarmUp(captioner_bundle, ServeOptions(port=0, threads=1), log)
    model.load()
    assert model.state == "failed" and "the decode loop stopped: KeyError" in model.reason
    failed = log.records("model_failed")
    assert len(failed) == 1 and failed[0]["error_type"] == "KeyError" and "Traceback" in failed[0]["traceback"]
    assert model.session is None and model.scheduler is None  # the memory is given back
