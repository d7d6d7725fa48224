"""The parts of ``jetcap serve-engine`` that are not HTTP (Python 3.6, standard library + numpy).

* :class:`JsonLog`: structured log lines (one JSON object per line) on stderr.
* :class:`MemoryGuard`: reads the process RSS and the available memory every second and says when to
  shed load.
* :class:`Dispatcher`: ``max_concurrency`` inference worker threads fed by a bounded wait queue.
* :class:`ModelState`: loads a bundle in the background (memory-checked, then a warm-up inference) and
  runs the caption / predict jobs.

:mod:`jetcap.serve` puts them behind HTTP.
"""
import collections
import io
import json
import sys
import threading
import time
import traceback

import numpy as np

from jetcap.errors import InsufficientMemoryError, JetcapError, UsageError
from jetcap.runtime import bundle_schema, memory, preprocess
from jetcap.runtime.backends.onnxruntime import SPIN_DURING_RUNS
from jetcap.runtime.loader import current_rss_bytes
from jetcap.runtime.manifest import rows_independent
from jetcap.runtime.scheduler import LoopClosed
from jetcap.util.lazy import require

# memory guard: recover only once memory is this fraction better than the threshold (no flapping)
GUARD_HYSTERESIS = 0.05
# an image whose decode holds more than this (its pixels plus the RGB result: an 8-bit RGB photo of about
# 11 megapixels) decodes while no other such image does
LARGE_DECODE_BYTES = 64 << 20
SERVABLE_FAMILIES = ("captioner", "classifier")


class JsonLog(object):
    """Structured log: one JSON object per line on ``stream`` (default stderr), thread-safe."""

    def __init__(self, stream=None):
        self.stream = stream
        self.dropped = 0
        self._lock = threading.Lock()

    def __call__(self, event, **fields):
        """Write ``{"ts", "event", **fields}``."""
        record = collections.OrderedDict()
        now = time.time()
        record["ts"] = "{}.{:03d}Z".format(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)),
                                           int(now * 1000) % 1000)
        record["event"] = event
        record.update(fields)
        line = json.dumps(record, default=str) + "\n"
        stream = self.stream or sys.stderr
        with self._lock:
            try:
                stream.write(line)
                stream.flush()
            except (IOError, OSError, ValueError):
                # a closed or broken log stream must never take a request down with it; count the loss
                self.dropped += 1

    def message(self, text):
        """A free-text progress line (what the loader and session report)."""
        self("log", message=text)


class _NoLock(object):
    """A lock that does nothing (``contextlib.nullcontext`` is 3.7+)."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        return False


# -- memory guard ---------------------------------------------------------------------------------
class MemoryGuard(object):
    """Sheds load while memory is short: RSS above ``max_rss_bytes`` or available below ``min_available_bytes``.

    :meth:`check` reads the real numbers (``/proc/self/status``, ``/proc/meminfo``, the cgroup limit);
    :meth:`start` runs it every ``interval`` seconds on a daemon thread.  Recovery needs
    ``GUARD_HYSTERESIS`` of head room so the guard does not flap.

    Args:
        max_rss_bytes: resident-memory ceiling of this process (None: not checked).
        min_available_bytes: floor of the memory the system/cgroup still has available (None: not checked).
        interval: seconds between checks.
        log: a :class:`JsonLog`.
        on_trip: called (no arguments) each time shedding starts, e.g. to count it.
    """

    def __init__(self, max_rss_bytes=None, min_available_bytes=None, interval=1.0, log=None, on_trip=None):
        self.on_trip = on_trip
        self.max_rss_bytes = max_rss_bytes
        self.min_available_bytes = min_available_bytes
        self.interval = float(interval)
        self.log = log or JsonLog()
        self.tripped = False
        self.reason = None
        self.trips = 0
        self.rss_bytes = None
        self.available_bytes = None
        self.mem_available_bytes = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None

    @property
    def enabled(self):
        return bool(self.max_rss_bytes) or bool(self.min_available_bytes)

    def _problem(self, rss, available, margin):
        """Why memory is short (None when it is not), with ``margin`` of extra head room required."""
        if self.max_rss_bytes and rss is not None and rss > self.max_rss_bytes * (1.0 - margin):
            return "process RSS {} is above the limit of {} (--max-rss-mb)".format(
                memory.format_bytes(rss), memory.format_bytes(self.max_rss_bytes))
        if self.min_available_bytes and available is not None and available < self.min_available_bytes * (1.0 + margin):
            return "available memory {} is below the floor of {} (--memory-threshold-mb)".format(
                memory.format_bytes(available), memory.format_bytes(self.min_available_bytes))
        return None

    def check(self):
        """Read memory now and update the state; returns True while load is being shed."""
        rss = current_rss_bytes()
        info = memory.read_memory_info()
        with self._lock:
            self.rss_bytes, self.available_bytes, self.mem_available_bytes = rss, info.available, info.mem_available
            if not self.tripped:
                problem = self._problem(rss, info.available, 0.0)
                if problem:
                    self.tripped, self.reason = True, problem
                    self.trips += 1
                    if self.on_trip is not None:
                        self.on_trip()
                    self.log("memory_guard", state="shedding", reason=problem, rss_bytes=rss,
                             available_bytes=info.available)
            elif self._problem(rss, info.available, GUARD_HYSTERESIS) is None:
                self.log("memory_guard", state="recovered", previous=self.reason, rss_bytes=rss,
                         available_bytes=info.available)
                self.tripped, self.reason = False, None
            return self.tripped

    def start(self):
        """Check once now, then every ``interval`` seconds on a daemon thread (no-op when disabled)."""
        if not self.enabled or self._thread is not None:
            return
        self.check()
        self._thread = threading.Thread(target=self._run, name="jetcap-memory-guard")
        self._thread.daemon = True
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as exc:  # an unreadable /proc must not kill the guard; say so and go on
                self.log("memory_guard", state="error", detail="{}: {}".format(type(exc).__name__, exc))

    def stop(self):
        """Stop the checking thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 1.0)


