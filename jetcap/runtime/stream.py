"""Caption a video stream: camera, device, video file, pipe or GStreamer pipeline (Python 3.6, no torch).

The loop of ``jetcap caption-stream``, the Nano camera app done on top of the jetcap runtime::

    capture thread --(bounded FrameQueue)--> main thread: preprocess, caption, JSONL, overlay, display

* Capture and inference run concurrently (:mod:`jetcap.runtime.video`).  A LIVE source (camera, device,
  pipe, GStreamer) never waits for inference: when the queue is full the oldest frame is dropped and
  counted, so captions stay fresh.  A FILE source waits instead: every frame of a file is processed.
* ``every`` captions every Nth source frame (for a live source that drops frames: the first frame at
  least N after the last captioned one).
* The :class:`jetcap.runtime.serving.MemoryGuard` of ``serve-engine`` reads RSS and ``MemAvailable`` /
  the cgroup's memory every second; while available memory is below the threshold, captions are
  skipped and counted, never crashing.
* SIGINT/SIGTERM, end of file, ``max_frames`` or ``duration``: the frame in flight is finished, the
  JSONL (flushed per line) and the overlay writer are closed, the capture and the runners released, and
  a :class:`StreamSummary` is returned.  A live source that stops delivering frames after some were
  processed ends the run with exit code 1.

OpenCV (``cv2``) is imported lazily (:func:`jetcap.util.lazy.require`): on a Jetson use JetPack's own
``python3-opencv`` (it has GStreamer); elsewhere ``pip install opencv-python-headless``.
"""
import collections
import json
import os
import signal
import threading
import time

import numpy as np

from jetcap.errors import InferenceFailed, JetcapError, UsageError
from jetcap.runtime import memory, preprocess
from jetcap.runtime.loader import current_rss_bytes
from jetcap.runtime.video import (OVERLAY_FOURCC, WINDOW_NAME, CaptureThread, FrameQueue, OverlayWriter,
                                  check_display, draw_caption, open_capture, parse_source)
from jetcap.util.fsio import check_output_file
from jetcap.util.lazy import require

MIB = 1 << 20
# The seed app warned at 2.5 GB used of a 4 GB Nano, i.e. with 1.5 GB (37.5 %) left: the default
# MemAvailable floor is that fraction of the memory this process can have, at most 1536 MiB.
SEED_FLOOR_FRACTION = 1.0 - 2.5 / 4.0
SEED_FLOOR_MB = 1536
LATENCY_WINDOW = 10000  # the summary's latency percentiles cover the last this many captions
DEFAULT_LIVE_FPS = 30.0
# OpenCV's FFmpeg backend analyses ~5 s of a pipe before it returns the first frame, then delivers them
# in a burst (a 30 fps MJPEG pipe: first caption 4.6 s after the source started, 130 of the first 200
# frames dropped; with the options below 0.4 s and 6).  Not set for the user: MJPEG and AVI (MJPG, MPEG-4,
# XVID) pipes open with them, MPEG-TS and raw H.264 could not be tried, and too short a probe could fail
# to recognise a format that opens today, only later.
FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
PIPE_PROBE_HINT = ("note: OpenCV reads ~5 s of a pipe before its first frame; for an MJPEG pipe, "
                   "OPENCV_FFMPEG_CAPTURE_OPTIONS='probesize;32|analyzeduration;0' starts captioning at once")


def _quiet(message):
    """Default ``log``: discard."""


# -- options ----------------------------------------------------------------------------------------
def default_memory_threshold_mb(info):
    """The default MemAvailable floor in MiB for ``info`` (a :class:`jetcap.runtime.memory.MemoryInfo`).

    37.5 % of the memory this process can have (the smaller of MemTotal and the cgroup limit), at most
    1536 MiB: on a 4 GB Nano that is the seed app's "warn at 2.5 GB used"; on a 2 GB Nano or in a small
    container it scales down instead of always skipping.  None when nothing could be read.
    """
    totals = [v for v in (info.mem_total, info.cgroup_limit) if v]
    if not totals:
        return None
    return int(min(SEED_FLOOR_MB, SEED_FLOOR_FRACTION * min(totals) / MIB))


