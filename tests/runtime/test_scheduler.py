"""The decode loop: caption requests in flight share each encoder / decoder-step call, and each gets the
captions it would get alone (the sample captioner on real ONNX Runtime, real threads)."""
import threading
import time

import numpy as np
import pytest

from jetcap.errors import UsageError
from jetcap.export.tasks import unpad
from jetcap.runtime import decoding
from jetcap.runtime.decoder_protocol import DecoderProtocol
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.pipeline import CaptionPipeline
from jetcap.runtime.scheduler import ContextRows, DecodeScheduler, LoopClosed
from jetcap.runtime.session import open_bundle
from jetcap.util.npz import load_npz

from .recording import AnsweringNothing, AskedOutputs, Blocking, HostAsDevice


@pytest.fixture(scope="module")
def session(captioner_bundle):
    with open_bundle(captioner_bundle, backend="onnxruntime") as opened:
        yield opened


@pytest.fixture(scope="module")
def reference(captioner_bundle):
    return load_npz(Manifest.load(captioner_bundle).reference_path())


@pytest.fixture()
def scheduler(session):
    loop = DecodeScheduler(session.manifest, session.runners)
    yield loop
    loop.close()


def _concurrently(count, work):
    results, errors = [None] * count, []
    barrier = threading.Barrier(count)

    def run(i):
        try:
            barrier.wait(10)
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 -- collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    return results


@pytest.mark.parametrize("beam", [1, 3])
def test_concurrent_requests_share_steps_and_get_their_own_captions(session, reference, scheduler, beam):
    images = reference["task/images"]
    got = _concurrently(len(images), lambda i: scheduler.caption(images[i:i + 1], beam_size=beam)[0].tokens)
    key = "task/greedy_tokens" if beam == 1 else "task/beam_tokens"
    assert got == [unpad(row) for row in reference[key]]
    step = scheduler.stats["decoder_step"].snapshot()
    assert step["mean_rows"] > 1.5, step  # the steps really were shared
    assert step["rows"] <= step["calls"] * session.manifest.axes["batch"]["max"]
    assert step["requests"] >= step["calls"]


def test_mixed_greedy_and_beam_requests_match_the_single_request_search(session, reference, scheduler):
    images = reference["task/images"]
    pipeline = CaptionPipeline(session.manifest, session.runners)
    alone = [pipeline.caption(images[i:i + 1], beam_size=1 + (i % 2) * 2)[0] for i in range(len(images))]
    together = _concurrently(len(images), lambda i: scheduler.caption(images[i:i + 1], beam_size=1 + (i % 2) * 2)[0])
    assert [h.tokens for h in together] == [h.tokens for h in alone]
    assert np.allclose([h.score for h in together], [h.score for h in alone], atol=1e-5)
    assert all(a.alphas.shape == b.alphas.shape for a, b in zip(together, alone))


def test_one_request_of_many_images_and_a_beam_wider_than_the_batch(session, reference, scheduler):
    images = reference["task/images"]
    pipeline = CaptionPipeline(session.manifest, session.runners)
    assert ([h.tokens for h in scheduler.caption(images)]
            == [h.tokens for h in pipeline.caption(images)])
    most = session.manifest.axes["batch"]["max"]
    assert (scheduler.caption(images[:1], beam_size=most)[0].tokens
            == pipeline.caption(images[:1], beam_size=most)[0].tokens)
    # a beam's rows run in one step call: more than the bundle's max batch (a TensorRT profile's) is refused
    for caption in (scheduler.caption, pipeline.caption):
        with pytest.raises(UsageError, match="over the bundle's max batch of {}".format(most)):
            caption(images[:1], beam_size=most + 1)


def test_a_bad_image_fails_its_own_request_only(session, reference, scheduler):
    images = reference["task/images"]

    def work(i):
        batch = images[i:i + 1] if i else np.zeros((1, 3, 5, 5), dtype=np.float32)
        try:
            return scheduler.caption(batch)[0].tokens
        except Exception as exc:  # noqa: BLE001 -- the odd one out must get its own error
            return type(exc).__name__

    results = _concurrently(6, work)
    assert isinstance(results[0], str)
    assert results[1:] == [unpad(row) for row in reference["task/greedy_tokens"][1:6]]


