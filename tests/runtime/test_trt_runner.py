"""TensorRT runner: pure helpers everywhere; real engines and the GPU-resident decoder state where
TensorRT and pycuda are installed (marker ``trt``)."""
import numpy as np
import pytest

from . import tiny_bundle
from jetcap.errors import MissingDependencyError, UsageError
from jetcap.runtime import decoding, engine
from jetcap.runtime.backends import tensorrt as trt_backend
from jetcap.runtime.backends import trt_api
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.decoder_protocol import DecoderProtocol
from jetcap.util.lazy import available

HAVE_TRT = trt_api.tensorrt_available()
HAVE_PYCUDA = available("pycuda.driver")
needs_gpu_stack = pytest.mark.skipif(not (HAVE_TRT and HAVE_PYCUDA),
                                     reason="needs a real TensorRT installation and pycuda (absent here)")


# -- pure helpers --------------------------------------------------------------------------------
def test_volume():
    assert trt_backend.volume((2, 3, 4)) == 24
    assert trt_backend.volume(()) == 1
    assert trt_backend.volume((0, 5)) == 0


def test_engine_input_array_narrows_ids_with_a_range_check():
    ids = np.array([0, 5, 9], dtype=np.int64)
    out = trt_backend.engine_input_array(ids, np.int32, "prev_word")  # TensorRT 8.x binds int64 as int32
    assert out.dtype == np.int32 and out.tolist() == [0, 5, 9]
    with pytest.raises(UsageError, match="range"):
        trt_backend.engine_input_array(np.array([1 << 40], dtype=np.int64), np.int32, "prev_word")
    same = np.ones((2, 3), dtype=np.float32)
    assert trt_backend.engine_input_array(same, np.float32) is not None
    with pytest.raises(UsageError, match="dtype"):
        trt_backend.engine_input_array(np.ones(2, dtype=np.float64), np.float32, "h")
    fortran = np.asfortranarray(np.ones((3, 2), dtype=np.float32))
    assert trt_backend.engine_input_array(fortran, np.float32).flags["C_CONTIGUOUS"]


def test_row_copy_plan():
    # identity: one copy; duplicates and reorders: separate copies; consecutive runs merged
    assert trt_backend.row_copy_plan([0, 1, 2], 8) == [(0, 0, 24)]
    assert trt_backend.row_copy_plan([0, 0, 0], 4) == [(0, 0, 4), (4, 0, 4), (8, 0, 4)]
    assert trt_backend.row_copy_plan([2, 0, 1], 4) == [(0, 8, 4), (4, 0, 8)]
    assert trt_backend.row_copy_plan([], 4) == []
    with pytest.raises(UsageError):
        trt_backend.row_copy_plan([-1], 4)


def test_row_copy_plan_gathers_like_numpy():
    rng = np.random.RandomState(0)
    src = rng.normal(size=(5, 3)).astype(np.float32)
    for rows in ([4, 4, 1], [0, 1, 2, 3, 4], [3, 2, 1], [1, 2, 2, 3]):
        dst = bytearray(len(rows) * 12)
        raw = src.tobytes()
        for dst_off, src_off, nbytes in trt_backend.row_copy_plan(rows, 12):
            dst[dst_off:dst_off + nbytes] = raw[src_off:src_off + nbytes]
        np.testing.assert_array_equal(np.frombuffer(bytes(dst), dtype=np.float32).reshape(len(rows), 3), src[rows])


def test_row_copy_plan_gathers_a_later_batch_axis_like_numpy():
    # an nn.LSTM state is (layers, batch, dim): rows are gathered within each layer
    src = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)
    for rows in ([3, 3, 0], [0, 1, 2, 3], [2], [1, 2, 2, 3, 0]):
        dst = bytearray(2 * len(rows) * 12)
        raw = src.tobytes()
        for dst_off, src_off, nbytes in trt_backend.row_copy_plan(rows, 12, outer=2, src_rows=4):
            dst[dst_off:dst_off + nbytes] = raw[src_off:src_off + nbytes]
        got = np.frombuffer(bytes(dst), dtype=np.float32).reshape(2, len(rows), 3)
        np.testing.assert_array_equal(got, src[:, rows])


