"""Iteration-level batching: concurrent requests share each encoder and decoder-step call (Python 3.6).

A batch-1 decoder step is memory-bound (a COCO-sized step reads ~43 MB of weights for ~22 MFLOP), so
eight captions in flight cost little more per step than one -- if their steps run *together*.  LLM
servers schedule token steps this way; here a :class:`BatchingRunner` wraps one graph's runner and is
shared by every request thread: each thread runs jetcap's ordinary search code (greedy or beam,
unchanged, so captions are those of a single request), and whatever ``infer`` calls are waiting when
the runner is free are concatenated along each tensor's batch axis (from the manifest) into one call,
up to the bundle's max batch, and split back.  A new request joins at the next step; finished rows
leave because their search stops calling; calls are taken first-come first-served, so a request waits
behind at most the step in progress plus one full batch.

Requests between two steps are busy in Python (the search, the next feed), and on a small CPU with one
interpreter lock their steps drift apart, so the shared calls stay nearly empty (measured: 1.5 rows per
step with 8 clients).  So a request decoding declares itself (:meth:`BatchingRunner.participant`), and
the runner, holding fewer calls than there are participants, waits a short ``gather`` window
(default 3 ms) for the others: the requests fall into lockstep.  Nobody waits for a batch to fill
otherwise (a lone request runs at once).
"""
import contextlib
import collections
import threading
import time

import numpy as np

from jetcap.errors import UsageError


def batch_axes(tensors):
    """``{name: index of "batch"}`` of a manifest tensor list; None when a tensor has no batch axis."""
    out = {}
    for tensor in tensors:
        shape = list(tensor["shape"])
        if "batch" not in shape:
            return None
        out[tensor["name"]] = shape.index("batch")
    return out


class _Call(object):
    __slots__ = ("feed", "rows", "done", "result", "error", "submitted", "started")

    def __init__(self, feed, rows):
        self.feed = feed
        self.rows = rows
        self.done = threading.Event()
        self.result = None
        self.error = None
        self.submitted = time.time()
        self.started = None


class BatchStats(object):
    """What ``/metrics`` shows of one batching runner: calls, rows and requests per call, queue time."""

    def __init__(self, max_batch):
        self.max_batch = int(max_batch)
        self.calls = 0
        self.rows = 0
        self.requests = 0
        self.queue_seconds = 0.0
        self.max_queue_seconds = 0.0
        self._lock = threading.Lock()

    def record(self, requests, rows, queue_seconds):
        with self._lock:
            self.calls += 1
            self.rows += rows
            self.requests += requests
            self.queue_seconds += sum(queue_seconds)
            self.max_queue_seconds = max([self.max_queue_seconds] + list(queue_seconds))

    def snapshot(self):
        with self._lock:
            calls = max(1, self.calls)
            return {"calls": self.calls, "rows": self.rows, "requests": self.requests,
                    "mean_rows": self.rows / float(calls), "occupancy": self.rows / float(calls * self.max_batch),
                    "mean_queue_ms": 1000.0 * self.queue_seconds / max(1, self.requests),
                    "max_queue_ms": 1000.0 * self.max_queue_seconds}


class BatchingRunner(object):
    """A runner (``infer(feed) -> {output: array}``) whose concurrent calls run as one batched call.

    Args:
        runner: the activated runner of one graph (ONNX Runtime or TensorRT); only this object's
            worker thread calls it, so a TensorRT execution context is never shared.
        graph: the manifest's ``{inputs, outputs}`` of that graph (batch axes are read from it).
        max_batch: the most rows one call may hold (the bundle's ``axes.batch.max``).
        name: for error messages.
        gather: seconds the runner waits for the calls of declared participants (default 3 ms).
    """

    def __init__(self, runner, graph, max_batch, name="graph", gather=0.003):
        self.runner = runner
        self.gather = float(gather)
        self._participants = 0
        self.name = name
        self.max_batch = max(1, int(max_batch))
        self.in_axes = batch_axes(graph["inputs"])
        self.out_axes = batch_axes(graph["outputs"])
        self.input_names = [t["name"] for t in graph["inputs"]]
        self.output_names = [t["name"] for t in graph["outputs"]]
        self.stats = BatchStats(self.max_batch)
        self._pending = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="jetcap-batch-{}".format(name))
        self._thread.daemon = True
        self._thread.start()

    @property
    def batchable(self):
        return self.in_axes is not None and self.out_axes is not None

    def infer(self, feed):
        """Run ``feed`` (possibly together with other threads' feeds); returns this feed's outputs."""
        if self.in_axes is not None:
            first = self.input_names[0]
            rows = int(np.shape(feed[first])[self.in_axes[first]]) if first in feed else 0
        else:
            rows = self.max_batch  # nothing to merge along: every call runs alone
        call = _Call(feed, rows)
        with self._cond:
            if self._closed:
                raise UsageError("{}: the batching runner is closed".format(self.name))
            self._pending.append(call)
            self._cond.notify()
        call.done.wait()
        if call.error is not None:
            raise call.error
        return call.result

    @contextlib.contextmanager
    def participant(self):
        """Within the block the calling request will keep calling :meth:`infer` (a decoding search): the
        runner waits up to ``gather`` for its call before running the others without it."""
        with self._cond:
            self._participants += 1
        try:
            yield
        finally:
            with self._cond:
                self._participants -= 1
                self._cond.notify_all()

    def close(self, wait_seconds=5.0):
        """Stop the worker thread after the calls already waiting."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(wait_seconds)

    # -- the worker ---------------------------------------------------------------------------------
    def _take(self):
        """The next calls to run together: first come first served, up to max_batch rows."""
        batch = [self._pending.popleft()]
        rows = batch[0].rows
        while self.batchable and self._pending and rows + self._pending[0].rows <= self.max_batch:
            call = self._pending.popleft()
            batch.append(call)
            rows += call.rows
        return batch, rows

    def _loop(self):
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                deadline = time.time() + self.gather
                while (self.batchable and not self._closed and len(self._pending) < self._participants
                       and sum(c.rows for c in self._pending) < self.max_batch):
                    remaining = deadline - time.time()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch, rows = self._take()
            started = time.time()
            for call in batch:
                call.started = started
            try:
                self._run(batch)
            finally:
                self.stats.record(len(batch), rows, [started - c.submitted for c in batch])
                for call in batch:
                    call.done.set()

    def _run(self, batch):
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        try:
            feed = dict((name, np.concatenate([np.asarray(c.feed[name]) for c in batch], axis=self.in_axes[name]))
                        for name in self.input_names)
            out = self.runner.infer(feed)
        except Exception:  # noqa: BLE001 -- one bad feed must not fail its neighbours: run each alone
            for call in batch:
                self._run_alone(call)
            return
        start = 0
        for call in batch:
            stop = start + call.rows
            call.result = dict((name, np.ascontiguousarray(np.take(value, np.arange(start, stop),
                                                                   axis=self.out_axes[name])))
                               for name, value in out.items())
            start = stop

    def _run_alone(self, call):
        try:
            call.result = self.runner.infer(call.feed)
        except Exception as exc:  # handed to the calling thread, which raises it as its own
            call.error = exc


def batching_runners(manifest, runners):
    """``{graph: BatchingRunner}`` over a bundle's activated ``runners`` (captioner: encoder and step)."""
    max_batch = int(manifest.axes["batch"]["max"])
    return dict((name, BatchingRunner(runner, manifest.graph(name), max_batch, name=name))
                for name, runner in runners.items())