class StreamOptions(object):
    """Settings of one :func:`run_stream` (checked on creation; UsageError when out of range).

    Args:
        source: SOURCE as given on the command line (see :func:`parse_source`).
        every: caption every Nth frame (default 1).
        backend: "auto" (default), "onnxruntime" or "tensorrt".
        precision: "fp32" (default), "fp16" or "int8".
        engine_cache: TensorRT engine cache directory (default ``<bundle>/engines``).
        beam: beam width (default: the bundle's, normally 1).
        max_len: most words per caption, <end> included (default: the bundle's).
        max_memory_mb: refuse to load the bundle when its estimate exceeds this (default: what is available).
        memory_threshold_mb: skip captioning while available memory is below this many MiB (default None:
            :func:`default_memory_threshold_mb`; 0: off).
        jsonl: write one JSON line per caption to this file (default None).
        overlay: write the video with the caption drawn on it to this ``.mp4``/``.avi`` (default None).
        display: show the captioned video in a window (needs a display; default False).
        duration: stop after this many seconds of streaming (default None: no limit).
        max_frames: stop after this many source frames (default None: no limit).
        status_every: seconds between status lines; 0 turns them off (default 5).
        queue: frames that may wait for inference (default 2: fresh captions on a live source).
        loop: play a file source again from the start at its end (default False).
        threads: ONNX Runtime intra-op threads (default: its own choice).
        memory_check_every: seconds between memory checks (default 1).
        decode_loop: frames that queue up go through the decode loop, each joining the captions in flight
            at their next step (True), or a batch at a time (False); default None: the loop for a live
            source, batches for a file (:func:`uses_decode_loop`).
    """

    def __init__(self, source, every=1, backend="auto", precision="fp32", engine_cache=None, beam=None, max_len=None,
                 max_memory_mb=None, memory_threshold_mb=None, jsonl=None, overlay=None, display=False, duration=None,
                 max_frames=None, status_every=5.0, queue=2, loop=False, threads=None, memory_check_every=1.0,
                 decode_loop=None):
        self.source = source
        self.every = int(every)
        self.backend = backend
        self.precision = precision
        self.engine_cache = engine_cache
        self.beam = beam
        self.max_len = max_len
        self.max_memory_mb = max_memory_mb
        self.memory_threshold_mb = memory_threshold_mb
        self.jsonl = str(jsonl) if jsonl else None
        self.overlay = str(overlay) if overlay else None
        self.display = bool(display)
        self.duration = float(duration) if duration is not None else None
        self.max_frames = int(max_frames) if max_frames is not None else None
        self.status_every = float(status_every or 0.0)
        self.queue = int(queue)
        self.loop = bool(loop)
        self.threads = threads
        self.memory_check_every = float(memory_check_every)
        self.decode_loop = None if decode_loop is None else bool(decode_loop)
        self._check()

    def _check(self):
        for name, value, low in (("--every", self.every, 1), ("--queue", self.queue, 1),
                                 ("--max-frames", self.max_frames, 1), ("--beam", self.beam, 1),
                                 ("--max-len", self.max_len, 1)):
            if value is not None and value < low:
                raise UsageError("{} must be at least {}, got {}".format(name, low, value))
        for name, value in (("--duration", self.duration), ("memory check interval", self.memory_check_every)):
            if value is not None and value <= 0:
                raise UsageError("{} must be positive, got {}".format(name, value))
        for name, value in (("--status-every", self.status_every), ("--memory-threshold-mb", self.memory_threshold_mb)):
            if value is not None and value < 0:
                raise UsageError("{} must not be negative, got {}".format(name, value))
        if self.overlay is not None:
            extension = os.path.splitext(self.overlay)[1].lower()
            if extension not in OVERLAY_FOURCC:
                raise UsageError("--overlay must end in {}, got {}".format(" or ".join(sorted(OVERLAY_FOURCC)),
                                                                         self.overlay))