def test_closed_loop_refuses_new_requests(session, reference):
    loop = DecodeScheduler(session.manifest, session.runners)
    loop.close()
    with pytest.raises(LoopClosed, match="closed"):
        loop.caption(reference["task/images"][:1])


def test_the_search_generators_are_the_searches(session, reference):
    """greedy_decode / beam_search are run_search over the generators the loop drives."""
    pipeline = CaptionPipeline(session.manifest, session.runners)
    encoded = pipeline.encode(reference["task/images"][:2])
    vocab = pipeline.vocab
    session_a = pipeline.decoder_session(encoded)
    driven = decoding.run_search(decoding.greedy_search(2, vocab.start_id, vocab.end_id, 20, session_a.topk),
                                 session_a)
    assert [h.tokens for h in driven] == [unpad(row) for row in reference["task/greedy_tokens"][:2]]


def test_context_rows_lay_out_any_join_leave_and_reorder_as_a_concatenation_would():
    """Searches join, leave and reorder their rows in random order; the laid-out context always equals
    the concatenation of the rows of the jobs in the order returned, and only changed rows are copied."""
    rng = np.random.default_rng(3)
    rows = ContextRows(["features", "projected"], capacity=8)
    live = {}  # number -> (version, {name: rows})
    copied_by_concatenation = 0
    for _ in range(300):
        if live and (len(live) > 5 or rng.random() < 0.4):
            del live[int(rng.choice(sorted(live)))]
        if rng.random() < 0.6 and sum(len(v[1]["features"]) for v in live.values()) < 6:
            count = int(rng.integers(1, 3))
            live[int(rng.integers(10 ** 6))] = (0, {"features": rng.standard_normal((count, 4, 3)).astype(np.float32),
                                                   "projected": rng.standard_normal((count, 4)).astype(np.float32)})
        if live and rng.random() < 0.2:  # a beam reordered its rows: new version, new values
            number = int(rng.choice(sorted(live)))
            version, values = live[number]
            live[number] = (version + 1, dict((k, v[::-1].copy()) for k, v in values.items()))
        if not live:
            continue
        jobs = list(live)
        rng.shuffle(jobs)
        feed, order = rows.arrange(jobs, [(n, live[n][0]) for n in jobs], lambda n: live[n][1])
        assert sorted(order) == sorted(jobs)
        for name in ("features", "projected"):
            expected = np.concatenate([live[n][1][name] for n in order])
            assert np.array_equal(feed[name], expected)
            assert feed[name].flags["C_CONTIGUOUS"]
        copied_by_concatenation += sum(len(live[n][1]["features"]) for n in jobs)
    assert rows.copied_rows < copied_by_concatenation / 2, (rows.copied_rows, copied_by_concatenation)


def test_context_rows_refuse_more_rows_or_other_shapes_and_then_rewrite_everything():
    rows = ContextRows(["x"], capacity=3)
    a, b = np.zeros((2, 5), np.float32), np.ones((2, 5), np.float32)
    values = {"a": {"x": a}, "b": {"x": b}, "c": {"x": np.ones((1, 6), np.float32)}}
    feed, order = rows.arrange(["a"], ["a"], values.get)
    with pytest.raises(ValueError, match="do not fit"):
        rows.arrange(["a", "b"], ["a", "b"], values.get)
    with pytest.raises(ValueError, match="shape"):
        rows.arrange(["a", "c"], ["a", "c"], values.get)
    feed, order = rows.arrange(["c"], ["c"], values.get)  # alone: rows of another shape get their own array
    assert np.array_equal(feed["x"], values["c"]["x"])
    feed, order = rows.arrange(["b"], ["b"], values.get)
    assert np.array_equal(feed["x"], b)


