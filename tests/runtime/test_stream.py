"""The caption-stream loop (jetcap.runtime.stream / video): real OpenCV capture of a real video file and
of a live MJPEG stream in a FIFO, the real sample captioner bundle on ONNX Runtime, real threads."""
import json
import os
import threading
import time

import numpy as np
import pytest

from jetcap.errors import InferenceFailed, UsageError
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.memory import MemoryInfo
from jetcap.runtime import stream as stream_module
from jetcap.runtime.stream import StreamOptions, default_memory_threshold_mb, run_stream
from jetcap.runtime.video import (JETSON_CSI_PIPELINE, FrameQueue, draw_caption, parse_source, wrap_words)

from .stream_helpers import FPS, FifoWriter, cv2, decoded_frames, make_fifo, reference_captions, write_video

GIB = 1 << 30


@pytest.fixture(scope="module")
def bundle(request):
    return request.getfixturevalue("captioner_bundle")


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("stream") / "shapes.avi", frames=24)


@pytest.fixture(scope="module")
def frames(video):
    decoded = decoded_frames(video)
    assert len(decoded) == 24
    return decoded


@pytest.fixture(scope="module")
def reference(bundle, frames):
    """In-process CaptionPipeline captions of the decoded frames (what the stream must reproduce)."""
    return reference_captions(bundle, frames)


def stream(bundle, source, **kwargs):
    """run_stream with onnxruntime, no status lines and no signal handlers; returns (summary, records, log)."""
    records, lines = [], []
    kwargs.setdefault("status_every", 0)
    kwargs.setdefault("backend", "onnxruntime")
    stop_event = kwargs.pop("stop_event", None)
    on_caption = kwargs.pop("on_caption", records.append)
    summary = run_stream(bundle, StreamOptions(source, **kwargs), log=lines.append, on_caption=on_caption,
                         stop_event=stop_event, handle_signals=False)
    return summary, records, lines


def read_jsonl(path):
    with open(str(path)) as handle:
        return [json.loads(line) for line in handle]


# -- sources, queue, options ------------------------------------------------------------------------
def test_parse_source_kinds(tmp_path):
    camera = parse_source("0")
    assert (camera.kind, camera.target, camera.live) == ("camera", 0, True)
    assert parse_source("/dev/null").kind == "device"  # a character device, like /dev/video0
    assert parse_source(make_fifo(tmp_path)).kind == "pipe"
    gst = parse_source(JETSON_CSI_PIPELINE)
    assert (gst.kind, gst.target, gst.live) == ("gstreamer", JETSON_CSI_PIPELINE, True)
    assert (parse_source("rtsp://192.168.1.20:554/stream").kind, parse_source("rtsp://h/s").live) == ("url", True)
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"x")
    assert (parse_source(str(clip)).kind, parse_source(str(clip)).live) == ("file", False)
    for bad, message in ((str(tmp_path / "missing.avi"), "not found"), (str(tmp_path), "directory"), ("  ", "empty")):
        with pytest.raises(UsageError, match=message):
            parse_source(bad)


def test_live_queue_drops_the_oldest_frames():
    queue = FrameQueue(2, drop_oldest=True)
    for item in range(5):
        assert queue.put(item)
    assert queue.dropped == 3
    assert [queue.get(timeout=0), queue.get(timeout=0)] == [3, 4]
    assert queue.get(timeout=0.01) is FrameQueue.TIMEOUT
    queue.close()
    assert queue.get() is None and not queue.put(5)


def test_a_woken_queue_returns_at_once_and_only_once():
    queue = FrameQueue(2, drop_oldest=True)
    waited = []

    def wait():
        began = time.time()
        waited.append((queue.get(timeout=5), time.time() - began))

    getter = threading.Thread(target=wait)
    getter.start()
    time.sleep(0.05)
    queue.wake()  # a caption in flight finished: the consumer must not sleep on until the next frame
    getter.join(5)
    assert waited[0][0] is FrameQueue.TIMEOUT and waited[0][1] < 1.0
    queue.wake()
    queue.put(1)
    assert queue.get(timeout=0) == 1  # a frame that is there comes first
    assert queue.get(timeout=0.5) is FrameQueue.TIMEOUT  # the wake is used up by one empty get
    began = time.time()
    assert queue.get(timeout=0.05) is FrameQueue.TIMEOUT and time.time() - began >= 0.04