# -- inference workers ----------------------------------------------------------------------------
class ModelUnavailable(JetcapError):
    """The model cannot take the request now (closed, failed, its decode loop stopped): 503, not the input's fault."""


class QueueFull(Exception):
    """The wait queue is full (answered 503)."""


class Job(object):
    """One inference waiting for / running on a worker."""

    def __init__(self, fn):
        self.fn = fn
        self.done = threading.Event()
        self.result = None
        self.error = None
        self.cancelled = False
        self.enqueued = time.time()
        self.started = None
        self.finished = None
        self.traceback = None


class Dispatcher(object):
    """``workers`` threads running jobs in order; at most ``queue_size`` jobs wait beyond the idle workers.

    ``running`` (in-flight inferences) and ``waiting`` (queue depth) are what ``/metrics`` shows.
    """

    def __init__(self, workers, queue_size, log=None):
        self.workers = int(workers)
        self.queue_size = int(queue_size)
        self.log = log or JsonLog()
        self.running = 0
        self._jobs = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._threads = []

    @property
    def waiting(self):
        return len(self._jobs)

    def start(self):
        """Start the worker threads."""
        for index in range(self.workers):
            thread = threading.Thread(target=self._work, name="jetcap-worker-{}".format(index))
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def submit(self, fn):
        """Queue ``fn`` (no arguments); QueueFull when no worker is idle and the queue is full."""
        job = Job(fn)
        with self._cond:
            if self._closed:
                raise QueueFull("the server is shutting down")
            idle = self.workers - self.running
            if len(self._jobs) >= self.queue_size + max(0, idle):
                raise QueueFull("{} inference(s) running and {} waiting (--max-concurrency {}, --queue {})".format(
                    self.running, len(self._jobs), self.workers, self.queue_size))
            self._jobs.append(job)
            self._cond.notify()
        return job

    def cancel(self, job):
        """Drop ``job`` if it has not started (a timed-out request); a running job finishes unobserved."""
        with self._cond:
            job.cancelled = True
            if job.started is None and job in self._jobs:
                self._jobs.remove(job)

    def _work(self):
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return  # closed and nothing left
                job = self._jobs.popleft()
                job.started = time.time()
                self.running += 1
            try:
                job.result = job.fn()
            except Exception as exc:  # handed to the waiting request, which answers and logs it
                job.error = exc
                job.traceback = traceback.format_exc()
            finally:
                job.finished = time.time()
                with self._cond:
                    self.running -= 1
                job.done.set()

    def close(self, wait_seconds):
        """Refuse new jobs, let the workers finish what is queued, wait up to ``wait_seconds``.

        Returns True when every worker has stopped.
        """
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.time() + wait_seconds
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.time()))
        return not any(thread.is_alive() for thread in self._threads)


