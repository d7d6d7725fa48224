"""TensorRT backend: run a built engine with pycuda-managed device buffers (Python 3.6).

:class:`TensorRTRunner` deserializes one engine, keeps a device buffer per I/O tensor (grown when a
larger shape arrives), sets the input shapes, runs the engine with the call of its TensorRT API
generation and copies the outputs back.  :meth:`TensorRTRunner.infer_device` also lets inputs come from
device buffers and outputs go to device buffers, which :class:`TensorRTDecoderSession` uses to keep
the captioner's LSTM state (h, c) and the image features on the GPU for the whole decoding loop: each
step uploads only the previous words and downloads only the log-probabilities and attention.

What differs between TensorRT releases lives in the small functions below keyed by the API
generation (:mod:`jetcap.runtime.backends.trt_api`); the TensorRT 8.0-8.4 binding-index calls, which
the 10.x type stubs no longer know, are isolated in the ``_legacy_*`` functions.

tensorrt and pycuda are imported on :meth:`Runner.activate`, never at import time.
"""
import collections
import contextlib
import weakref
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from jetcap.errors import JetcapError, UsageError
from jetcap.runtime.backends import trt_api
from jetcap.runtime.backends.base import Runner
from jetcap.util.lazy import require

if TYPE_CHECKING:  # mypy checks the TensorRT calls against the tensorrt stubs
    import tensorrt as trt
else:
    trt = trt_api.LazyTensorRT()

IOTensor = collections.namedtuple("IOTensor", ["name", "index", "is_input", "dtype"])
IOTensor.__doc__ = """One engine I/O tensor: ``name``, binding ``index`` (position among the engine's
I/O tensors), ``is_input`` and the numpy ``dtype`` the engine uses (int64 ids may be int32 in 8.x)."""


class TensorRTError(JetcapError):
    """An engine that cannot be loaded or run (wrong TensorRT/GPU, shape outside its profile, ...)."""


# -- pure helpers (tested without a GPU) ----------------------------------------------------------
def volume(shape):
    """Number of elements of ``shape``."""
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def engine_input_array(array, dtype, name="input"):
    """``array`` as a C-contiguous array of the engine's ``dtype``.

    Integer ids narrowed from int64 to int32 (TensorRT 8.x has no int64 I/O) are range-checked;
    any other dtype change is refused (UsageError) rather than silently converted.
    """
    array = np.asarray(array)
    dtype = np.dtype(dtype)
    if array.dtype == dtype:
        return np.ascontiguousarray(array)
    if array.dtype.kind in "iu" and dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise UsageError("input {} has values outside the engine's {} range".format(name, dtype))
        return np.ascontiguousarray(array, dtype=dtype)
    raise UsageError("input {} has dtype {}, the engine expects {}".format(name, array.dtype, dtype))


def row_copy_plan(rows, row_bytes, outer=1, src_rows=None):
    """Copies that gather ``rows`` of a row-major tensor into a new one: ``[(dst_offset, src_offset, nbytes)]``.

    Consecutive source rows are merged into one copy.  ``rows`` may repeat and reorder rows (beam search).
    For a batch axis that is not the first (an ``nn.LSTM`` state is ``(layers, batch, dim)``), ``outer``
    is the product of the dimensions before it, ``src_rows`` the source's batch size and ``row_bytes``
    the bytes of one batch row within one outer index.
    """
    rows = [int(r) for r in rows]
    src_rows = len(rows) if src_rows is None else int(src_rows)
    plan = []  # type: List[Tuple[int, int, int]]
    for block in range(int(outer)):
        for position, row in enumerate(rows):
            if row < 0:
                raise UsageError("row index {} is negative".format(row))
            dst = (block * len(rows) + position) * row_bytes
            src = (block * src_rows + row) * row_bytes
            if plan and plan[-1][0] + plan[-1][2] == dst and plan[-1][1] + plan[-1][2] == src:
                plan[-1] = (plan[-1][0], plan[-1][1], plan[-1][2] + row_bytes)
            else:
                plan.append((dst, src, row_bytes))
    return plan