# -- how frames share the model's calls -------------------------------------------------------------
def uses_decode_loop(source, precision, wanted=None):
    """Whether frames of ``source`` go through the decode loop (each joins the captions in flight at
    their next step) rather than a batch at a time; ``wanted`` (``--decode-loop/--no-decode-loop``)
    decides when given, except for a variant whose rows must not share a call (``int8-cpu``: never).

    By default a live source does, as ``serve-engine``'s requests do: measured on the COCO-sized
    captioner, a paced 100 fps MJPEG pipe, 2 CPU threads (docs/BENCHMARKS.md), 96-97 captions/s with
    28-30 of ~575 frames dropped, against 88-89 with 67-73 a batch at a time; but each caption is older
    (capture to caption p50 36-37 vs 31 ms): ``--no-decode-loop`` when freshness matters more.  A file
    does not: all its frames are captioned, and whole batches were faster (--queue 8: 141-144 vs 124-131
    captions/s; about equal at 2).
    """
    from jetcap.runtime.manifest import rows_independent

    if not rows_independent(precision):
        return False
    return bool(source.live) if wanted is None else bool(wanted)


def decode_loop(manifest, session, log):
    """The :class:`jetcap.runtime.scheduler.DecodeScheduler` over ``session``'s runners that frames share
    (from then on only its thread calls them), or None for a bundle whose outputs have no batch axis.  (A
    beam wider than the max batch never gets here: the warm-up caption refuses it.)"""
    from jetcap.runtime.scheduler import DecodeScheduler

    try:
        return DecodeScheduler(manifest, session.runners)
    except UsageError as exc:
        log("frames are captioned a batch at a time: {}".format(exc))
        return None


# -- statistics -------------------------------------------------------------------------------------
def percentile(values, q):
    """The ``q``-th percentile (0-100) of ``values``, or None when empty."""
    if not len(values):
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def peak_rss_bytes():
    """The process's peak resident memory (``ru_maxrss``) in bytes, or None where unavailable."""
    try:
        import resource
    except ImportError:
        return None
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # KiB on Linux


class StreamSummary(object):
    """What a run did: counts, rates, latency, memory, why it stopped and the exit code (0 or 1)."""

    def __init__(self):
        self.source = None
        self.backend = None
        self.frames_read = 0
        self.frames_processed = 0
        self.captions = 0
        self.dropped = 0
        self.skipped_memory = 0
        self.overlay_frames = 0
        self.seconds = 0.0
        self.latency_p50_ms = None
        self.latency_p95_ms = None
        self.rss_start_bytes = None
        self.rss_end_bytes = None
        self.peak_rss_bytes = None
        self.memory_threshold_mb = None
        self.stop_reason = None
        self.exit_code = 0

    @property
    def fps(self):
        return self.frames_read / self.seconds if self.seconds > 0 else 0.0

    @property
    def captions_per_second(self):
        return self.captions / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self):
        """JSON-ready dict of every field."""
        return {
            "source": self.source, "backend": self.backend, "frames_read": self.frames_read,
            "frames_processed": self.frames_processed, "captions": self.captions, "dropped": self.dropped,
            "skipped_memory": self.skipped_memory, "overlay_frames": self.overlay_frames,
            "seconds": round(self.seconds, 3), "fps": round(self.fps, 3),
            "captions_per_second": round(self.captions_per_second, 3),
            "latency_p50_ms": _round(self.latency_p50_ms), "latency_p95_ms": _round(self.latency_p95_ms),
            "rss_start_bytes": self.rss_start_bytes, "rss_end_bytes": self.rss_end_bytes,
            "peak_rss_bytes": self.peak_rss_bytes, "memory_threshold_mb": self.memory_threshold_mb,
            "stop_reason": self.stop_reason, "exit_code": self.exit_code,
        }

    def describe(self):
        """One line for stderr."""
        latency = ("latency p50 {:.1f} ms p95 {:.1f} ms".format(self.latency_p50_ms, self.latency_p95_ms)
                   if self.latency_p50_ms is not None else "no latency measured")
        return ("summary: {} frames in {:.1f} s ({:.1f} fps), {} captions ({:.1f}/s), {}, dropped {}, "
                "skipped for memory {}, peak RSS {}; stopped: {}").format(
            self.frames_read, self.seconds, self.fps, self.captions, self.captions_per_second, latency, self.dropped,
            self.skipped_memory, memory.format_bytes(self.peak_rss_bytes), self.stop_reason)