def test_the_loop_reports_its_busy_time_and_its_graphs_run_time(session, reference, scheduler):
    images = reference["task/images"]
    _concurrently(4, lambda i: scheduler.caption(images[i:i + 1])[0].tokens)
    scheduler.close()  # its last iteration's busy time is added after the last caption is answered
    encoder, step = scheduler.stats["encoder"].snapshot(), scheduler.stats["decoder_step"].snapshot()
    assert encoder["run_seconds"] > 0 and step["run_seconds"] > 0
    assert step["mean_run_ms"] == pytest.approx(1000 * step["run_seconds"] / step["calls"])
    assert encoder["run_seconds"] + step["run_seconds"] <= scheduler.busy_seconds


class _FailingEveryThirdBatch(object):
    """The real step runner, except that every third call of more rows than one search has (a beam of 3)
    fails: a fault injected to drive the loop's run-each-search-alone path, its context rows laid out again."""

    def __init__(self, runner):
        self.runner = runner
        self.calls = 0

    def infer(self, feed, outputs=None):
        rows = len(next(iter(feed.values())))
        if rows > 3:
            self.calls += 1
            if self.calls % 3 == 0:
                raise RuntimeError("injected failure of a batched step")
        return self.runner.infer(feed, outputs)


def _loop_with_step(session, wrapper, **options):
    """A decode loop over the session's runners, its step runner wrapped in ``wrapper``; and the wrapper."""
    step = wrapper(session.runners["decoder_step"])
    return DecodeScheduler(session.manifest, dict(session.runners, decoder_step=step), **options), step


def _mixed_requests_caption_as_alone(session, reference, wrapper):
    """Greedy and beam-3 requests at once through a loop whose step runner is wrapped in ``wrapper``: each
    gets the caption it gets alone; returns the wrapper and the number of batched step calls that failed
    and were run again search by search."""
    images = reference["task/images"]
    loop, step = _loop_with_step(session, wrapper)
    try:
        got = _concurrently(len(images), lambda i: loop.caption(images[i:i + 1], beam_size=1 + (i % 2) * 2)[0].tokens)
    finally:
        loop.close()
    pipeline = CaptionPipeline(session.manifest, session.runners)
    assert got == [pipeline.caption(images[i:i + 1], beam_size=1 + (i % 2) * 2)[0].tokens for i in range(len(images))]
    return step, loop.reruns


def test_a_failed_batched_step_reruns_each_search_alone_with_its_own_rows(session, reference):
    step, reruns = _mixed_requests_caption_as_alone(session, reference, _FailingEveryThirdBatch)
    assert step.calls >= 3 and reruns >= 1  # the failure path really ran


def test_a_loop_that_dies_answers_every_request_and_refuses_new_ones(session, reference):
    images = reference["task/images"]
    failures = []
    loop, _ = _loop_with_step(session, AnsweringNothing, on_failure=lambda exc, trace: failures.append((exc, trace)))
    try:
        def work(i):
            try:
                return loop.caption(images[i:i + 1])
            except Exception as exc:  # noqa: BLE001 -- each request must get an error, not hang
                return exc
        results = _concurrently(4, work)
        # those in the loop when it died get its reason, any later one the closed loop's refusal with it
        assert all(isinstance(r, Exception) for r in results), results
        assert all("the decode loop stopped: KeyError" in str(r) for r in results), results
        with pytest.raises(LoopClosed, match="the decode loop stopped: KeyError"):
            loop.caption(images[:1])
        # told once, with the traceback, on the loop's thread (no unhandled-thread traceback on stderr)
        assert loop.failure.startswith("the decode loop stopped: KeyError")
        assert len(failures) == 1 and isinstance(failures[0][0], KeyError)
        assert "Traceback" in failures[0][1] and "KeyError" in failures[0][1]
    finally:
        assert loop.close()