def check_output_shape(name, shape):
    """``shape`` as a tuple; TensorRTError when TensorRT left a dimension unresolved (-1)."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise TensorRTError("output {} has an unresolved shape {} (data-dependent shapes are not supported)".format(
            name, shape))
    return shape


# -- the TensorRT calls, per API generation -------------------------------------------------------
def engine_io_tensors(engine, generation):
    # type: (trt.ICudaEngine, str) -> List[IOTensor]
    """The engine's I/O tensors in binding order."""
    if generation == trt_api.BINDINGS:
        return _legacy_io_tensors(engine)
    tensors = []
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        tensors.append(IOTensor(name, index, is_input, np.dtype(trt.nptype(engine.get_tensor_dtype(name)))))
    return tensors


def engine_device_memory(engine):
    # type: (trt.ICudaEngine) -> int
    """Device memory an execution context of ``engine`` allocates (activations/scratch), in bytes."""
    if hasattr(engine, "device_memory_size_v2"):  # 10.1+; device_memory_size is gone in 11
        return int(engine.device_memory_size_v2)
    return int(engine.device_memory_size)


def set_input_shape(context, generation, tensor, shape):
    # type: (trt.IExecutionContext, str, IOTensor, Tuple[int, ...]) -> bool
    """Set the runtime shape of input ``tensor``; False when TensorRT refuses it (outside the profile)."""
    if generation == trt_api.BINDINGS:
        return _legacy_set_binding_shape(context, tensor.index, shape)
    return bool(context.set_input_shape(tensor.name, tuple(int(d) for d in shape)))


def output_shape(context, generation, tensor):
    # type: (trt.IExecutionContext, str, IOTensor) -> Tuple[int, ...]
    """Shape of output ``tensor`` for the input shapes set on ``context``."""
    if generation == trt_api.BINDINGS:
        return check_output_shape(tensor.name, _legacy_binding_shape(context, tensor.index))
    dims = context.get_tensor_shape(tensor.name)
    return check_output_shape(tensor.name, tuple(dims[axis] for axis in range(len(dims))))


def execute(context, generation, tensors, addresses, stream_handle):
    # type: (trt.IExecutionContext, str, Sequence[IOTensor], Dict[str, int], int) -> bool
    """Enqueue the engine on ``stream_handle`` with ``addresses`` ``{tensor name: device pointer}``."""
    if generation == trt_api.BINDINGS:
        bindings = [0] * len(tensors)
        for tensor in tensors:
            bindings[tensor.index] = addresses[tensor.name]
        return _legacy_execute_v2(context, bindings, stream_handle)
    for tensor in tensors:
        context.set_tensor_address(tensor.name, addresses[tensor.name])
    return bool(context.execute_async_v3(stream_handle))


# TensorRT 8.0-8.4 only (JetPack 4.6 / the Nano): the binding-index API was removed in 10.0, so the
# 10.x stubs mypy checks against do not know these names; they are reached through getattr here and
# nowhere else.
def _legacy_io_tensors(engine):
    # type: (Any) -> List[IOTensor]
    tensors = []
    for index in range(int(getattr(engine, "num_bindings"))):
        name = getattr(engine, "get_binding_name")(index)
        is_input = bool(getattr(engine, "binding_is_input")(index))
        dtype = np.dtype(trt.nptype(getattr(engine, "get_binding_dtype")(index)))
        tensors.append(IOTensor(name, index, is_input, dtype))
    return tensors


def _legacy_set_binding_shape(context, index, shape):
    # type: (Any, int, Tuple[int, ...]) -> bool
    return bool(getattr(context, "set_binding_shape")(index, tuple(int(d) for d in shape)))


def _legacy_binding_shape(context, index):
    # type: (Any, int) -> Tuple[int, ...]
    return tuple(getattr(context, "get_binding_shape")(index))


def _legacy_execute_v2(context, bindings, stream_handle):
    # type: (Any, List[int], int) -> bool
    return bool(getattr(context, "execute_async_v2")(bindings=bindings, stream_handle=stream_handle))