def test_file_queue_waits_and_loses_nothing():
    queue = FrameQueue(1, drop_oldest=False)

    def produce():
        for item in range(40):
            queue.put(item)
        queue.close()

    producer = threading.Thread(target=produce)
    producer.start()
    got = []
    while True:
        item = queue.get(timeout=5)
        if item is None:
            break
        got.append(item)
        if len(got) % 10 == 0:
            time.sleep(0.02)  # a slow consumer: the producer must wait, not drop
    producer.join(5)
    assert got == list(range(40)) and queue.dropped == 0


def test_default_memory_threshold_is_the_seeds_warning_scaled():
    assert default_memory_threshold_mb(MemoryInfo(mem_total=4 * GIB)) == 1536  # 2.5 GB used of 4 GB
    assert default_memory_threshold_mb(MemoryInfo(mem_total=2 * GIB)) == 768  # the 2 GB Nano
    assert default_memory_threshold_mb(MemoryInfo(mem_total=64 * GIB)) == 1536
    assert default_memory_threshold_mb(MemoryInfo(mem_total=64 * GIB, cgroup_limit=1 * GIB)) == 384
    assert default_memory_threshold_mb(MemoryInfo()) is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(every=0), "--every"), (dict(duration=0), "--duration"), (dict(queue=0), "--queue"),
    (dict(overlay="out.mkv"), ".avi or .mp4"), (dict(memory_threshold_mb=-1), "--memory-threshold-mb"),
])
def test_options_are_checked(kwargs, message):
    with pytest.raises(UsageError, match=message):
        StreamOptions("0", **kwargs)


def test_draw_caption_writes_on_a_band_at_the_bottom():
    image = np.full((96, 96, 3), 200, dtype=np.uint8)
    assert np.array_equal(draw_caption(cv2, image, ""), image)
    drawn = draw_caption(cv2, image, "a small red circle left of a large blue square")
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    assert np.array_equal(drawn[:30], image[:30]) and not np.array_equal(drawn[-30:], image[-30:])
    assert np.array_equal(image, np.full((96, 96, 3), 200, dtype=np.uint8))  # the frame itself is untouched
    lines = wrap_words(cv2, "a small red circle left of a large blue square", 0.3, 1, 84)
    assert len(lines) > 1 and " ".join(lines) == "a small red circle left of a large blue square"
    assert all(cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.3, 1)[0][0] <= 84 for line in lines if " " in line)


# -- files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("loop", ["decode loop", "batches"])
def test_file_captions_equal_the_pipeline_on_the_decoded_frames(bundle, video, frames, reference, tmp_path, loop):
    """Frames through the decode loop (each joins the captions in flight at their next step), or a batch
    at a time (the path of a variant whose rows must not share a call): the captions of single frames."""
    out = tmp_path / "captions.jsonl"  # a file's frames go a batch at a time, unless told otherwise
    summary, records, lines = stream(bundle, video, jsonl=str(out), queue=4, decode_loop=(loop == "decode loop"))
    assert summary.exit_code == 0 and summary.stop_reason == "end of file"
    assert (summary.frames_read, summary.frames_processed, summary.captions, summary.dropped) == (24, 24, 24, 0)
    assert read_jsonl(out) == records
    assert [r["frame"] for r in records] == list(range(24))
    assert [r["caption"] for r in records] == reference
    for record in records:
        assert set(record) == {"frame", "timestamp", "caption", "score", "latency_ms", "batch"}
        assert record["batch"] >= 1  # captions in flight together (decode loop) / captioned together
        assert record["timestamp"] == pytest.approx(record["frame"] / FPS)  # seconds into the file
        assert record["score"] <= 0 and record["latency_ms"] > 0
    assert summary.latency_p95_ms >= summary.latency_p50_ms > 0
    assert summary.peak_rss_bytes >= summary.rss_start_bytes > 0
    assert lines[-1].startswith("summary: 24 frames") and "dropped 0" in lines[-1]
    assert max(record["batch"] for record in records) > 1  # a file's frames queue up: they shared calls


def test_live_sources_use_the_decode_loop_files_and_int8_cpu_do_not(tmp_path):
    live, clip = parse_source(make_fifo(tmp_path)), parse_source(str(write_video(tmp_path / "c.avi", frames=2)))
    assert stream_module.uses_decode_loop(live, "fp32") and stream_module.uses_decode_loop(live, "fp16")
    assert not stream_module.uses_decode_loop(clip, "fp32")
    assert not stream_module.uses_decode_loop(live, "int8-cpu")  # its rows must not share a call
    assert stream_module.uses_decode_loop(clip, "fp32", wanted=True)  # --decode-loop
    assert not stream_module.uses_decode_loop(live, "fp32", wanted=False)  # --no-decode-loop
    assert not stream_module.uses_decode_loop(live, "int8-cpu", wanted=True)