def test_a_call_that_does_not_return_shows_as_a_long_iteration_and_busy_time(session, reference):
    loop, step = _loop_with_step(session, Blocking)
    try:
        assert loop.iteration_seconds() == 0.0 and loop.busy_seconds == 0.0  # waiting for work
        request = loop.submit(reference["task/images"][:1])
        assert step.entered.wait(10)
        first = loop.iteration_seconds()
        time.sleep(0.3)
        assert loop.iteration_seconds() >= first + 0.25 and loop.busy_seconds >= 0.3  # busy, never "idle"
        step.release.set()
        assert request.done.wait(10) and request.error is None
        deadline = time.time() + 10
        while loop.iteration_seconds() and time.time() < deadline:
            time.sleep(0.01)
        assert loop.iteration_seconds() == 0.0 and loop.busy_seconds >= 0.3
    finally:
        step.release.set()
        assert loop.close()


def test_step_calls_ask_for_the_state_and_the_top_k_never_the_whole_distribution(session, reference):
    step, reruns = _mixed_requests_caption_as_alone(session, reference, AskedOutputs)
    assert reruns == 0
    protocol = DecoderProtocol.from_manifest(session.manifest)
    assert step.asked and set(map(tuple, step.asked)) == {tuple(sorted(list(protocol.state_outputs) +
                                                                     list(protocol.fetch_topk)))}
    assert "log_probs" not in step.asked[0]


def test_a_device_runner_gets_the_context_rows_copied_only_when_they_change(session, reference):
    context = len(DecoderProtocol.from_manifest(session.manifest).context)
    step, reruns = _mixed_requests_caption_as_alone(session, reference, HostAsDevice)
    # the word and the state go with every call; the context only when a search joins, leaves or changes its
    # number of rows (a beam widening, finished hypotheses), never for a beam's reorder of equal rows; no
    # batched call failed (a stale context would, and running each search alone would hide it)
    assert reruns == 0 and not step.live  # the loop's close() freed the "device" buffers
    assert step.calls > 0 and step.uploads % context == 0 and step.uploads // context < step.calls * 2 // 3
    images = reference["task/images"]
    loop, step = _loop_with_step(session, HostAsDevice)
    try:
        greedy = loop.caption(images[:1])[0]
        assert (step.calls >= 2, step.uploads) == (True, context)  # several steps, each context input copied once
        beam = loop.caption(images[1:2], beam_size=3)[0]
    finally:
        assert loop.close()
    assert loop.reruns == 0 and not step.live
    pipeline = CaptionPipeline(session.manifest, session.runners)
    assert greedy.tokens == pipeline.caption(images[:1])[0].tokens
    assert beam.tokens == pipeline.caption(images[1:2], beam_size=3)[0].tokens


class _FailingThirdUpload(HostAsDevice):
    """Its third copy to the "device" fails, as an out-of-memory would."""

    def upload(self, buffer, array):
        if self.uploads == 2:
            self.uploads += 1
            raise MemoryError("injected: the device is full")
        return HostAsDevice.upload(self, buffer, array)


def test_device_inputs_copy_again_after_a_copy_that_failed_half_way(session):
    from jetcap.runtime.backends.tensorrt import DeviceInputs

    runner = _FailingThirdUpload(session.runners["decoder_step"])
    inputs = DeviceInputs(runner, ["features", "projected"])
    first = {"features": np.ones((2, 4, 3), np.float32), "projected": np.ones((2, 4), np.float32)}
    second = {"features": np.zeros((3, 4, 3), np.float32), "projected": np.zeros((3, 4), np.float32)}
    inputs.get(first, "layout 1")
    with pytest.raises(MemoryError):
        inputs.get(second, "layout 2")  # features copied, projected not: the buffers hold neither layout
    buffers = inputs.get(first, "layout 1")  # the key of the buffers' last full copy: copied again all the same
    assert runner.uploads == 5
    assert all((buffers[name].array == 1).all() and len(buffers[name].array) == 2 for name in first)
    inputs.get(first, "layout 1")  # now they hold it: no copy
    assert runner.uploads == 5
    inputs.close()
    assert not runner.live