# -- CUDA memory (pycuda) -------------------------------------------------------------------------
class CudaDevice(object):
    """The GPU's primary CUDA context (the one TensorRT's runtime uses), a stream and copy helpers.

    The context is pushed around each use (:meth:`current`), so a runner may be called from any thread.
    """

    def __init__(self, device_index=0):
        self.cuda = require("pycuda.driver")
        self.cuda.init()
        self.device = self.cuda.Device(int(device_index))
        self.context = self.device.retain_primary_context()
        with self.current():
            self.stream = self.cuda.Stream()

    @contextlib.contextmanager
    def current(self):
        """Make the context current for the block."""
        self.context.push()
        try:
            yield self
        finally:
            self.cuda.Context.pop()

    def free_memory(self):
        """``(free, total)`` device memory in bytes."""
        with self.current():
            return tuple(self.cuda.mem_get_info())

    def release(self):
        """Destroy the stream and drop this object's reference to the primary context.

        pycuda releases a context only where it is current (from another thread than the one that
        retained it, ``detach`` skips the release with nothing but a warning), so it is pushed first;
        ``detach`` of the current context also pops it.
        """
        with self.current():
            self.stream = None
        self.context.push()
        self.context.detach()


class DeviceBuffer(object):
    """A device allocation and the shape/dtype of the tensor it currently holds.

    Reshaping to something larger than the allocation reallocates (the contents are then undefined).
    """

    def __init__(self, device, shape, dtype):
        self.device = device
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(d) for d in shape)
        self.capacity = max(1, self.nbytes)
        self.allocation = device.cuda.mem_alloc(self.capacity)

    @property
    def nbytes(self):
        return volume(self.shape) * self.dtype.itemsize

    @property
    def ptr(self):
        """The device address."""
        return int(self.allocation)

    @property
    def row_bytes(self):
        """Bytes of one row (leading dimension)."""
        return volume(self.shape[1:]) * self.dtype.itemsize

    def reshape(self, shape, dtype=None):
        """Hold a tensor of ``shape`` (and ``dtype``); grows the allocation when needed."""
        self.shape = tuple(int(d) for d in shape)
        if dtype is not None:
            self.dtype = np.dtype(dtype)
        if self.nbytes > self.capacity:
            with self.device.current():
                # the old allocation is gone before the new one exists: a failed mem_alloc (out of memory)
                # leaves no freed address behind that a later copy could write through
                old, self.allocation, self.capacity = self.allocation, None, 0
                if old is not None:
                    old.free()
                self.allocation = self.device.cuda.mem_alloc(self.nbytes)
                self.capacity = self.nbytes
        return self

    def free(self):
        """Release the allocation, with the device's context current: pycuda frees an allocation from a
        thread where its context is not current only with a warning, leaving the memory allocated (a
        request thread dropping a decoder session would leak its buffers on every request)."""
        allocation, self.allocation = self.allocation, None
        if allocation is not None:
            with self.device.current():
                allocation.free()

    def __del__(self):
        # a buffer dropped without free() (a decoder session nobody closed) is freed the same way
        if getattr(self, "allocation", None) is not None:
            self.free()


class HostStaging(object):
    """Page-locked host arrays (one per tensor name) for asynchronous copies, grown when needed."""

    def __init__(self, device):
        self.device = device
        self.arrays = {}

    def get(self, name, shape, dtype):
        """A page-locked array of ``shape``/``dtype`` (a view into a reusable buffer)."""
        dtype = np.dtype(dtype)
        count = volume(shape)
        current = self.arrays.get(name)
        if current is None or current.dtype != dtype or current.size < count:
            current = self.device.cuda.pagelocked_empty(max(count, 1), dtype)
            self.arrays[name] = current
        return current[:count].reshape(shape)


