"""Real runners wrapped to record what each call asks of them (which outputs, which copies), or to fail
as a bug or a hung device would."""
import threading

import numpy as np


class AskedOutputs(object):
    """The real step runner, recording the outputs each call asks for (sorted; None for all of them)."""

    def __init__(self, runner):
        self.runner = runner
        self.asked = []

    def infer(self, feed, outputs=None):
        self.asked.append(None if outputs is None else sorted(outputs))
        return self.runner.infer(feed, outputs)


class AnsweringNothing(object):
    """The real step runner, whose outputs are lost: the decode loop fails outside its per-request guards
    (reading the outputs fails), as a bug or a MemoryError there would."""

    def __init__(self, runner):
        self.runner = runner

    def infer(self, feed, outputs=None):
        self.runner.infer(feed, outputs)
        return {}


class Blocking(object):
    """The real step runner behind a call that blocks until ``release`` is set, as a hung device would."""

    def __init__(self, runner):
        self.runner = runner
        self.entered = threading.Event()
        self.release = threading.Event()

    def infer(self, feed, outputs=None):
        self.entered.set()
        self.release.wait(60)
        return self.runner.infer(feed, outputs)


class _HostBuffer(object):
    """A "device" buffer in host memory: the array it was last given."""

    def __init__(self, owner, shape, dtype):
        self.owner, self.shape, self.dtype, self.array = owner, tuple(shape), dtype, None
        owner.live.add(self)

    def free(self):
        self.array = None
        self.owner.live.discard(self)


class _Tensor(object):
    def __init__(self, dtype):
        self.dtype = dtype


class HostAsDevice(object):
    """The real ONNX Runtime step runner behind the device-input calls of a TensorRT runner (``tensor``,
    ``new_buffer``, ``upload``, ``infer_device``, ``device_inputs``), its "device" being host memory.

    No GPU exists where the suite runs; this drives the decode loop's device-input branch and jetcap's
    real :class:`jetcap.runtime.backends.tensorrt.DeviceInputs` over a real graph, and counts the copies
    to the "device".  The same loop over real TensorRT engines is tested where they exist."""

    def __init__(self, runner):
        self.runner = runner
        self.uploads = 0  # arrays copied to the "device"
        self.calls = 0  # infer_device calls
        self.live = set()  # "device" buffers not freed
        self.dtypes = dict((t["name"], np.dtype(t["dtype"])) for t in runner.io_spec["inputs"])
        self.word_input = [t["name"] for t in runner.io_spec["inputs"] if list(t["shape"]) == ["batch"]][0]

    def tensor(self, name):
        return _Tensor(self.dtypes[name])

    def new_buffer(self, shape, dtype):
        return _HostBuffer(self, shape, dtype)

    def upload(self, buffer, array):
        buffer.array, buffer.shape = np.array(array, copy=True), array.shape
        self.uploads += 1
        return buffer

    def device_inputs(self, names):
        from jetcap.runtime.backends.tensorrt import DeviceInputs

        return DeviceInputs(self, names)

    def infer_device(self, feed=None, device_inputs=None, device_outputs=None, fetch=None):
        assert not device_outputs
        self.calls += 1
        rows = len(feed[self.word_input])
        for name, buffer in (device_inputs or {}).items():  # a stale context would fail or be broadcast
            assert buffer.array is not None and len(buffer.array) == rows, (name, buffer.shape, rows)
        merged = dict(feed or {})
        merged.update((name, buffer.array) for name, buffer in (device_inputs or {}).items())
        return self.runner.infer(merged, fetch)