# -- the model ------------------------------------------------------------------------------------
class ModelState(object):
    """The bundle behind the server: loading state, manifest, session, pipeline, and the inference jobs.

    ``state`` is "loading", "ready", "failed" or "closed"; ``reason`` says why it is not ready.
    """

    def __init__(self, bundle, options, log):
        self.bundle = str(bundle)
        self.options = options
        self.log = log
        self.state = "loading"
        self.reason = "loading the bundle"
        self.manifest = None
        self.session = None
        self.pipeline = None
        self.load_seconds = None
        self.warmup_seconds = None
        self.error_type = None
        self._closing = False
        self._loading = False  # load() runs: it owns the runners it opens until it ends
        self._loop_error = None  # (exception, traceback) of a decode loop that stopped on a failure
        self._lock = threading.Lock()
        self._infer_lock = _NoLock()
        self._large_decodes = threading.Lock()  # images over LARGE_DECODE_BYTES decode one at a time
        self._large_waiting = 0
        self._thread = None
        self.scheduler = None  # the DecodeScheduler when caption requests share the model's calls
        self.batch_stats = {}  # {graph: BatchStats} of the scheduler

    @property
    def family(self):
        return self.manifest.family if self.manifest is not None else None

    @property
    def ready(self):
        return self.state == "ready"

    @property
    def loading(self):
        """True while :meth:`load` runs (it then owns the runners)."""
        return self._loading

    def start_loading(self, on_done=None):
        """Load in a background thread; ``on_done(state)`` is called when it ends either way."""
        def run():
            self.load()
            if on_done is not None:
                on_done(self)

        self._thread = threading.Thread(target=run, name="jetcap-loader")
        self._thread.daemon = True
        self._thread.start()

    def join(self, seconds):
        """Wait up to ``seconds`` for the loading thread."""
        if self._thread is not None:
            self._thread.join(seconds)

    def load(self):
        """Open the bundle (memory-checked), build the pipeline and run one warm-up inference.

        Never raises: a failure sets ``state = "failed"`` and ``reason`` (logged with its traceback when
        it is not a :class:`JetcapError`).  A :meth:`close` while this runs leaves the runners to it: they
        are released here once the step in progress (the warm-up, say) has ended, never under it.
        """
        began = time.time()
        with self._lock:
            if self._closing:
                return
            self._loading = True
        try:
            self._load(began)
        except JetcapError as exc:
            self._fail(exc, "insufficient memory: " if isinstance(exc, InsufficientMemoryError) else "")
        except Exception as exc:  # e.g. onnxruntime refusing a corrupt graph: report it, stay up
            self._fail(exc, "{}: ".format(type(exc).__name__), traceback.format_exc())
        finally:
            with self._lock:
                self._loading = False
                closing = self._closing
            if closing:  # closed while loading: what was opened is released now, by this thread
                self._release(*self._take_runners())

    def _load(self, began):
        from jetcap.runtime.manifest import Manifest
        from jetcap.runtime.session import open_bundle

        self.manifest = Manifest.load(self.bundle)
        if self.manifest.family not in SERVABLE_FAMILIES:
            raise UsageError("bundle family {!r} cannot be served (captioner or classifier)".format(
                self.manifest.family))
        bundle_schema.require_entries(self.manifest, "caption" if self.family == "captioner" else "predict")
        # one decode loop calls the graphs, one call at a time; workers call them side by side
        wants_batching = self.family == "captioner" and self.options.batching
        batching = wants_batching and rows_independent(self.options.precision)
        session = open_bundle(self.manifest, backend=self.options.backend, precision=self.options.precision,
                              engine_cache=self.options.engine_cache, max_memory_mb=self.options.max_memory_mb,
                              log=self.log.message, threads=self.options.threads,
                              spinning=SPIN_DURING_RUNS if batching else False)  # spinning_policy
        with self._lock:
            self.session = session  # released by load() when closed meanwhile
            if self._closing:
                return
        if session.backend == "tensorrt":
            self._infer_lock = threading.Lock()  # one execution context per engine
        if wants_batching and not batching:
            # requests may not share calls; the workers' own concurrent calls then serve more than one
            # loop calling for everyone (measured: 89.7 vs 75.0 captions/s at 8 clients, BENCHMARKS.md)
            self.log("batching", enabled=False, detail=(
                "{}: each call's activations share one quantisation scale, so requests never share a call "
                "(a caption never depends on the requests beside it); served by the workers".format(
                    session.precision)))
        if batching:
            from jetcap.runtime.pipeline import CaptionPipeline
            from jetcap.runtime.scheduler import DecodeScheduler

            # one decode loop calls the runners for every request: no lock, the steps run together
            self.pipeline = CaptionPipeline(self.manifest, session.runners, session.precision)
            scheduler = DecodeScheduler(self.manifest, session.runners, on_failure=self._loop_failed)
            with self._lock:
                self.scheduler = scheduler  # released by load() when closed meanwhile
                if self._closing:
                    return
            self.batch_stats = scheduler.stats
            self._infer_lock = _NoLock()
        elif self.family == "captioner":
            self.pipeline = session.caption_pipeline()
        else:
            self.pipeline = session.classifier_pipeline()
        self.load_seconds = time.time() - began
        warm = time.time()
        self._warm_up()
        self.warmup_seconds = time.time() - warm
        with self._lock:
            if self._closing:
                return
            if self._loop_error is not None:  # the loop died after answering the warm-up: never ready
                raise JetcapError(self.scheduler.failure)
            self.state, self.reason = "ready", None
        self.log("model_ready", family=self.family, backend=session.backend, backend_reason=session.reason,
                 precision=session.precision, load_seconds=round(self.load_seconds, 3),
                 warmup_ms=round(self.warmup_seconds * 1000.0, 2))

    def _fail(self, exc, prefix, trace=None):
        with self._lock:
            if self._closing:  # the shutdown cut the load short: not a failure of the model (load() releases)
                return
            self.state = "failed"
            self.reason = prefix + str(exc)
            self.error_type = type(exc).__name__
            if self._loop_error is not None:  # the warm-up failed because the loop died: its error is the cause
                self.error_type, trace = type(self._loop_error[0]).__name__, self._loop_error[1]
        self._release(*self._take_runners(), quiet=True)  # loaded but the warm-up failed: give the memory back
        self.log("model_failed", reason=self.reason, error_type=self.error_type, traceback=trace)

    def _loop_failed(self, exc, trace):
        """The decode loop stopped on a failure outside its requests (it answered every request it held):
        the model is failed from now on, said by ``/ready`` and logged once with the traceback.  The runners
        stay (no thread calls them any more; requests on the workers may still read the pipeline)."""
        with self._lock:
            self._loop_error = (exc, trace)  # a warm-up that fails this way reports it (load, _fail)
            if self._closing or self.state != "ready":
                return
            self.state = "failed"
            self.reason = "{} (restart the server)".format(self.scheduler.failure)
            self.error_type = type(exc).__name__
        self.log("model_failed", reason=self.reason, error_type=self.error_type, traceback=trace)

    def _take_runners(self):
        with self._lock:
            session, self.session, self.pipeline = self.session, None, None
            scheduler, self.scheduler = self.scheduler, None
        return session, scheduler

    def _release(self, session, scheduler, quiet=False):
        if scheduler is not None and not scheduler.close():
            self.log("runners_kept", detail="a caption was still running after 5 s; its runners are left to the "
                     "process exit")
            session = None
        if session is not None:
            session.close()
            if not quiet:
                self.log("runners_released", backend=session.backend)

    def stall(self):
        """Why requests cannot be answered in time although the model is ready, else None: the decode loop
        has spent over ``options.stall_seconds`` (``--timeout``, at least 5 s) in one iteration (one encoder
        call and one step take milliseconds: a graph call that does not return, e.g. a hung device)."""
        scheduler = self.scheduler
        seconds = scheduler.iteration_seconds() if scheduler is not None else 0.0
        if seconds <= self.options.stall_seconds:
            return None
        return "the decode loop has been in one iteration for {:.1f} s (over {:g} s): a graph call that does not " \
               "return?".format(seconds, self.options.stall_seconds)

    def _warm_up(self):
        """One inference through exactly the path a request takes (decode, preprocess, model, result), so
        ``/ready`` = 200 means every endpoint of the family can answer."""
        if self.family == "captioner":
            self.caption(self.prepare(warmup_image(self.manifest.preprocessing), self.options.timeout),
                         self.default_beam(), self.default_max_len())
        else:
            self.predict(warmup_sequence(self.manifest, self.pipeline.min_len, self.pipeline.max_len,
                                         self.pipeline.width).tolist())

    def default_beam(self):
        """The bundle's decoding beam size (1 when it has none), as ``jetcap caption`` uses it."""
        return int(self.manifest.decoding.get("beam_size") or 1)

    def max_batch(self):
        """The bundle's largest batch (rows of one graph call)."""
        return int(self.manifest.axes["batch"]["max"])

    def default_max_len(self):
        """The bundle's decoding max_len (20 when it has none)."""
        return int(self.manifest.decoding.get("max_len") or 20)

    # -- inference jobs (run on a worker thread) ----------------------------------------------------
    def prepare(self, image_bytes, wait_seconds):
        """``image_bytes`` ready for a worker, on the request's thread: opened from its header (refused there
        when it is not an image within ``--max-pixels``), and when its decode needs over
        :data:`LARGE_DECODE_BYTES` also decoded and preprocessed here, once no other such image is decoding.
        Large images so wait among themselves, never on a worker the small requests need; at most
        ``max_concurrency`` of them wait (QueueFull beyond, and after ``wait_seconds``)."""
        image = open_encoded(image_bytes, self.options.max_pixels)
        if preprocess.decode_bytes(image) <= LARGE_DECODE_BYTES:
            return image  # a worker decodes it
        with self._lock:
            if self._large_waiting >= self.options.max_concurrency:
                raise QueueFull("{} large images (over {} MiB decoded) are waiting to decode".format(
                    self._large_waiting, LARGE_DECODE_BYTES >> 20))
            self._large_waiting += 1
        try:
            if not self._large_decodes.acquire(True, wait_seconds):
                raise QueueFull("a large image waited {} s to decode".format(wait_seconds))
            try:
                return decode_opened(image, self.manifest.preprocessing)
            finally:
                self._large_decodes.release()
        finally:
            with self._lock:
                self._large_waiting -= 1

    def caption(self, prepared, beam_size, max_len):
        """Caption one image as :meth:`prepare` gave it (decoded and preprocessed here when it was not yet)
        -> ``{caption, tokens, score, backend, precision}``."""
        session, pipeline, scheduler = self._runners()
        array = prepared if isinstance(prepared, np.ndarray) else decode_opened(prepared, self.manifest.preprocessing)
        if scheduler is not None:
            try:
                hypothesis = scheduler.caption(array, beam_size=beam_size, max_len=max_len)[0]
            except LoopClosed as exc:  # stopped (shutdown, failure) between the request's checks and now
                raise ModelUnavailable(str(exc))
        else:
            with self._infer_lock:
                hypothesis = pipeline.caption(array, beam_size=beam_size, max_len=max_len)[0]
        return collections.OrderedDict([
            ("caption", pipeline.text(hypothesis)),
            ("tokens", [int(t) for t in hypothesis.tokens]),
            ("score", float(hypothesis.score)),
            ("finished", bool(hypothesis.finished)),
            ("backend", session.backend),
            ("precision", session.precision),
        ])

    def predict(self, sequence):
        """Classify one ``(T, F)`` sequence -> ``{label, index, probabilities, backend, precision}``."""
        session, pipeline, _ = self._runners()
        with self._infer_lock:
            result = pipeline.predict(sequence)
        return collections.OrderedDict([
            ("label", result["label"]),
            ("index", result["index"]),
            ("probabilities", result["probabilities"]),
            ("backend", session.backend),
            ("precision", session.precision),
        ])

    def _runners(self):
        """``(session, pipeline, scheduler)`` as one request uses them from start to end, or
        :class:`ModelUnavailable` when the model is closed or failed (a request that raced the change)."""
        with self._lock:
            session, pipeline, scheduler = self.session, self.pipeline, self.scheduler
        if session is None or pipeline is None:
            raise ModelUnavailable(self.reason or "the model is not loaded")
        return session, pipeline, scheduler

    def summary(self):
        """What ``GET /model`` shows: the manifest summary and what is loaded (None before the manifest)."""
        manifest = self.manifest
        if manifest is None:
            return None
        out = collections.OrderedDict()
        out["family"] = manifest.family
        out["bundle"] = manifest.bundle_dir
        out["state"] = self.state
        out["graphs"] = collections.OrderedDict(
            (name, {"inputs": manifest.graph(name)["inputs"], "outputs": manifest.graph(name)["outputs"]})
            for name in manifest.graph_names)
        out["axes"] = manifest.axes
        out["precisions"] = manifest.precisions
        out["precision"] = self.session.precision if self.session is not None else self.options.precision
        out["backend"] = self.session.backend if self.session is not None else None
        out["backend_reason"] = self.session.reason if self.session is not None else None
        out["load_seconds"] = round(self.load_seconds, 3) if self.load_seconds is not None else None
        if manifest.family == "captioner":
            vocabulary = manifest.data.get("vocabulary", {})
            out["vocab_size"] = len(vocabulary.get("itos", []))
            out["image_size"] = manifest.preprocessing.get("image_size")
            out["decoding"] = {"beam_size": self.default_beam(), "max_len": self.default_max_len()}
            out["endpoint"] = "POST /caption"
        else:
            out["labels"] = manifest.labels
            out["input_size"] = int(manifest.config["input_size"])
            out["sequence_length"] = {"min": int(manifest.axes["T"]["min"]), "max": int(manifest.axes["T"]["max"])}
            out["endpoint"] = "POST /predict"
        return out

    def close(self):
        """Release the runners (the session).  While :meth:`load` runs, it releases them itself when the
        step in progress ends (a warm-up is never cut off by its runners vanishing)."""
        with self._lock:
            self._closing = True
            self.state = "closed"
            self.reason = "the server is shutting down"
            if self._loading:
                return
        self._release(*self._take_runners())