class TensorRTRunner(Runner):
    """Runs one serialized TensorRT engine.

    Args:
        engine_path: the ``.engine`` file (built by :func:`jetcap.runtime.engine.build_engines`).
        io_spec: the manifest's ``{inputs, outputs}`` of the graph (names must match the engine's).
        name: readable name for messages (default ``tensorrt:<engine_path>``).
        device_index: CUDA device (default 0).
        verbose: TensorRT's verbose log.
    Attributes (after activation):
        device_memory_bytes: device memory the execution context allocated.
        generation: the TensorRT API generation in use.
    """

    backend = "tensorrt"

    def __init__(self, engine_path, io_spec, name=None, device_index=0, verbose=False):
        super(TensorRTRunner, self).__init__(name or "tensorrt:" + str(engine_path), io_spec)
        self.engine_path = str(engine_path)
        self.device_index = device_index
        self.verbose = verbose
        self.device = None  # type: Optional[CudaDevice]
        self.engine = None  # type: Any
        self.context = None  # type: Any
        self.generation = None  # type: Optional[str]
        self.tensors = []  # type: List[IOTensor]
        self.buffers = {}  # type: Dict[str, DeviceBuffer]
        self.lent = weakref.WeakSet()  # type: Any  # buffers handed out by new_buffer, freed on deactivate
        self.staging = None  # type: Optional[HostStaging]
        self.device_memory_bytes = None  # type: Optional[int]

    # -- lifecycle ------------------------------------------------------------------------------
    def activate_impl(self):
        self.generation = trt_api.api_generation(trt_api.tensorrt_version())
        with open(self.engine_path, "rb") as handle:
            data = handle.read()
        self.device = CudaDevice(self.device_index)
        try:
            with self.device.current():
                runtime = trt.Runtime(trt_api.get_logger(self.verbose))
                engine = runtime.deserialize_cuda_engine(data)
                if engine is None:
                    raise TensorRTError(
                        "TensorRT cannot load {} (built by another TensorRT version or for another GPU?)".format(
                            self.engine_path), hint="rebuild it here: jetcap build BUNDLE --force")
                self.engine = engine
                self.device_memory_bytes = engine_device_memory(engine)
                self.context = engine.create_execution_context()
                self.tensors = engine_io_tensors(engine, self.generation)
            self._check_names()
        except BaseException:
            self.deactivate_impl()
            raise
        self.staging = HostStaging(self.device)

    def _check_names(self):
        engine_inputs = sorted(t.name for t in self.tensors if t.is_input)
        engine_outputs = sorted(t.name for t in self.tensors if not t.is_input)
        if engine_inputs != sorted(self.input_names) or engine_outputs != sorted(self.output_names):
            raise TensorRTError("{}: engine I/O {} / {} does not match the manifest's {} / {}".format(
                self.name, engine_inputs, engine_outputs, sorted(self.input_names), sorted(self.output_names)),
                hint="rebuild the engine from this bundle")

    def deactivate_impl(self):
        if self.device is None:
            return
        with self.device.current():
            for buffer in list(self.buffers.values()) + list(self.lent):
                buffer.free()
            self.buffers = {}
            self.lent = weakref.WeakSet()
            self.staging = None
            self.context = None
            self.engine = None
        self.device.release()
        self.device = None

    # -- buffers --------------------------------------------------------------------------------
    def tensor(self, name):
        """The :class:`IOTensor` called ``name``."""
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise UsageError("{} has no tensor {!r}".format(self.name, name))

    def new_buffer(self, shape, dtype):
        """A fresh :class:`DeviceBuffer` on this runner's device.

        Freed by its ``free()``, when garbage-collected, or at the latest when this runner is deactivated.
        """
        with self._current():
            buffer = DeviceBuffer(self._device(), shape, dtype)
        self.lent.add(buffer)
        return buffer

    def device_output(self, name):
        """This runner's own device buffer of output ``name`` (valid until the next run)."""
        if name not in self.buffers:
            raise UsageError("{}: output {!r} has not been computed yet".format(self.name, name))
        return self.buffers[name]

    def upload(self, buffer, array):
        """Copy host ``array`` into device ``buffer`` (reshaped to the array) and wait."""
        device = self._device()
        with device.current():
            array = np.ascontiguousarray(array)
            buffer.reshape(array.shape, array.dtype)
            host = self._staging().get("upload:", array.shape, array.dtype)
            np.copyto(host, array)
            device.cuda.memcpy_htod_async(buffer.ptr, host, device.stream)
            device.stream.synchronize()
        return buffer

    def download(self, buffer):
        """A host copy of device ``buffer``."""
        device = self._device()
        with device.current():
            host = self._staging().get("download:", buffer.shape, buffer.dtype)
            device.cuda.memcpy_dtoh_async(host, buffer.ptr, device.stream)
            device.stream.synchronize()
            return host.copy()

    def gather_rows(self, dst, src, rows, axis=0):
        """Fill ``dst`` with rows ``rows`` of ``src`` along batch ``axis`` (device to device; rows may
        repeat) and wait."""
        device = self._device()
        rows = [int(r) for r in rows]
        shape = tuple(src.shape)
        size = shape[axis] if len(shape) > axis else 0
        if rows and max(rows) >= size:
            raise UsageError("row {} out of range for a tensor of {} rows".format(max(rows), size))
        if dst.ptr == src.ptr:
            raise UsageError("gather_rows needs distinct source and destination buffers")
        outer = int(np.prod(shape[:axis], dtype=np.int64)) if axis else 1
        row_bytes = int(np.prod(shape[axis + 1:], dtype=np.int64)) * np.dtype(src.dtype).itemsize
        with device.current():
            dst.reshape(shape[:axis] + (len(rows),) + shape[axis + 1:], src.dtype)
            for dst_offset, src_offset, nbytes in row_copy_plan(rows, row_bytes, outer, size):
                device.cuda.memcpy_dtod_async(dst.ptr + dst_offset, src.ptr + src_offset, nbytes, device.stream)
            device.stream.synchronize()
        return dst

    def _own_buffer(self, name, shape, dtype):
        buffer = self.buffers.get(name)
        if buffer is None:
            buffer = DeviceBuffer(self._device(), shape, dtype)
            self.buffers[name] = buffer
        return buffer.reshape(shape, dtype)

    def _device(self):
        if self.device is None:
            raise RuntimeError("{} is not active".format(self.name))
        return self.device

    def _staging(self):
        if self.staging is None:
            raise RuntimeError("{} is not active".format(self.name))
        return self.staging

    @contextlib.contextmanager
    def _current(self):
        with self._device().current():
            yield

    # -- running --------------------------------------------------------------------------------
    def decoder_session(self, initial, protocol):
        """A :class:`TensorRTDecoderSession` over this decoder-step runner: the state stays on the GPU.

        Args:
            initial: ``{step input: host array or DeviceBuffer}`` of the first step.
            protocol: the bundle's :class:`jetcap.runtime.decoder_protocol.DecoderProtocol`.
        Used by ``jetcap.runtime.pipeline.make_decoder_session``.
        """
        return TensorRTDecoderSession(self, initial, word_input=protocol.word_input,
                                      state_outputs=protocol.state_outputs, fetch=protocol.fetch,
                                      batch_axes=protocol.batch_axes, protocol=protocol)

    def device_inputs(self, names):
        """A :class:`DeviceInputs` for inputs ``names`` of this runner: kept on the device between runs,
        uploaded again only when their content changes (used by ``jetcap.runtime.scheduler``)."""
        return DeviceInputs(self, names)

    def infer_impl(self, feed, outputs):
        return self.infer_device(feed=feed, fetch=outputs)

    def infer_device(self, feed=None, device_inputs=None, device_outputs=None, fetch=None):
        """Run once with inputs from the host and/or the device, leaving outputs on the device.

        Args:
            feed: ``{input: ndarray}`` copied to this runner's input buffers.
            device_inputs: ``{input: DeviceBuffer}`` read in place (their ``shape`` is the input shape).
            device_outputs: ``{output: DeviceBuffer}`` written in place (reshaped, grown if needed);
                other outputs go to this runner's buffers (see :meth:`device_output`).
            fetch: outputs to copy back to the host (default: those not in ``device_outputs``).
        Returns:
            ``{output: ndarray}`` for the fetched outputs.  Every input must come from exactly one of
            ``feed`` and ``device_inputs``; a device input may not also be an output buffer.
        """
        feed = feed or {}
        device_inputs = device_inputs or {}
        device_outputs = device_outputs or {}
        if not self.is_active:
            raise RuntimeError("{} is not active; use it as a context manager or call activate()".format(self.name))
        missing = [n for n in self.input_names if n not in feed and n not in device_inputs]
        doubled = sorted(set(feed) & set(device_inputs))
        unknown = sorted((set(feed) | set(device_inputs)) - set(self.input_names))
        if missing or doubled or unknown:
            raise UsageError("{}: inputs missing {}, given twice {}, unknown {}".format(
                self.name, missing, doubled, unknown))
        if fetch is None:
            fetch = [n for n in self.output_names if n not in device_outputs]
        unknown = sorted((set(fetch) | set(device_outputs)) - set(self.output_names))
        if unknown:
            raise UsageError("{}: no outputs {} (has {})".format(self.name, unknown, self.output_names))
        device = self._device()
        staging = self._staging()
        with device.current():
            addresses = {}
            for tensor in self.tensors:
                if not tensor.is_input:
                    continue
                if tensor.name in device_inputs:
                    buffer = device_inputs[tensor.name]
                    if buffer.dtype != tensor.dtype:
                        raise UsageError("{}: device input {} is {}, the engine expects {}".format(
                            self.name, tensor.name, buffer.dtype, tensor.dtype))
                else:
                    array = engine_input_array(feed[tensor.name], tensor.dtype, tensor.name)
                    buffer = self._own_buffer(tensor.name, array.shape, tensor.dtype)
                    host = staging.get("in:" + tensor.name, array.shape, tensor.dtype)
                    np.copyto(host, array)
                    device.cuda.memcpy_htod_async(buffer.ptr, host, device.stream)
                if not set_input_shape(self.context, self._generation(), tensor, buffer.shape):
                    raise UsageError("{}: input {} shape {} is outside the engine's optimization profile".format(
                        self.name, tensor.name, buffer.shape), hint="rebuild with wider axis ranges")
                addresses[tensor.name] = buffer.ptr
            input_ptrs = set(addresses.values())
            for tensor in self.tensors:
                if tensor.is_input:
                    continue
                shape = output_shape(self.context, self._generation(), tensor)
                if tensor.name in device_outputs:
                    buffer = device_outputs[tensor.name].reshape(shape, tensor.dtype)
                else:
                    buffer = self._own_buffer(tensor.name, shape, tensor.dtype)
                if buffer.ptr in input_ptrs:
                    raise UsageError("{}: output {} would overwrite an input buffer".format(self.name, tensor.name))
                addresses[tensor.name] = buffer.ptr
            if not execute(self.context, self._generation(), self.tensors, addresses, device.stream.handle):
                raise TensorRTError("{}: TensorRT failed to run the engine".format(self.name))
            results = {}
            for name in fetch:
                buffer = device_outputs.get(name) or self.buffers[name]
                host = staging.get("out:" + name, buffer.shape, buffer.dtype)
                device.cuda.memcpy_dtoh_async(host, buffer.ptr, device.stream)
                results[name] = host
            device.stream.synchronize()
        return dict((name, array.copy()) for name, array in results.items())

    def _generation(self):
        if self.generation is None:
            raise RuntimeError("{} is not active".format(self.name))
        return self.generation


