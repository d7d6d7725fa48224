"""One decoding loop for every caption request in flight: iteration-level scheduling (Python 3.6).

A batch-1 decoder step is memory-bound (a COCO-sized step reads ~43 MB of weights for ~22 MFLOP), so
eight captions in flight cost little more per step than one -- if their steps run *together*.  LLM
servers get there by owning the token loop: one thread runs every step of every sequence in flight.
:class:`DecodeScheduler` does that for captions.  Request threads hand it preprocessed images and wait;
its one thread repeats:

1. **admit**: waiting images join, first come first served, while the rows they may need (1 for
   greedy, the beam for beam search) fit in the bundle's max batch beside the rows already decoding;
   their images run through the encoder together, in one call;
2. **step**: every search in flight contributes its rows to one decoder-step call (more calls only when
   a single search holds more rows than the max batch), and each search -- jetcap's ordinary greedy or
   beam search (:mod:`jetcap.runtime.decoding`), resumed where it yielded -- reads its rows back;
   finished searches leave, and their requests are answered.

So a new request joins the running batch at the next step, finished rows leave at once, and a request
that fits waits for at most the step in progress (plus one encoder call).  Captions are those of a
single request: the same search code over the same graphs, row by row.  Only this thread calls the
runners, so a TensorRT execution context is never shared.  ``stats`` holds what ``/metrics`` shows:
calls, rows per call and queue time, per graph.
"""
import collections
import itertools
import threading
import time
import traceback

import numpy as np

from jetcap.errors import JetcapError, UsageError
from jetcap.runtime import decoding
from jetcap.runtime.decoder_protocol import DecoderProtocol
from jetcap.runtime.pipeline import HostDecoderSession, check_beam


class LoopClosed(JetcapError):
    """The decode loop takes no more requests: closed at a shutdown, or stopped by a failure (``reason``)."""


def batch_axes(tensors):
    """``{name: index of "batch"}`` of a manifest tensor list; None when a tensor has no batch axis."""
    out = {}
    for tensor in tensors:
        shape = list(tensor["shape"])
        if "batch" not in shape:
            return None
        out[tensor["name"]] = shape.index("batch")
    return out


class BatchStats(object):
    """What ``/metrics`` shows of one batching runner: calls, rows and requests per call, queue time, and
    the time its calls ran (the graph alone: the rest of the loop's busy time is its Python)."""

    def __init__(self, max_batch):
        self.max_batch = int(max_batch)
        self.calls = 0
        self.rows = 0
        self.requests = 0
        self.queue_seconds = 0.0
        self.max_queue_seconds = 0.0
        self.run_seconds = 0.0
        self._lock = threading.Lock()

    def record(self, requests, rows, queue_seconds, run_seconds=0.0):
        with self._lock:
            self.calls += 1
            self.rows += rows
            self.requests += requests
            self.queue_seconds += sum(queue_seconds)
            self.max_queue_seconds = max([self.max_queue_seconds] + list(queue_seconds))
            self.run_seconds += run_seconds

    def add_run(self, seconds):
        """Run time of a call that is not one of ``calls`` (a failed batch's rows retried one by one)."""
        with self._lock:
            self.run_seconds += seconds

    def snapshot(self):
        with self._lock:
            calls = max(1, self.calls)
            return {"calls": self.calls, "rows": self.rows, "requests": self.requests,
                    "mean_rows": self.rows / float(calls), "occupancy": self.rows / float(calls * self.max_batch),
                    "mean_queue_ms": 1000.0 * self.queue_seconds / max(1, self.requests),
                    "max_queue_ms": 1000.0 * self.max_queue_seconds,
                    "run_seconds": self.run_seconds, "mean_run_ms": 1000.0 * self.run_seconds / calls}


