"""Iteration-level batching: requests in flight share each encoder / decoder-step call, and each gets the
captions it would get alone (the sample captioner on real ONNX Runtime, real threads)."""
import threading

import numpy as np
import pytest

from jetcap.export.tasks import unpad
from jetcap.runtime.batching import BatchingRunner, batching_runners
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.pipeline import CaptionPipeline
from jetcap.runtime.session import open_bundle
from jetcap.util.npz import load_npz


@pytest.fixture(scope="module")
def session(captioner_bundle):
    with open_bundle(captioner_bundle, backend="onnxruntime") as opened:
        yield opened


@pytest.fixture(scope="module")
def reference(captioner_bundle):
    return load_npz(Manifest.load(captioner_bundle).reference_path())


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
def test_concurrent_requests_share_steps_and_get_their_own_captions(session, reference, beam):
    manifest = session.manifest
    images = reference["task/images"]
    batchers = batching_runners(manifest, session.runners)
    try:
        pipeline = CaptionPipeline(manifest, batchers)
        got = _concurrently(len(images), lambda i: pipeline.caption(images[i:i + 1], beam_size=beam)[0].tokens)
        key = "task/greedy_tokens" if beam == 1 else "task/beam_tokens"
        assert got == [unpad(row) for row in reference[key]]
        step = batchers["decoder_step"].stats.snapshot()
        assert step["mean_rows"] > 1.5, step  # the steps really were shared
        assert step["rows"] <= step["calls"] * manifest.axes["batch"]["max"]
    finally:
        for batcher in batchers.values():
            batcher.close()


def test_a_bad_call_fails_alone(session, reference):
    runner = BatchingRunner(session.runners["encoder"], session.manifest.graph("encoder"),
                            session.manifest.axes["batch"]["max"], name="encoder")
    images = reference["task/images"]
    try:
        def work(i):
            feed = {"images": images[i:i + 1] if i else np.zeros((1, 3, 5, 5), dtype=np.float32)}
            try:
                return sorted(runner.infer(feed))
            except Exception as exc:  # noqa: BLE001 -- the odd one out must get its own error
                return type(exc).__name__

        results = _concurrently(6, work)
        assert results[0] != sorted(session.manifest.data["graphs"]["encoder"]["outputs"][0])
        assert isinstance(results[0], str)
        assert all(r == ["c0", "features", "h0", "projected"] for r in results[1:])
    finally:
        runner.close()


def test_a_call_over_the_max_batch_runs_alone(session, reference):
    runner = BatchingRunner(session.runners["encoder"], session.manifest.graph("encoder"), 2, name="encoder")
    try:
        out = runner.infer({"images": reference["task/images"][:4]})
        assert out["features"].shape[0] == 4
    finally:
        runner.close()