def warmup_image(preprocessing):
    """PNG bytes of a mid-grey image of the bundle's input size: what the warm-up request sends."""
    Image = require("PIL.Image")
    height, width = preprocessing["image_size"]
    buffer = io.BytesIO()
    Image.new("RGB", (int(width), int(height)), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def warmup_sequence(manifest, min_len, max_len, width):
    """The sequence the classifier's warm-up request sends: one of the bundle's own reference inputs (a
    sequence the export checked against the user's PyTorch model), the one nearest the profile's opt length
    within ``min_len..max_len``; without reference data, seeded noise.  Never all zeros: a model that masks
    all-zero frames (missing hands) may well answer NaN for a clip of nothing but those, and a warm-up
    that fails leaves the server unready for good."""
    opt = max(min_len, min(max_len, int(manifest.axes["T"]["opt"])))
    found = []
    try:
        path = manifest.reference_path()
        if path is not None:
            with np.load(path, allow_pickle=False) as reference:
                arrays = [reference[name] for name in reference.files if name.endswith("/in/sequence")]
            found = [array[0] for array in arrays if array.ndim == 3]
    except (JetcapError, OSError, ValueError, KeyError):  # reference data missing, changed or unreadable:
        found = []  # predict never needs it, and the warm-up has the seeded noise below
    found = [array for array in found if min_len <= array.shape[0] <= max_len and array.shape[1] == width]
    if found:
        return np.asarray(min(found, key=lambda array: abs(array.shape[0] - opt)), dtype=np.float32)
    return np.random.RandomState(0).uniform(-1.0, 1.0, (opt, width)).astype(np.float32)


def open_encoded(data, max_pixels):
    """The image in the encoded bytes ``data``, opened from its header only (see
    :func:`jetcap.runtime.preprocess.peek_image`); UsageError for anything that is not an image within
    ``max_pixels`` (Pillow's own decompression-bomb refusal and odd decoder failures included)."""
    if not data:
        raise UsageError("empty image: send the encoded image as the request body or as the form field 'image'")
    try:
        return preprocess.peek_image(io.BytesIO(data), max_pixels)
    except JetcapError:
        raise
    except Exception as exc:  # Pillow raises DecompressionBombError, struct.error ... on hostile input
        raise UsageError("the request body is not a usable image: {}: {}".format(type(exc).__name__, exc))


def decode_opened(image, preprocessing):
    """The float32 ``(1, 3, H, W)`` model input of an image :func:`open_encoded` opened; UsageError when its
    pixel data cannot be decoded."""
    try:
        return preprocess.preprocess_image(preprocess.decode_image(image), preprocessing)[None]
    except JetcapError:
        raise
    except Exception as exc:  # struct.error, zlib errors ... in a hostile file's pixel data
        raise UsageError("the request body is not a usable image: {}: {}".format(type(exc).__name__, exc))