class DeviceInputs(object):
    """Inputs of one runner kept on its device between runs, uploaded again only when their content
    changes: the decode loop's context rows (image features and the like), which stay the same from one
    step to the next until a search joins, leaves or changes its number of rows.

    Args:
        runner: the active :class:`TensorRTRunner` that reads them.
        names: the input names.
    """

    def __init__(self, runner, names):
        self.runner = runner
        self.names = list(names)
        self.buffers = {}  # type: Dict[str, DeviceBuffer]
        self.key = None  # type: Optional[object]
        self.uploads = 0

    def get(self, arrays, key):
        """``{name: DeviceBuffer}`` holding ``arrays`` (``{name: host array}``); ``key`` names their content,
        so the arrays are copied to the device only when it differs from the last call's."""
        if key is None or key != self.key:
            self.key = None  # an upload that fails half-way leaves no key that claims the buffers are current
            for name in self.names:
                array = engine_input_array(arrays[name], self.runner.tensor(name).dtype, name)
                buffer = self.buffers.get(name)
                if buffer is None:
                    buffer = self.buffers[name] = self.runner.new_buffer(array.shape, array.dtype)
                self.runner.upload(buffer, array)
            self.key = key
            self.uploads += 1
        return dict(self.buffers)

    def close(self):
        """Free the device buffers."""
        for buffer in self.buffers.values():
            buffer.free()
        self.buffers, self.key = {}, None