class ContextRows(object):
    """The step's context inputs (fixed per image: features and the like) of the searches in flight, kept
    in one array per input with room for ``capacity`` rows, batch first.

    :meth:`arrange` lays out the rows of the jobs it is given: a search that stays keeps its rows (moved
    up only to close the gap of one that left), one that joins, or whose number of rows changed (a beam
    that widened or lost finished hypotheses), writes its own.  So a search joining or leaving a batch
    copies its rows, not every row in flight (at 8 clients a join or a leave every 2-3 steps made
    re-concatenating all of them a tenth of the decode loop's time).
    """

    def __init__(self, names, capacity):
        self.names = list(names)
        self.capacity = int(capacity)
        self._arrays = {}
        self._layout = []  # [(job key, rows)] in row order
        self.copied_rows = 0  # rows written or moved since the start (tests, profiling)

    def arrange(self, jobs, keys, rows_of):
        """``{name: the rows of jobs}`` in row order, and that order (a permutation of ``jobs``).

        Args:
            jobs: the searches of one step call.
            keys: one hashable per job, which changes when its context rows change.
            rows_of: ``rows_of(job)`` -> ``{name: its context rows}``, batch first.
        """
        try:
            return self._arrange(jobs, keys, rows_of)
        except Exception:
            self._layout = []  # rows may have moved: the next call writes every row again
            raise

    def _arrange(self, jobs, keys, rows_of):
        old = dict((key, (offset, rows)) for key, rows, offset in self._offsets())
        staying = sorted((j for j in range(len(jobs)) if keys[j] in old), key=lambda j: old[keys[j]][0])
        joining = [j for j in range(len(jobs)) if keys[j] not in old]
        layout, write = [], 0
        for j in staying:
            offset, rows = old[keys[j]]
            if offset != write:
                for array in self._arrays.values():
                    array[write:write + rows] = array[offset:offset + rows]  # moves up: overlap-safe
                self.copied_rows += rows
            layout.append((keys[j], rows))
            write += rows
        for j in joining:
            values = rows_of(jobs[j])
            rows = len(values[self.names[0]])
            if write + rows > self.capacity:
                raise ValueError("{} context rows do not fit the {} rows of a call".format(write + rows, self.capacity))
            for name in self.names:
                self._room(name, values[name], alone=not layout)[write:write + rows] = values[name]
            self.copied_rows += rows
            layout.append((keys[j], rows))
            write += rows
        self._layout = layout
        order = [jobs[j] for j in staying + joining]
        return dict((name, self._arrays[name][:write]) for name in self.names), order

    @property
    def layout(self):
        """``((job key, rows), ...)`` in row order: what the arrays' first rows hold since the last call."""
        return tuple(self._layout)

    def _offsets(self):
        offset = 0
        for key, rows in self._layout:
            yield key, rows, offset
            offset += rows

    def _room(self, name, value, alone):
        """The array of ``name``, (re)allocated when missing, or when the first rows of a new layout have
        another shape or type (rows of another shape beside others cannot share a call)."""
        array = self._arrays.get(name)
        if array is None or array.shape[1:] != value.shape[1:] or array.dtype != value.dtype:
            if not alone:
                raise ValueError("context {!r} rows of shape {} beside rows of shape {}".format(
                    name, value.shape[1:], None if array is None else array.shape[1:]))
            array = self._arrays[name] = np.empty((self.capacity,) + value.shape[1:], dtype=value.dtype)
        return array


def _joined(parts, axis):
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)


class _Request(object):
    """What one ``caption`` / ``submit`` call waits for: one job per image (none: done at once)."""

    def __init__(self, count, on_done=None):
        self.results = [None] * count
        self.remaining = count
        self.error = None
        self.done = threading.Event()
        self.finished = None
        self.on_done = on_done
        if not count:
            self.finished = time.time()
            self.done.set()

    def finish(self, index, result=None, error=None):
        if self.remaining <= 0:
            return  # answered already (a failure after its last image): the first answer stands
        if error is not None and self.error is None:
            self.error = error
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0:
            self.finished = time.time()
            self.done.set()
            if self.on_done is not None:
                self.on_done()