def test_unresolved_output_shape_is_an_error():
    assert trt_backend.check_output_shape("y", [2, 3]) == (2, 3)
    with pytest.raises(trt_backend.TensorRTError, match="unresolved"):
        trt_backend.check_output_shape("y", (-1, 3))


@pytest.mark.skipif(HAVE_TRT and HAVE_PYCUDA, reason="TensorRT and pycuda are installed here")
def test_activating_without_tensorrt_names_what_to_install(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"not an engine")
    runner = trt_backend.TensorRTRunner(str(path), {"inputs": [], "outputs": []})
    with pytest.raises(MissingDependencyError):
        runner.activate()
    assert not runner.is_active


# -- real engines --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def captioner_engines(tmp_path_factory):
    if not (HAVE_TRT and HAVE_PYCUDA):
        pytest.skip("needs a real TensorRT installation and pycuda")
    pytest.importorskip("onnxruntime", reason="the reference runs on onnxruntime")
    bundle = tiny_bundle.make_captioner_like_bundle(str(tmp_path_factory.mktemp("cap") / "bundle"))
    report = engine.build_engines(bundle, precision="fp32")
    return Manifest.load(bundle), dict((e["graph"], e["path"]) for e in report["engines"])


class OrtDecoderSession(object):
    """The reference: the same step graph on ONNX Runtime with the state in numpy."""

    def __init__(self, session, state):
        self.session = session
        self.state = dict(state)

    def step(self, prev_words):
        feed = dict(self.state)
        feed["prev_word"] = np.asarray(prev_words, dtype=np.int64)
        log_probs, h_new, c_new, alpha = self.session.run(["log_probs", "h_new", "c_new", "alpha"], feed)
        self.state["h"], self.state["c"] = h_new, c_new
        return log_probs, alpha

    def reorder(self, rows):
        self.state = dict((k, v[np.asarray(rows)]) for k, v in self.state.items())


def _encode_reference(manifest, images):
    import onnxruntime as ort

    enc = ort.InferenceSession(manifest.graph_path("fp32", "encoder"), providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(manifest.graph_path("fp32", "decoder_step"), providers=["CPUExecutionProvider"])
    features, projected, h0, c0 = enc.run(["features", "projected", "h0", "c0"], {"images": images})
    return step, {"h": h0, "c": c0, "features": features, "projected": projected}


@pytest.mark.trt
@needs_gpu_stack
def test_runner_matches_onnxruntime(captioner_engines):
    manifest, paths = captioner_engines
    images = np.random.RandomState(0).normal(size=(3, 3, 4, 4)).astype(np.float32)
    step, state = _encode_reference(manifest, images)
    with trt_backend.TensorRTRunner(paths["encoder"], manifest.graph("encoder")) as encoder:
        out = encoder.infer({"images": images})
        assert encoder.device_memory_bytes is not None
    for name in ("features", "projected"):
        np.testing.assert_allclose(out[name], state[name], atol=1e-4)
    np.testing.assert_allclose(out["h0"], state["h"], atol=1e-4)
    with trt_backend.TensorRTRunner(paths["decoder_step"], manifest.graph("decoder_step")) as runner:
        feed = dict(state, prev_word=np.array([1, 2, 3], dtype=np.int64))
        got = runner.infer(feed)
        want = dict(zip(["log_probs", "h_new", "c_new", "alpha"], step.run(None, feed)))
        for name in want:
            np.testing.assert_allclose(got[name], want[name], atol=1e-4)
        # only the outputs asked for come back (what the decode loop asks: the state and what it reads)
        some = runner.infer(feed, ["alpha", "h_new"])
        assert sorted(some) == ["alpha", "h_new"]
        np.testing.assert_allclose(some["h_new"], want["h_new"], atol=1e-4)
        with pytest.raises(UsageError, match="no outputs"):
            runner.infer(feed, ["logits"])


def _sessions(manifest, paths, images, from_device=True):
    """The ONNX Runtime reference session and a GPU-resident one fed from the encoder's device buffers
    (``from_device``) or from host arrays through ``runner.decoder_session`` (what the pipeline calls)."""
    step, state = _encode_reference(manifest, images)
    encoder = trt_backend.TensorRTRunner(paths["encoder"], manifest.graph("encoder")).activate()
    runner = trt_backend.TensorRTRunner(paths["decoder_step"], manifest.graph("decoder_step")).activate()
    if from_device:
        encoder.infer_device(feed={"images": images}, fetch=())
        initial = {"h": encoder.device_output("h0"), "c": encoder.device_output("c0"),
                   "features": encoder.device_output("features"), "projected": encoder.device_output("projected")}
        session = trt_backend.TensorRTDecoderSession(runner, initial)
    else:
        out = encoder.infer({"images": images})
        protocol = DecoderProtocol.from_manifest(manifest)
        session = runner.decoder_session(protocol.initial(out), protocol)
    encoder.deactivate()  # the session copied what it needs
    return OrtDecoderSession(step, state), session, runner


@pytest.mark.trt
@needs_gpu_stack
def test_device_resident_greedy_decoding_matches_onnxruntime(captioner_engines):
    manifest, paths = captioner_engines
    images = np.random.RandomState(1).normal(size=(4, 3, 4, 4)).astype(np.float32)
    reference, session, runner = _sessions(manifest, paths, images)
    try:
        want = decoding.greedy_decode(reference, 4, start_id=0, end_id=1, max_len=6)
        got = decoding.greedy_decode(session, 4, start_id=0, end_id=1, max_len=6)
        assert [h.tokens for h in got] == [h.tokens for h in want]
        np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-3)
    finally:
        session.close()
        runner.deactivate()