class TensorRTDecoderSession(object):
    """A decoder session (``step``/``reorder``, see :mod:`jetcap.runtime.decoding`) that keeps its state on the GPU.

    Each step feeds the previous words from the host, reads the state and per-image inputs from device
    buffers, writes the new state into spare device buffers (the two sets are swapped after the step,
    so an input is never overwritten while read) and copies only ``fetch`` back.  ``reorder`` gathers
    rows device-to-device.

    Args:
        runner: an active :class:`TensorRTRunner` of the decoder-step graph.
        initial: ``{input: ndarray or DeviceBuffer}`` for every step input except ``word_input``
            (captioner: h, c, features, projected).  Device buffers (e.g. the encoder runner's
            ``device_output("h0")``) are copied on the device, so their owner may run again.
        word_input: the token-id input (default ``"prev_word"``).
        state_outputs: ``{output: input}`` pairs carried to the next step (default h_new->h, c_new->c).
        fetch: outputs returned by :meth:`step`, in order (default log_probs, alpha).
        batch_axes: ``{input: batch axis}`` where it is not 0 (e.g. ``(layers, batch, dim)`` LSTM state).
        protocol: the bundle's decoder protocol; when given, :meth:`step` returns ``(log_probs, alpha)``
            as every decoder session does (alpha ``(n, 0)`` for a decoder without attention).
    """

    def __init__(self, runner, initial, word_input="prev_word", state_outputs=None, fetch=("log_probs", "alpha"),
                 batch_axes=None, protocol=None):
        self.runner = runner
        self.word_input = word_input
        self.state_outputs = dict(state_outputs or {"h_new": "h", "c_new": "c"})
        self.fetch = tuple(fetch)
        self.batch_axes = dict(batch_axes or {})
        self.protocol = protocol
        self.topk = protocol.topk["k"] if protocol is not None and protocol.topk else 0
        self.vocab_size = protocol.vocab_size if protocol is not None else None
        expected = set(runner.input_names) - {word_input}
        if set(initial) != expected:
            raise UsageError("decoder session needs initial values for {}, got {}".format(
                sorted(expected), sorted(initial)))
        unknown = set(self.state_outputs.values()) - expected
        if unknown:
            raise UsageError("state outputs feed unknown inputs {}".format(sorted(unknown)))
        self.current = {}  # type: Dict[str, DeviceBuffer]
        self.spare = {}  # type: Dict[str, DeviceBuffer]
        rows = None
        for name, value in initial.items():
            dtype = runner.tensor(name).dtype
            axis = self.batch_axes.get(name, 0)
            if isinstance(value, DeviceBuffer):
                buffer = runner.new_buffer(value.shape, value.dtype)
                runner.gather_rows(buffer, value, range(value.shape[axis]), axis)
            else:
                buffer = runner.upload(runner.new_buffer(np.shape(value), dtype), engine_input_array(value, dtype, name))
            self.current[name] = buffer
            self.spare[name] = runner.new_buffer(buffer.shape, buffer.dtype)
            if rows is not None and buffer.shape[axis] != rows:
                raise UsageError("initial values disagree on the number of rows ({} vs {})".format(
                    rows, buffer.shape[axis]))
            rows = buffer.shape[axis]
        self.rows = rows or 0

    def step_topk(self, prev_words):
        """Like :meth:`step`, fetching only the step graph's top-k outputs: ``(values, ids, alpha)``."""
        return self.protocol.split_topk(self._advance(prev_words, self.protocol.fetch_topk))

    def step(self, prev_words):
        """Advance one step for ``prev_words`` (int ids, shape ``(rows,)``); returns the fetched outputs."""
        results = self._advance(prev_words, self.fetch)
        if self.protocol is not None:
            return self.protocol.split(results)
        return tuple(results[name] for name in self.fetch)

    def _advance(self, prev_words, fetch):
        prev_words = np.asarray(prev_words, dtype=np.int64).reshape(-1)
        if prev_words.shape[0] != self.rows:
            raise UsageError("step got {} words for {} rows".format(prev_words.shape[0], self.rows))
        targets = dict((output, self.spare[name]) for output, name in self.state_outputs.items())
        results = self.runner.infer_device(feed={self.word_input: prev_words}, device_inputs=self.current,
                                           device_outputs=targets, fetch=fetch)
        for name in self.state_outputs.values():
            self.current[name], self.spare[name] = self.spare[name], self.current[name]
        return results

    def reorder(self, rows):
        """Keep/duplicate state rows by index (beam selection, finished captions)."""
        rows = [int(r) for r in np.asarray(rows).reshape(-1)]
        for name in list(self.current):
            self.runner.gather_rows(self.spare[name], self.current[name], rows, self.batch_axes.get(name, 0))
            self.current[name], self.spare[name] = self.spare[name], self.current[name]
        self.rows = len(rows)

    def state(self, name):
        """A host copy of state/input ``name`` (for tests and debugging)."""
        return self.runner.download(self.current[name])

    def close(self):
        """Free the session's device buffers."""
        for buffers in (self.current, self.spare):
            for buffer in buffers.values():
                buffer.free()
        self.current, self.spare = {}, {}