def test_every_and_max_frames(bundle, video, reference):
    summary, records, _ = stream(bundle, video, every=3, max_frames=10)
    assert [r["frame"] for r in records] == [0, 3, 6, 9]
    assert [r["caption"] for r in records] == [reference[i] for i in (0, 3, 6, 9)]
    assert summary.frames_read == 10 and summary.stop_reason == "max frames (10)" and summary.exit_code == 0


def test_loop_plays_the_file_again(bundle, video, reference):
    summary, records, _ = stream(bundle, video, loop=True, max_frames=30, every=2)
    assert [r["frame"] for r in records] == list(range(0, 30, 2))
    assert [r["caption"] for r in records] == [reference[i % 24] for i in range(0, 30, 2)]
    assert records[-1]["timestamp"] == pytest.approx(2.8)  # the timeline goes on across loops


def test_overlay_has_every_frame_with_the_caption_drawn(bundle, video, frames, tmp_path):
    out = tmp_path / "overlay.avi"
    summary, _, _ = stream(bundle, video, overlay=str(out), every=4)
    assert summary.overlay_frames == 24
    written = decoded_frames(out)
    assert len(written) == 24 and written[0].shape == frames[0].shape
    # the caption band darkens the bottom of each frame; the top stays the source (up to MJPG noise)
    top = np.abs(written[5][:20].astype(int) - frames[5][:20].astype(int)).mean()
    bottom = np.abs(written[5][-20:].astype(int) - frames[5][-20:].astype(int)).mean()
    assert bottom > 3 * top + 10


def test_memory_guard_skips_captions_and_never_crashes(bundle, video, tmp_path):
    out = tmp_path / "none.jsonl"
    summary, records, lines = stream(bundle, video, jsonl=str(out), every=2, memory_threshold_mb=1 << 40)
    assert summary.exit_code == 0 and summary.captions == 0 and records == []
    assert summary.skipped_memory == 12 and summary.frames_read == 24
    assert any(line.startswith("memory guard: skipping captions: available memory") for line in lines)
    assert read_jsonl(out) == []


def test_stop_event_finishes_the_frame_in_flight(bundle, video, tmp_path):
    out = tmp_path / "stopped.jsonl"
    stop = threading.Event()
    records = []

    def on_caption(record):
        records.append(record)
        if len(records) == 5:
            stop.set()

    summary, _, lines = stream(bundle, video, jsonl=str(out), loop=True, stop_event=stop, on_caption=on_caption)
    assert summary.exit_code == 0 and summary.stop_reason == "stopped"
    # every frame read is accounted for: processed, or said to be left at the stop (the queued ones and
    # the one the capture held, waiting for room, when the queue closed)
    left = [int(line.split()[0]) for line in lines if line.endswith("read but not processed at the stop")]
    assert summary.frames_read == summary.frames_processed + sum(left), (summary.frames_read, lines)
    # the captions in flight (at most the bundle's max batch, the 5th included) are finished and written,
    # and no frame is taken after the stop
    most = Manifest.load(bundle).axes["batch"]["max"]
    assert summary.captions == len(records)
    assert 5 <= len(records) <= 5 + most - 1
    assert all(1 <= record["batch"] <= most for record in records)
    assert [record["frame"] for record in records] == sorted(record["frame"] for record in records)
    assert read_jsonl(out) == records


class _FailingAfter(object):
    """The real step runner, which fails from its ``after``-th call on as a device error would, or (``lose``)
    loses its outputs: a fault outside the decode loop's per-request guards."""

    def __init__(self, runner, after, lose):
        self.runner, self.after, self.lose, self.calls = runner, after, lose, 0

    def infer(self, feed, outputs=None):
        self.calls += 1
        answer = self.runner.infer(feed, outputs)
        if self.calls <= self.after:
            return answer
        if self.lose:
            return {}
        raise RuntimeError("injected: CUDA error: an illegal memory access was encountered")

    def __getattr__(self, name):
        return getattr(self.runner, name)


@pytest.mark.parametrize("loop, lose, reason", [
    ("decode loop", False, "RuntimeError: injected: CUDA error"),
    ("decode loop", True, "the decode loop stopped: KeyError"),
    ("batches", False, "RuntimeError: injected: CUDA error")])