@pytest.mark.trt
@needs_gpu_stack
def test_device_resident_beam_search_matches_onnxruntime(captioner_engines):
    manifest, paths = captioner_engines
    images = np.random.RandomState(2).normal(size=(1, 3, 4, 4)).astype(np.float32)
    reference, session, runner = _sessions(manifest, paths, images, from_device=False)
    try:
        want = decoding.beam_search(reference, 3, start_id=0, end_id=1, max_len=6)
        got = decoding.beam_search(session, 3, start_id=0, end_id=1, max_len=6)
        assert got.tokens == want.tokens
        assert abs(got.score - want.score) < 1e-3
        # the state really lives on the device and follows reorder()
        session.reorder([0, 0])
        assert session.state("h").shape == (2, tiny_bundle.DIMS["D"])
    finally:
        session.close()
        runner.deactivate()



@pytest.mark.trt
@needs_gpu_stack
def test_the_decode_loop_on_tensorrt_keeps_the_context_on_the_gpu_and_captions_as_alone(captioner_bundle, tmp_path):
    """serve-engine's decode loop over real engines: concurrent greedy and beam requests get the captions of
    one request each, and the context rows reach the GPU only when a search joins, leaves or resizes."""
    import threading

    from jetcap.runtime.scheduler import DecodeScheduler
    from jetcap.runtime.session import open_bundle
    from jetcap.util.npz import load_npz

    engine.build_engines(captioner_bundle, precision="fp32", cache_dir=str(tmp_path))
    images = load_npz(Manifest.load(captioner_bundle).reference_path())["task/images"]
    with open_bundle(captioner_bundle, backend="tensorrt", precision="fp32", engine_cache=str(tmp_path)) as session:
        pipeline = session.caption_pipeline()
        want = [pipeline.caption(images[i:i + 1], beam_size=1 + (i % 2) * 2)[0].tokens for i in range(len(images))]
        loop = DecodeScheduler(session.manifest, session.runners)
        got = [None] * len(images)

        def caption(i):
            got[i] = loop.caption(images[i:i + 1], beam_size=1 + (i % 2) * 2)[0].tokens

        try:
            threads = [threading.Thread(target=caption, args=(i,)) for i in range(len(images))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(120)
            steps = loop.stats["decoder_step"].snapshot()["calls"]
            uploads = loop._device_context.uploads
        finally:
            assert loop.close()
    assert got == want
    assert loop.reruns == 0  # no batched call failed (running each search alone would hide a stale context)
    assert 0 < uploads < steps