class _Job(object):
    """One image's search: its generator, its state rows and the operation it waits on."""

    __slots__ = ("request", "index", "image", "beam_size", "max_len", "reserve", "submitted", "search", "session",
                 "context", "op", "ready", "number")

    def __init__(self, request, index, image, beam_size, max_len, reserve, number):
        self.request = request
        self.index = index
        self.image = image
        self.beam_size = beam_size
        self.max_len = max_len
        self.reserve = reserve
        self.submitted = time.time()
        self.search = None
        self.session = None  # a HostDecoderSession: this search's carried state, one row per hypothesis
        self.context = None  # its image's context inputs, one row each, whatever its number of rows
        self.op = None
        self.ready = None
        self.number = number  # unique per scheduler (ids of finished jobs are reused)

    @property
    def rows(self):
        return len(self.op[1])


class DecodeScheduler(object):
    """Caption requests from many threads through one encoder/decoder loop (see module docstring).

    Args:
        manifest: the captioner bundle's :class:`jetcap.runtime.manifest.Manifest`.
        runners: ``{"encoder": runner, "decoder_step": runner}``, activated; only the scheduler's thread
            calls them from now on.
        max_batch: rows per call (default: the bundle's ``axes.batch.max``).
        on_failure: ``on_failure(exception, traceback text)``, called on the loop's thread when the loop stops on an
            exception outside the per-request guards (a bug, a MemoryError): every request in flight or
            waiting has its error by then and later ones are refused (:class:`LoopClosed`).  Without it the
            loop keeps the message in ``failure`` only: never a traceback on stderr between log lines.

    A variant whose rows depend on each other (``int8-cpu``, :func:`jetcap.runtime.manifest.rows_independent`)
    must not be served by this loop: its requests would get captions that depend on their neighbours.
    """

    def __init__(self, manifest, runners, max_batch=None, on_failure=None):
        self.manifest = manifest
        self.on_failure = on_failure
        self.failure = None  # why the loop stopped on its own (None: running, or closed)
        self.encoder = runners["encoder"]
        self.step = runners["decoder_step"]
        self.protocol = DecoderProtocol.from_manifest(manifest)
        self.vocab = manifest.vocabulary()
        self.max_batch = max(1, int(max_batch or manifest.axes["batch"]["max"]))
        self.encoder_axes = batch_axes(manifest.graph("encoder")["outputs"])
        self.step_axes = batch_axes(manifest.graph("decoder_step")["outputs"])
        if self.encoder_axes is None or self.step_axes is None:
            raise UsageError("the bundle's encoder/decoder_step outputs have no batch axis: their calls cannot "
                             "be shared between requests (serve it with --no-batching)")
        self.topk = self.protocol.topk["k"] if self.protocol.topk else 0
        self.stats = {"encoder": BatchStats(self.max_batch), "decoder_step": BatchStats(self.max_batch)}
        self._waiting = collections.deque()
        self._admitting = []
        self._active = []
        self._carried = self.protocol.state_outputs  # {step output: step input}
        self._fetch = {True: list(self.protocol.fetch_topk or ()), False: list(self.protocol.fetch)}
        # what a step call asks the runner for, by the kinds of search in it (top-k or not): the carried
        # state and what those searches read, never the 10 000-wide distribution of top-k searches
        self._outputs = dict((kinds, self.protocol.step_outputs(kinds))
                             for kinds in (frozenset([True]), frozenset([False]), frozenset([True, False])))
        self._context = [name for name, _ in self.protocol.context]
        self._numbers = itertools.count()
        self._busy = 0.0  # the loop's time not waiting for work in finished iterations (see busy_seconds)
        self._iteration_began = None  # perf_counter() when the iteration in progress began; None: waiting
        self._clock = threading.Lock()  # the two above change together
        self.reruns = 0  # batched step calls that failed and were run again search by search
        self._context_key = None  # the jobs (and their rows) the cached context feed was built for
        self._context_feed = {}
        batch_first = all(self.protocol.batch_axes[name] == 0 for name in self._context)
        self._context_rows = ContextRows(self._context, self.max_batch) if batch_first and self._context else None
        # a runner that can keep inputs on its device (TensorRT) gets the context rows copied there only when
        # a search joins, leaves or changes its number of rows, not with every step (351 KB a row for a
        # COCO-sized captioner)
        device_inputs = getattr(self.step, "device_inputs", None)
        self._device_context = device_inputs(self._context) if device_inputs is not None and self._context else None
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="jetcap-decode-loop")
        self._thread.daemon = True
        self._thread.start()

    # -- the requests' side -------------------------------------------------------------------------
    def caption(self, images, beam_size=1, max_len=None):
        """Hypotheses for ``images`` (float32 NCHW), as :meth:`CaptionPipeline.caption` gives them."""
        request = self.submit(images, beam_size, max_len)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.results

    def submit(self, images, beam_size=1, max_len=None, on_done=None):
        """Queue ``images`` and return at once: a request whose ``done`` event is set when all are
        captioned, with ``results`` (the hypotheses), ``error`` (the first failure, else None) and
        ``finished`` (its time).  ``on_done()``, when given, is called then, on the loop's thread: it must
        return at once and never raise (wake the caller up, no more: what it raised would stop the loop,
        which then fails every request in flight).  A request of no images is done at once, without
        ``on_done``."""
        beam_size = int(beam_size)
        check_beam(beam_size, self.max_batch)
        max_len = int(max_len or self.manifest.decoding.get("max_len", 20))
        images = np.ascontiguousarray(images, dtype=np.float32)
        request = _Request(len(images), on_done)
        if not len(images):
            return request
        reserve = min(beam_size, self.max_batch)
        with self._cond:
            if self._closed:
                raise LoopClosed(self.failure or "the decode loop is closed")
            for i in range(len(images)):
                self._waiting.append(_Job(request, i, images[i:i + 1], beam_size, max_len, reserve,
                                          next(self._numbers)))
            self._cond.notify()
        return request

    def close(self, wait_seconds=5.0):
        """Stop the loop after the searches in flight; requests still waiting get an error.  True when
        the loop has stopped; False when a search was still running after ``wait_seconds`` (its runners
        must then not be released under it)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(wait_seconds)
        if self._thread.is_alive():
            return False
        if self._device_context is not None:
            self._device_context.close()
        return True

    @property
    def busy_seconds(self):
        """Seconds the loop spent not waiting for work, the iteration in progress included (a graph call
        that never returns shows as time growing with the clock, not as an idle loop); its graph calls'
        share: ``stats``."""
        with self._clock:
            began, busy = self._iteration_began, self._busy
        return busy + (time.perf_counter() - began if began is not None else 0.0)

    def iteration_seconds(self):
        """How long the iteration in progress (an encoder call and a step) has run; 0.0 while waiting for
        work.  Milliseconds when healthy: seconds mean a graph call that does not return."""
        began = self._iteration_began
        return time.perf_counter() - began if began is not None else 0.0

    # -- the loop -----------------------------------------------------------------------------------
    def _loop(self):
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 -- a bug or MemoryError outside the per-request guards:
            self._end_iteration()
            trace = traceback.format_exc()
            with self._cond:  # from now on submit() refuses, with the reason
                self.failure = "the decode loop stopped: {}: {}".format(type(exc).__name__, exc)
                self._closed = True
            try:
                if self.on_failure is not None:  # the owner knows (e.g. the server turns unready) before any
                    self.on_failure(exc, trace)  # request it held is answered
            except Exception as hook:  # noqa: BLE001 -- its own failure must not leave a request hanging: said
                self.failure += " (and on_failure raised {}: {})".format(type(hook).__name__, hook)  # in every answer
            finally:
                self._fail_everyone()  # every request waiting on this thread is answered, none hangs

    def _fail_everyone(self):
        with self._cond:
            self._closed = True
            jobs = list(self._waiting) + self._admitting + self._active
            self._waiting, self._admitting, self._active = collections.deque(), [], []
        error = JetcapError(self.failure)
        for job in jobs:
            if not job.request.done.is_set():
                job.request.finish(job.index, error=error)

    def _run(self):
        while True:
            with self._cond:
                while not self._waiting and not self._active and not self._closed:
                    self._cond.wait()
                if self._closed and not self._active:
                    left, self._waiting = list(self._waiting), collections.deque()
                    break
                admitted = self._admit()
                with self._clock:
                    self._iteration_began = time.perf_counter()
            if admitted:
                self._admitting = admitted  # neither waiting nor active while encoded
                self._encode(admitted)
                self._admitting = []
            if self._active:
                self._step_all()
            self._end_iteration()
        for job in left:
            job.request.finish(job.index, error=LoopClosed("the decode loop is closed"))

    def _end_iteration(self):
        with self._clock:
            if self._iteration_began is not None:
                self._busy += time.perf_counter() - self._iteration_began
            self._iteration_began = None

    def _admit(self):
        """Waiting jobs that fit beside the rows in flight (first come first served); under the lock."""
        used = sum(job.reserve for job in self._active)
        admitted = []
        while self._waiting and not self._closed:
            job = self._waiting[0]
            if used + job.reserve > self.max_batch and (self._active or admitted):
                break
            admitted.append(self._waiting.popleft())
            used += job.reserve
        return admitted

    def _encode(self, jobs):
        started, clock = time.time(), time.perf_counter()
        try:
            encoded = self.encoder.infer({"images": np.concatenate([job.image for job in jobs])})
        except Exception:  # noqa: BLE001 -- one bad image must not fail its neighbours: encode each alone
            encoded = None
        self.stats["encoder"].record(len(jobs), len(jobs), [started - job.submitted for job in jobs],
                                     time.perf_counter() - clock)
        for i, job in enumerate(jobs):
            try:
                outputs = self._encode_alone(job) if encoded is None else self._rows_of(encoded, i)
                job.image = None
                self._start(job, outputs)
            except Exception as exc:  # handed to the request's thread, which raises it as its own
                job.request.finish(job.index, error=exc)

    def _encode_alone(self, job):
        clock = time.perf_counter()
        try:
            return self.encoder.infer({"images": job.image})
        finally:
            self.stats["encoder"].add_run(time.perf_counter() - clock)

    def _rows_of(self, encoded, i):
        return dict((name, np.take(value, [i], axis=self.encoder_axes[name])) for name, value in encoded.items())

    def _start(self, job, encoded):
        initial = self.protocol.initial(encoded)
        # the context is the image's, the same for every hypothesis: kept once, repeated when laid out
        job.context = dict((name, initial.pop(name)) for name in self._context)
        for name, value in job.context.items():  # one image, one row: what keys its rows (see _feed)
            if value.shape[self.protocol.batch_axes[name]] != 1:
                raise ValueError("context input {!r} of one image has {} rows".format(
                    name, value.shape[self.protocol.batch_axes[name]]))
        job.session = HostDecoderSession(self.step, initial, self.protocol)
        if job.beam_size == 1:
            job.search = decoding.greedy_search(1, self.vocab.start_id, self.vocab.end_id, job.max_len, self.topk)
        else:
            job.search = decoding.beam_steps(job.beam_size, self.vocab.start_id, self.vocab.end_id, job.max_len,
                                             topk=self.topk, topk_vocab=self.protocol.vocab_size)
        self._advance(job, None)
        if job.op is not None:
            self._active.append(job)

    def _advance(self, job, answer):
        """Resume ``job``'s search with ``answer`` up to its next step (reorders applied on the way); a
        finished search answers its request and leaves ``job.op`` None."""
        try:
            while True:
                op = job.search.send(answer)
                if op[0] == decoding.STEP:
                    job.op, job.ready = op, time.time()
                    return
                job.session.reorder(op[1])
                answer = None
        except StopIteration as stop:
            job.op = None
            result = stop.value
            try:
                result = decoding.check_finite(result[0] if isinstance(result, list) else result)
            except JetcapError as exc:
                job.request.finish(job.index, error=exc)
                return
            job.request.finish(job.index, result)
        except Exception as exc:  # noqa: BLE001 -- a failed search fails its own request only
            job.op = None
            job.request.finish(job.index, error=exc)

    def _feed(self, jobs):
        """``(feed, context, layout, jobs)`` of a step call over ``jobs``' rows: the word and state inputs;
        the context inputs (features and the like, fixed per image), laid out by :class:`ContextRows` when
        every context input is batch first, else concatenated again when the jobs or their rows changed;
        a key of what the context holds (equal keys, equal contents); and the jobs in row order."""
        protocol = self.protocol
        axes = protocol.batch_axes
        # a job is one image: its context rows are copies of that image's row, whatever its beam reordered,
        # so the job and its number of rows say what they hold
        keys = [(job.number, job.rows) for job in jobs]
        if self._context_rows is not None:
            context, jobs = self._context_rows.arrange(jobs, keys, self._context_of)
            layout = self._context_rows.layout
        else:
            if tuple(keys) != self._context_key:
                rows = [self._context_of(job) for job in jobs]
                self._context_feed = dict((name, _joined([r[name] for r in rows], axes[name])) for name in self._context)
                self._context_key = tuple(keys)
            context, layout = self._context_feed, self._context_key
        feed = {protocol.word_input: np.concatenate([job.op[1] for job in jobs]).astype(np.int64)}
        for name in self._carried.values():
            feed[name] = _joined([job.session.state[name] for job in jobs], axes[name])
        return feed, context, layout, jobs

    def _context_of(self, job):
        """``{name: job's context rows}``: its image's row, once per row of the search."""
        axes = self.protocol.batch_axes
        return dict((name, value if job.rows == 1 else np.repeat(value, job.rows, axis=axes[name]))
                    for name, value in job.context.items())

    def _step_all(self):
        groups, group, rows = [], [], 0
        for job in self._active:
            if group and rows + job.rows > self.max_batch:
                groups.append(group)
                group, rows = [], 0
            group.append(job)
            rows += job.rows
        groups.append(group)
        for group in groups:
            self._step(group)
        self._active = [job for job in self._active if job.op is not None]

    def _step(self, jobs):
        started = time.time()
        try:
            feed, context, layout, jobs = self._feed(jobs)
            outputs = self._outputs[frozenset(job.op[2] for job in jobs)]
            clock = time.perf_counter()
            if self._device_context is not None:  # the context stays on the device while its rows do
                out = self.step.infer_device(feed=feed, device_inputs=self._device_context.get(context, layout),
                                             fetch=outputs)
            else:
                feed.update(context)
                out = self.step.infer(feed, outputs)
        except Exception as exc:  # noqa: BLE001 -- handed to the request's thread, which raises it
            if len(jobs) > 1:  # one bad search must not fail its neighbours: run each alone
                self.reruns += 1
                for job in jobs:
                    self._step([job])
            else:
                jobs[0].op = None
                jobs[0].request.finish(jobs[0].index, error=exc)
            return
        self.stats["decoder_step"].record(len(jobs), sum(job.rows for job in jobs),
                                          [started - job.ready for job in jobs], time.perf_counter() - clock)
        protocol = self.protocol
        start = 0
        for job in jobs:
            rows = slice(start, start + job.rows)
            start += job.rows
            mine = dict((name, out[name][(slice(None),) * self.step_axes[name] + (rows,)].copy())  # its own rows
                        for name in list(self._carried) + self._fetch[job.op[2]])
            for output, name in self._carried.items():
                job.session.state[name] = mine.pop(output)
            self._advance(job, protocol.split_topk(mine) if job.op[2] else protocol.split(mine))