def test_a_caption_that_fails_stops_the_run_with_exit_1_after_cleanup(bundle, video, tmp_path, monkeypatch, loop,
                                                                       lose, reason):
    from jetcap.runtime import session as session_module

    real_open = session_module.open_bundle

    def open_failing(*args, **kwargs):  # the real session; its real step runner wrapped
        session = real_open(*args, **kwargs)
        session.runners["decoder_step"] = _FailingAfter(session.runners["decoder_step"], 60, lose)
        return session

    monkeypatch.setattr(session_module, "open_bundle", open_failing)
    out, lines = tmp_path / "failing.jsonl", []
    options = StreamOptions(video, jsonl=str(out), queue=4, status_every=0, backend="onnxruntime", loop=True,
                            decode_loop=(loop == "decode loop"))
    with pytest.raises(InferenceFailed, match=r"captioning frames? [\d-]+ failed: .*" + reason) as raised:
        run_stream(bundle, options, log=lines.append, handle_signals=False)
    assert raised.value.exit_code == 1  # a failure of a run that had started, as a vanished source is
    assert "; stopped: captioning frame" in lines[-1], lines[-1]
    written = read_jsonl(out)  # the captions before the failure are kept, whole lines
    assert written and [r["frame"] for r in written] == list(range(len(written)))
    assert not any(t.name in ("jetcap-capture", "jetcap-decode-loop") and t.is_alive() for t in threading.enumerate())


# -- live -------------------------------------------------------------------------------------------
def test_live_pipe_drops_when_behind_and_vanishing_exits_1(bundle, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", raising=False)
    fifo = make_fifo(tmp_path)
    writer = FifoWriter(fifo, frames=150)  # as fast as it can: far faster than captioning
    writer.start()
    before = time.time()
    out = tmp_path / "live.jsonl"
    summary, records, lines = stream(bundle, fifo, jsonl=str(out), queue=1)
    assert any(line.startswith("note: OpenCV reads ~5 s of a pipe") for line in lines)  # the probe, and the fix
    writer.join(10)
    assert writer.written == 150
    assert summary.exit_code == 1 and summary.stop_reason.startswith("source vanished")
    assert summary.frames_read == 150
    assert summary.dropped > 0
    assert summary.frames_processed + summary.dropped == summary.frames_read
    assert summary.captions == len(records) == len(read_jsonl(out)) > 0
    assert all(before <= r["timestamp"] <= time.time() for r in records)  # wall time for a live source
    assert "stopped: source vanished" in lines[-1]


def test_loop_is_refused_for_a_live_source(bundle, tmp_path):
    with pytest.raises(UsageError, match="--loop only applies to a video file"):
        stream(bundle, make_fifo(tmp_path), loop=True)


def test_nothing_is_left_open_after_an_output_error(bundle, video, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("/dev/full is needed to make a write fail")
    with pytest.raises(UsageError, match="writing --jsonl /dev/full failed"):
        stream(bundle, video, jsonl="/dev/full")
    assert not any(t.name == "jetcap-capture" and t.is_alive() for t in threading.enumerate())


def test_an_output_that_is_the_source_is_refused_before_anything_is_written(bundle, tmp_path):
    source = write_video(tmp_path / "clip.avi", frames=4)
    before = source.read_bytes() if hasattr(source, "read_bytes") else open(str(source), "rb").read()
    os.symlink(str(source), str(tmp_path / "link.avi"))
    for kwargs, message in (({"jsonl": str(source)}, "--jsonl .* is the video being read"),
                            ({"overlay": str(tmp_path / "link.avi")}, "--overlay .* is the video being read"),
                            ({"jsonl": str(tmp_path / "o.avi"), "overlay": str(tmp_path / "o.avi")},
                             "--overlay .* is the --jsonl file")):
        with pytest.raises(UsageError, match=message):
            stream(bundle, str(source), **kwargs)
    assert open(str(source), "rb").read() == before and not (tmp_path / "o.avi").exists()
    with pytest.raises(UsageError, match="--jsonl .* is inside the bundle"):
        stream(bundle, str(source), jsonl=os.path.join(str(bundle), "manifest.json"))


def test_a_truncated_file_is_not_a_clean_end(bundle, tmp_path):
    path = write_video(tmp_path / "whole.avi", frames=24)
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.avi")
    with open(cut, "wb") as handle:
        handle.write(data[:len(data) // 2])
    summary, records, _ = stream(bundle, cut)
    assert summary.exit_code == 1 and "of the 24 frames its header declares" in summary.stop_reason, \
        summary.to_dict()
    assert 0 < len(records) < 24
    whole, _, _ = stream(bundle, path)
    assert whole.exit_code == 0 and whole.stop_reason == "end of file"