def _round(value, digits=3):
    return None if value is None else round(value, digits)


# -- the run ----------------------------------------------------------------------------------------
class _SignalStop(object):
    """SIGINT/SIGTERM set ``event`` (the frame in flight finishes); a second signal exits at once (1)."""

    def __init__(self, event, log):
        self.event = event
        self.log = log
        self.received = None
        self.previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.event.is_set():
            self.log("{} again: exiting without cleanup".format(name))
            os._exit(1)
        self.received = name
        self.log("{} received: finishing the frame in flight".format(name))
        self.event.set()

    def install(self):
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set from the main thread; the caller stops us
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


class StreamRunner(object):
    """One captioning run over a video source (see the module docstring); use :func:`run_stream`.

    Args:
        bundle: the captioner bundle directory.
        options: :class:`StreamOptions`.
        log: callable receiving progress, status and summary lines (default: silent).
        on_caption: callable receiving each caption record ``{frame, timestamp, caption, score, latency_ms}``.
        stop_event: a ``threading.Event`` that stops the run when set (default: a new one; the signal
            handlers set it).
    """

    def __init__(self, bundle, options, log=None, on_caption=None, stop_event=None):
        self.bundle = bundle
        self.options = options
        self.log = log or _quiet
        self.on_caption = on_caption
        self.stop_event = stop_event or threading.Event()
        self.summary = StreamSummary()
        self.cv2 = None
        self.source = None
        self.capture = None
        self.capture_thread = None
        self.queue = None
        self.jsonl = None
        self.overlay = None
        self.window = False
        self.session = None
        self.pipeline = None
        self.scheduler = None  # the decode loop, when captions may share the model's calls
        self.preprocessing = None
        self.beam = self.max_len = None
        self.first_image = None
        self.fps = 0.0
        self.guard = None
        self.latencies = collections.deque(maxlen=LATENCY_WINDOW)
        self.window_latencies = []
        self.caption_text = ""
        self.stop_reason = None
        self.close_error = None
        self.inference_failed = False  # a caption failed: the run stopped with exit code 1

    # - setup -
    def prepare(self):
        """Check everything the user can get wrong, open the source and the outputs, load the bundle.

        Order: options and output paths, the source (one frame is read), the outputs, then the bundle
        (memory-checked); any failure raises a JetcapError with nothing left open.
        """
        from jetcap.runtime.manifest import Manifest
        from jetcap.runtime.session import expect_family

        options = self.options
        manifest = Manifest.load(self.bundle)
        expect_family(manifest, "captioner", command="predict")
        self.source = parse_source(options.source)
        # outputs: checked before the source is opened, never the video read, another output or the bundle
        others = {self.source.target if self.source.kind in ("file", "pipe", "device") else None:
                  "the video being read"}
        for path, option in ((options.jsonl, "--jsonl"), (options.overlay, "--overlay")):
            if path is not None:
                check_output_file(path, option, keep_out_of=[self.bundle], not_any_of=others)
                others = dict(others, **{str(path): "the {} file".format(option)})
        if options.loop and self.source.live:
            raise UsageError("--loop only applies to a video file, not to {}".format(self.source.describe()))
        self.cv2 = require("cv2")
        if options.display:
            check_display(self.cv2)
            self.window = True
        if self.source.kind == "pipe" and not os.environ.get(FFMPEG_OPTIONS_ENV):
            self.log(PIPE_PROBE_HINT)
        self.capture = open_capture(self.cv2, self.source)
        ok, first = self.capture.read()
        if not ok or first is None:
            raise UsageError("video source {} opened but delivered no frame".format(self.source.describe()))
        if first.ndim != 3 or first.shape[2] != 3:
            raise UsageError("video source {} delivers {} frames, not 3-channel colour".format(
                self.source.describe(), "x".join(str(d) for d in first.shape)))
        self.first_image = first
        fps = self.capture.get(self.cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps == fps and 0 < fps < 1000 else 0.0
        if options.jsonl is not None:
            try:
                self.jsonl = open(options.jsonl, "w")
            except (IOError, OSError) as exc:
                raise UsageError("cannot write --jsonl {}: {}".format(options.jsonl, exc.strerror or exc))
        if options.overlay is not None:
            self.overlay = OverlayWriter(self.cv2, options.overlay, self.fps or DEFAULT_LIVE_FPS,
                                         (first.shape[1], first.shape[0]))
        self._load(manifest)

    def _load(self, manifest):
        from jetcap.runtime.serving import MemoryGuard
        from jetcap.runtime.session import open_bundle

        options = self.options
        threshold = options.memory_threshold_mb
        if threshold is None:
            threshold = default_memory_threshold_mb(memory.read_memory_info())
        self.summary.memory_threshold_mb = threshold
        self.guard = MemoryGuard(min_available_bytes=int(threshold * MIB) if threshold else None,
                                 interval=options.memory_check_every, log=self._guard_log,
                                 on_trip=None)
        self.session = open_bundle(manifest, backend=options.backend, precision=options.precision,
                                   engine_cache=options.engine_cache, max_memory_mb=options.max_memory_mb,
                                   log=self.log, threads=options.threads)
        self.pipeline = self.session.caption_pipeline()
        decoding = manifest.decoding
        self.beam = int(options.beam or decoding.get("beam_size") or 1)
        self.max_len = int(options.max_len or decoding.get("max_len") or 20)
        self.preprocessing = manifest.preprocessing
        self.summary.backend = self.session.describe()
        self.summary.source = self.source.describe()
        # warm-up (not recorded): the first inference allocates ONNX Runtime's arenas / TensorRT's context
        self.pipeline.caption(preprocess.preprocess_array(self.first_image[:, :, ::-1], self.preprocessing)[None],
                              beam_size=self.beam, max_len=self.max_len)
        if uses_decode_loop(self.source, self.session.precision, options.decode_loop):
            self.scheduler = decode_loop(manifest, self.session, self.log)
        elif options.decode_loop:
            self.log("--decode-loop: {} captions one frame per call (its rows must not share a call)".format(
                self.session.precision))

    def _guard_log(self, event, **fields):
        state = fields.get("state")
        if state == "shedding":
            self.log("memory guard: skipping captions: {}".format(fields.get("reason")))
        elif state == "recovered":
            self.log("memory guard: memory recovered, captioning again")
        else:
            self.log("memory guard: {}".format(fields.get("detail") or fields))

    def _reopen(self):
        return open_capture(self.cv2, self.source)

    # - the loop -
    def run(self):
        """Stream until the end, a limit or a stop; returns the :class:`StreamSummary`."""
        options = self.options
        cv2 = self.cv2
        self.queue = FrameQueue(options.queue, drop_oldest=self.source.live)
        self.capture_thread = CaptureThread(
            cv2, self.source, self.capture, self.queue, self.fps, self.first_image, every=options.every,
            need_all_images=bool(self.overlay or self.window), max_frames=options.max_frames, loop=options.loop,
            reopen=self._reopen)
        self.capture = None  # the capture thread owns (and releases) it from now on
        self.first_image = None
        self.log("captioning {} with {}: every {} frame(s), beam {}, queue {}{}, memory floor {}".format(
            self.source.describe(), self.session.describe(), options.every, self.beam, options.queue,
            " (oldest dropped when behind)" if self.source.live else "",
            "{:g} MiB".format(self.summary.memory_threshold_mb) if self.summary.memory_threshold_mb else "off"))
        self.guard.check()
        self.summary.rss_start_bytes = current_rss_bytes()
        started = time.time()
        self.capture_thread.start()
        try:
            self._loop(started)
        finally:
            self.summary.seconds = time.time() - started
        return self.summary

    def _loop(self, started):
        self._ticks = {"status": started, "memory": started, "window": started}
        self._window_captions = 0
        self._last_captioned = None
        if self.scheduler is not None:
            self._loop_scheduled(started)
        else:
            self._loop_batched(started)

    def _keep_going(self, started):
        """Once per iteration: the stop conditions, the memory check, the status line; False to stop."""
        options = self.options
        if self.stop_event.is_set():
            self.stop_reason = self.stop_reason or "stopped"
            return False
        now = time.time()
        if options.duration is not None and now - started >= options.duration:
            self.stop_reason = "duration ({:g} s)".format(options.duration)
            return False
        ticks = self._ticks
        if now - ticks["memory"] >= options.memory_check_every:
            self.guard.check()
            ticks["memory"] = now
        if options.status_every and now - ticks["status"] >= options.status_every:
            self._status(now - started, now - ticks["window"], self._window_captions)
            ticks["status"] = ticks["window"] = now
            self._window_captions = 0
        return True

    def _wanted(self, frame):
        """Whether ``frame`` is captioned (``--every``; not while the memory guard sheds); counts it."""
        self.summary.frames_processed += 1
        if self._last_captioned is None or frame.index - self._last_captioned >= self.options.every:
            self._last_captioned = frame.index
            if not self.guard.tripped:
                return True
            self.summary.skipped_memory += 1
        return False

    def _loop_scheduled(self, started):
        """Frames through the decode loop (:class:`jetcap.runtime.scheduler.DecodeScheduler`): a frame
        taken from the queue starts at once, joining the captions in flight at their next step, while
        there is room for its rows (the bundle's max batch); when there is none, the newest frames wait
        in the queue (a live source keeps dropping the oldest).  Records and the overlay follow frame order."""
        pending = collections.deque()  # [frame, request or None (not captioned), began, captions in flight]
        # as many captions in flight as the batched path captions together: the frame taken and --queue more
        room = max(1, min(self.scheduler.max_batch // self.beam, self.options.queue + 1))
        in_flight = 0
        while True:
            while pending and (pending[0][1] is None or pending[0][1].done.is_set()):
                in_flight -= self._finish(pending.popleft())
            if not self._keep_going(started):
                break
            if in_flight >= room:
                pending[0][1].done.wait(0.1)
                continue
            frame = self.queue.get(timeout=0.1)  # woken early when a caption in flight finishes
            if frame is FrameQueue.TIMEOUT:
                continue
            if frame is None:
                break  # the capture thread ended
            entry = [frame, None, time.time(), in_flight + 1]
            if self._wanted(frame):
                image = preprocess.preprocess_array(frame.image[:, :, ::-1], self.preprocessing)[None]
                try:
                    entry[1] = self.scheduler.submit(image, beam_size=self.beam, max_len=self.max_len,
                                                     on_done=self.queue.wake)
                except JetcapError as exc:  # the loop stopped on a failure (the captions in flight have it)
                    raise self._failed([frame], exc)
                in_flight += 1
            pending.append(entry)
        for entry in pending:  # stopped or ended: the captions in flight are finished and written
            if entry[1] is not None:
                entry[1].done.wait()
            self._finish(entry)

    def _finish(self, entry):
        """Write and show a frame taken by :meth:`_loop_scheduled`; 1 when it was captioned, else 0."""
        frame, request, began, together = entry
        if request is not None:
            if request.error is not None:
                raise self._failed([frame], request.error)
            self.caption_text = self._record(frame, request.results[0], (request.finished - began) * 1000.0, together)
        if self.overlay is not None or self.window:
            self._show(frame)
        return 0 if request is None else 1

    def _loop_batched(self, started):
        """Frames captioned a batch at a time (a variant whose rows must not share a call: ``int8-cpu``
        captions one image per call, :attr:`CaptionPipeline.image_batch`)."""
        while self._keep_going(started):
            frame = self.queue.get(timeout=0.1)
            if frame is FrameQueue.TIMEOUT:
                continue
            if frame is None:
                break  # the capture thread ended
            # frames that queued up while the last caption ran are captioned together: one batched
            # encoder call and shared decoder steps (rows leave as their captions end), in frame order
            frames, ended = [frame], False
            while len(frames) < self.pipeline.image_batch:
                more = self.queue.get(timeout=0)
                if more is FrameQueue.TIMEOUT:
                    break
                if more is None:
                    ended = True
                    break
                frames.append(more)
            wanted = [queued for queued in frames if self._wanted(queued)]
            captions = self._caption(wanted) if wanted else {}
            for queued in frames:
                if queued.index in captions:
                    self.caption_text = captions[queued.index]
                if self.overlay is not None or self.window:
                    self._show(queued)
            if ended:
                break

    def _caption(self, frames):
        """Caption ``frames`` in one batch; writes their records; returns ``{frame index: caption}``."""
        began = time.time()
        batch = np.stack([preprocess.preprocess_array(f.image[:, :, ::-1], self.preprocessing) for f in frames])
        try:
            hypotheses = self.pipeline.caption(batch, beam_size=self.beam, max_len=self.max_len)
        except Exception as exc:  # noqa: BLE001 -- the run stops with the reason, after its cleanup and summary
            raise self._failed(frames, exc)
        latency_ms = (time.time() - began) * 1000.0  # every frame of the batch waited for all of it
        return dict((frame.index, self._record(frame, hypothesis, latency_ms, len(frames)))
                    for frame, hypothesis in zip(frames, hypotheses))

    def _failed(self, frames, error):
        """The :class:`InferenceFailed` that stops the run when captioning ``frames`` raised ``error`` (the
        graph, the device or the decode loop failed); the summary's stop reason and exit code (1) say so."""
        what = str(error) if isinstance(error, JetcapError) else "{}: {}".format(type(error).__name__, error)
        which = "frame {}".format(frames[0].index) if len(frames) == 1 else "frames {}-{}".format(
            frames[0].index, frames[-1].index)
        self.stop_reason = "captioning {} failed: {}".format(which, what)
        self.inference_failed = True
        return InferenceFailed(self.stop_reason)

    def _record(self, frame, hypothesis, latency_ms, batch):
        """Count and write one caption (JSONL, ``on_caption``); returns its text."""
        text = self.pipeline.text(hypothesis)
        self.latencies.append(latency_ms)
        self.window_latencies.append(latency_ms)
        self.summary.captions += 1
        self._window_captions += 1
        record = collections.OrderedDict()
        record["frame"] = frame.index
        record["timestamp"] = round(frame.timestamp, 6)
        record["caption"] = text
        record["score"] = float(hypothesis.score)
        record["latency_ms"] = round(latency_ms, 3)
        record["batch"] = batch
        if self.jsonl is not None:
            try:
                self.jsonl.write(json.dumps(record) + "\n")
                self.jsonl.flush()
            except (IOError, OSError, ValueError) as exc:
                raise UsageError("writing --jsonl {} failed: {}".format(self.options.jsonl, exc))
        if self.on_caption is not None:
            self.on_caption(record)
        return text

    def _show(self, frame):
        image = draw_caption(self.cv2, frame.image, self.caption_text)
        if self.overlay is not None:
            self.overlay.write(image)
            self.summary.overlay_frames = self.overlay.frames
        if self.window:
            self.cv2.imshow(WINDOW_NAME, image)
            key = self.cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27):
                self.stop_reason = "window closed (key)"
                self.stop_event.set()
            elif self.cv2.getWindowProperty(WINDOW_NAME, self.cv2.WND_PROP_VISIBLE) < 1:
                self.stop_reason = "window closed"
                self.stop_event.set()

    def _status(self, elapsed, window_seconds, window_captions):
        latencies, self.window_latencies = self.window_latencies, []
        info = memory.read_memory_info()
        latency = ("p50 {:.1f} ms p95 {:.1f} ms".format(percentile(latencies, 50), percentile(latencies, 95))
                   if latencies else "no captions")
        self.log("{:.1f} s: {} frames, {} captions ({:.1f}/s), latency {}, dropped {}, skipped for memory {}, "
                 "RSS {}, MemAvailable {}".format(
                     elapsed, self.capture_thread.frames_read, self.summary.captions,
                     window_captions / window_seconds if window_seconds > 0 else 0.0, latency, self.queue.dropped,
                     self.summary.skipped_memory, memory.format_bytes(current_rss_bytes()),
                     memory.format_bytes(info.mem_available)))

    # - teardown -
    def close(self, signal_name=None):
        """Stop the capture, close the outputs and the window, release the runners; fill in the summary."""
        summary = self.summary
        thread = self.capture_thread
        if thread is not None:
            thread.stop()
            self.queue.close()
            thread.join(10.0)
            leftover = self.queue.clear() + thread.refused  # the frame the capture held when the queue closed
            if thread.is_alive():
                self.log("the capture did not stop within 10 s (a blocked read); it is left to the process exit")
            summary.frames_read = thread.frames_read
            summary.dropped = self.queue.dropped
            if leftover:
                self.log("{} frame(s) read but not processed at the stop".format(leftover))
        elif self.capture is not None:
            self.capture.release()
            self.capture = None
        if self.jsonl is not None:
            jsonl, self.jsonl = self.jsonl, None
            try:
                jsonl.close()
            except (IOError, OSError) as exc:  # the last buffered line could not be written: a failed run
                self.close_error = UsageError("writing --jsonl {} failed: {}".format(self.options.jsonl, exc))
        if self.overlay is not None:
            self.overlay.release()
            summary.overlay_frames = self.overlay.frames
            self.overlay = None
        if self.window:
            self.cv2.destroyWindow(WINDOW_NAME)
            self.cv2.waitKey(1)
            self.window = False
        if self.scheduler is not None:
            scheduler, self.scheduler = self.scheduler, None
            if not scheduler.close():  # a search still running: its runners must not be freed under it
                self.log("a caption was still running after 5 s; the runners are left to the process exit")
                self.session = None
        if self.session is not None:
            self.session.close()
            self.session = None
        if thread is not None:
            if signal_name:
                summary.stop_reason = signal_name
            elif self.stop_reason and self.stop_reason != "stopped":
                summary.stop_reason = self.stop_reason
            else:
                summary.stop_reason = thread.end_reason or self.stop_reason or "stopped"
            if thread.error is not None or ((thread.vanished or thread.damaged) and not signal_name
                                            and self.stop_reason is None):
                summary.exit_code = 1
        if self.inference_failed:
            summary.exit_code = 1
        if self.latencies:
            summary.latency_p50_ms = percentile(self.latencies, 50)
            summary.latency_p95_ms = percentile(self.latencies, 95)
        summary.rss_end_bytes = current_rss_bytes()
        # ru_maxrss and /proc's VmRSS are counted slightly differently: the peak is at least what was read
        peaks = [v for v in (peak_rss_bytes(), summary.rss_start_bytes, summary.rss_end_bytes) if v is not None]
        summary.peak_rss_bytes = max(peaks) if peaks else None
        return summary


def run_stream(bundle, options, log=None, on_caption=None, stop_event=None, handle_signals=True):
    """Caption the video ``options.source`` with the captioner ``bundle``; returns a :class:`StreamSummary`.

    Args:
        bundle: the captioner bundle directory.
        options: :class:`StreamOptions`.
        log: callable receiving progress, status and summary lines (default: silent).
        on_caption: callable receiving each caption record (a dict, as written to the JSONL).
        stop_event: a ``threading.Event`` that stops the run when set (optional).
        handle_signals: stop cleanly on SIGINT/SIGTERM (only from the main thread; default True).
    Returns:
        the summary; its ``exit_code`` is 1 when a live source vanished or the capture failed, else 0.
    Raises:
        JetcapError: bad options, a source that cannot be opened, an output that cannot be written, a
            bundle that is not a captioner or does not fit in memory (all before streaming starts), or
            an output write that fails while streaming (after cleanup).
    """
    log = log or _quiet
    runner = StreamRunner(bundle, options, log=log, on_caption=on_caption, stop_event=stop_event)
    signals = _SignalStop(runner.stop_event, log)
    if handle_signals:
        signals.install()
    failed = None
    try:
        runner.prepare()
        runner.run()
    except JetcapError as exc:
        failed = exc
    finally:
        try:
            summary = runner.close(signals.received)
        finally:
            signals.restore()
    failed = failed or runner.close_error
    if failed is not None:
        if runner.capture_thread is not None:
            log(summary.describe())
        raise failed
    log(summary.describe())
    return summary
