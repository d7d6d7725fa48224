"""Memory-checked loading of a bundle's runners, for ONNX Runtime and TensorRT (Python 3.6).

Before anything is deserialized, the memory a backend will need is estimated from the files and the
manifest (engine/ONNX sizes, each engine's device memory once known, I/O buffers at the largest
profile shapes, the runtime's own libraries, a margin) and compared with what this process may use:
on a Jetson the GPU shares system RAM, so ``MemAvailable`` and the cgroup limit count
(:mod:`jetcap.runtime.memory`); on a discrete GPU the free device memory; and an optional
``max_memory_mb`` budget.  Too little is an :class:`InsufficientMemoryError` with the numbers and what
to do about it, never an out-of-memory crash halfway through loading.  After loading, the actual
resident-memory growth is reported.

The estimates and the decision are plain functions (:func:`estimate_engine_memory`,
:func:`estimate_onnx_memory`, :func:`check_budget`) so they are tested without a GPU.
"""
import collections
import os

import numpy as np

from jetcap.errors import InsufficientMemoryError, UsageError
from jetcap.runtime import memory
from jetcap.runtime.manifest import Manifest, resolve_shape

MIB = 1 << 20

# What the runtimes themselves take besides the model (measured orders of magnitude, not exact): the
# CUDA context plus TensorRT (and cuBLAS/cuDNN where the release loads them) come from
# :func:`tensorrt_runtime_bytes`, the pre-flight's figures; onnxruntime with a small model ~140 MB RSS in
# total (FACTS.md).  TENSORRT_RUNTIME_BYTES is the figure for an unknown release.
TENSORRT_RUNTIME_BYTES = 300 * MIB
ONNXRUNTIME_RUNTIME_BYTES = 64 * MIB
ONNX_FILE_FACTOR = 2.0        # ORT holds the weights and its optimized copy of the graph
ONNXRUNTIME_ARENA_BYTES = 32 * MIB
UNKNOWN_ACTIVATION_FACTOR = 2  # engine device memory not known yet: this many times its I/O bytes
MIN_ACTIVATION_BYTES = 16 * MIB
MARGIN_FRACTION = 0.10
MIN_MARGIN_BYTES = 32 * MIB

MemoryEstimate = collections.namedtuple("MemoryEstimate", ["total_bytes", "parts"])
MemoryEstimate.__doc__ = """Estimated need: ``total_bytes`` and ``parts``, a list of ``(label, bytes)``."""

BudgetDecision = collections.namedtuple(
    "BudgetDecision", ["fits", "need_bytes", "limit_bytes", "limit_source", "available_bytes", "budget_bytes"])
BudgetDecision.__doc__ = """Result of :func:`check_budget`: ``fits``; ``need_bytes``; ``limit_bytes`` (the
smaller of available and budget, None when neither is known) and which one it was (``limit_source``:
"budget", "available" or None)."""


# -- estimates (pure) -----------------------------------------------------------------------------
def tensor_bytes(tensor, axes, level="max"):
    """Bytes of one manifest tensor ``{name, dtype, shape}`` with its axes at ``level`` (min/opt/max)."""
    sizes = dict((name, rng[level]) for name, rng in axes.items())
    shape = resolve_shape(tensor["shape"], sizes)
    count = 1
    for dim in shape:
        count *= int(dim)
    return count * np.dtype(tensor["dtype"]).itemsize


def io_bytes_at_max(io_spec, axes):
    """Bytes of all inputs and outputs of a graph at the largest profile shapes."""
    return sum(tensor_bytes(t, axes) for t in list(io_spec["inputs"]) + list(io_spec["outputs"]))


def _margin(subtotal, margin_fraction, min_margin):
    return max(int(subtotal * margin_fraction), int(min_margin))


def estimate_engine_memory(engines, runtime_bytes=TENSORRT_RUNTIME_BYTES, margin_fraction=MARGIN_FRACTION,
                           min_margin=MIN_MARGIN_BYTES):
    """Estimate what loading TensorRT engines needs.

    Args:
        engines: list of ``{name, file_bytes, device_memory_bytes (None when not known yet), io_bytes}``.
            Per engine: its weights (the file size), its execution context's device memory (or
            ``UNKNOWN_ACTIVATION_FACTOR`` x its I/O bytes, at least 16 MiB, while unknown) and its I/O
            buffers twice (device buffer + page-locked host staging).
        runtime_bytes: CUDA context and TensorRT libraries (default 300 MiB; 0 when already loaded).
        margin_fraction, min_margin: safety margin (default 10 %, at least 32 MiB).
    Returns:
        a :class:`MemoryEstimate`.
    """
    parts = []
    for engine in engines:
        name = engine["name"]
        parts.append(("{} engine".format(name), int(engine["file_bytes"])))
        known = engine.get("device_memory_bytes")
        if known is None:
            guess = max(UNKNOWN_ACTIVATION_FACTOR * int(engine["io_bytes"]), MIN_ACTIVATION_BYTES)
            parts.append(("{} activations (estimated)".format(name), guess))
        else:
            parts.append(("{} activations".format(name), int(known)))
        parts.append(("{} I/O buffers".format(name), 2 * int(engine["io_bytes"])))
    if runtime_bytes:
        parts.append(("CUDA + TensorRT runtime", int(runtime_bytes)))
    subtotal = sum(size for _, size in parts)
    parts.append(("margin", _margin(subtotal, margin_fraction, min_margin)))
    return MemoryEstimate(sum(size for _, size in parts), parts)


def estimate_onnx_memory(models, file_factor=ONNX_FILE_FACTOR, arena_bytes=ONNXRUNTIME_ARENA_BYTES,
                         runtime_bytes=ONNXRUNTIME_RUNTIME_BYTES, margin_fraction=MARGIN_FRACTION,
                         min_margin=MIN_MARGIN_BYTES):
    """Estimate what loading ONNX Runtime sessions needs.

    Args:
        models: list of ``{name, file_bytes, io_bytes}``; each session takes ``file_factor`` x its file
            (weights + optimized graph), an arena of ``arena_bytes`` and its I/O at the largest shapes twice.
        runtime_bytes: the onnxruntime library itself (default 64 MiB).
        margin_fraction, min_margin: safety margin.
    """
    parts = []
    for model in models:
        parts.append(("{} weights + graph".format(model["name"]), int(model["file_bytes"] * file_factor)))
        parts.append(("{} arena + I/O".format(model["name"]), int(arena_bytes) + 2 * int(model["io_bytes"])))
    if runtime_bytes:
        parts.append(("onnxruntime", int(runtime_bytes)))
    subtotal = sum(size for _, size in parts)
    parts.append(("margin", _margin(subtotal, margin_fraction, min_margin)))
    return MemoryEstimate(sum(size for _, size in parts), parts)


def check_budget(estimate, available, budget):
    """Decide whether ``estimate`` fits.

    Args:
        estimate: a :class:`MemoryEstimate` (or a byte count).
        available: bytes the process may still use (None: unknown).
        budget: the user's ``--max-memory-mb`` in bytes (None: no budget).
    Returns:
        a :class:`BudgetDecision`; with neither ``available`` nor ``budget`` known it fits.
    """
    need = int(getattr(estimate, "total_bytes", estimate))
    limit, source = None, None
    if available is not None:
        limit, source = int(available), "available"
    if budget is not None and (limit is None or int(budget) <= limit):
        limit, source = int(budget), "budget"
    return BudgetDecision(limit is None or need <= limit, need, limit, source, available, budget)


def advice(backend):
    """What the user can do when ``backend`` ("tensorrt" or "onnxruntime") does not fit."""
    common = ("free memory (on a Jetson stop the desktop: sudo systemctl isolate multi-user.target; add "
              "swap/zram), load fewer models at once, or raise --max-memory-mb")
    if backend == "tensorrt":
        return ("rebuild the engines with a smaller --workspace-mb and --precision fp16 (jetcap build BUNDLE "
                "--force), " + common)
    return "use the bundle's fp16 or int8 variant (--precision), " + common


def describe_estimate(estimate):
    """``'612.0 MiB (encoder engine 45.0 MiB, ..., margin 32.0 MiB)'``."""
    parts = ", ".join("{} {}".format(label, memory.format_bytes(size)) for label, size in estimate.parts)
    return "{} ({})".format(memory.format_bytes(estimate.total_bytes), parts)


def require_fits(estimate, available, budget, backend, what="the bundle", available_text=None):
    """The :class:`BudgetDecision` when ``estimate`` fits; InsufficientMemoryError with the numbers otherwise."""
    decision = check_budget(estimate, available, budget)
    if decision.fits:
        return decision
    if decision.limit_source == "budget":
        limit_text = "the --max-memory-mb budget of {}".format(memory.format_bytes(decision.limit_bytes))
    else:
        limit_text = "{} available ({})".format(memory.format_bytes(decision.limit_bytes),
                                                available_text or "what this process may use")
    raise InsufficientMemoryError("not loading {} with {}: it needs about {}, more than {}".format(
        what, backend, describe_estimate(estimate), limit_text), hint=advice(backend))


# -- resident memory ------------------------------------------------------------------------------
def parse_vm_rss(text):
    """``VmRSS`` of a ``/proc/<pid>/status`` text in bytes, or None."""
    for line in (text or "").splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            if len(parts) >= 2:
                return int(parts[1]) * 1024
    return None


def current_rss_bytes(status_path="/proc/self/status"):
    """This process's resident memory in bytes (None where /proc is not available)."""
    try:
        with open(status_path, "r") as handle:
            return parse_vm_rss(handle.read())
    except (IOError, OSError):
        return None


# -- loading --------------------------------------------------------------------------------------
class LoadedBundle(object):
    """Runners of a bundle loaded under a memory check.

    Attributes:
        manifest: the :class:`Manifest`.
        backend, precision: what was loaded.
        runners: ``{graph: Runner}``, active.
        estimate: the :class:`MemoryEstimate` checked before loading.
        decision: the :class:`BudgetDecision`.
        rss_before, rss_after: resident memory around loading (bytes or None).
    """

    def __init__(self, manifest, backend, precision, runners, estimate, decision, rss_before, rss_after):
        self.manifest = manifest
        self.backend = backend
        self.precision = precision
        self.runners = runners
        self.estimate = estimate
        self.decision = decision
        self.rss_before = rss_before
        self.rss_after = rss_after

    @property
    def rss_delta(self):
        """Resident memory the loading added (bytes), or None when unknown."""
        if self.rss_before is None or self.rss_after is None:
            return None
        return self.rss_after - self.rss_before

    def summary(self):
        """One line: what was loaded, the estimate and the actual RSS growth."""
        return "{} {} ({}): estimated {}, resident memory grew by {}".format(
            self.backend, self.precision, ", ".join(self.runners), memory.format_bytes(self.estimate.total_bytes),
            memory.format_bytes(self.rss_delta))

    def close(self):
        """Deactivate every runner."""
        for runner in self.runners.values():
            runner.deactivate()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()


def _manifest(bundle):
    return bundle if isinstance(bundle, Manifest) else Manifest.load(bundle)


def _budget_bytes(max_memory_mb):
    if max_memory_mb is None:
        return None
    if int(max_memory_mb) < 1:
        raise UsageError("--max-memory-mb must be at least 1, got {}".format(max_memory_mb))
    return int(max_memory_mb) * MIB


def _activate_all(runners):
    done = []
    try:
        for runner in runners.values():
            runner.activate()
            done.append(runner)
    except BaseException:
        for runner in done:
            runner.deactivate()
        raise


def _quiet(message):
    """Default ``log``: discard."""


def estimate_onnxruntime_bundle(manifest, precision, graphs=None):
    """:class:`MemoryEstimate` of ONNX Runtime sessions for ``graphs`` (default all) of ``precision``."""
    models = []
    for graph in graphs or manifest.graph_names:
        path = manifest.graph_path(precision, graph)
        models.append({"name": graph, "file_bytes": os.path.getsize(path),
                       "io_bytes": io_bytes_at_max(manifest.graph(graph), manifest.axes)})
    return estimate_onnx_memory(models)


def load_onnxruntime(bundle, precision="fp32", max_memory_mb=None, graphs=None, providers=None, threads=None,
                     log=None, memory_info=None, spinning=None):
    """Load ONNX Runtime runners for a bundle after checking memory.

    Args:
        bundle: bundle directory or :class:`Manifest`.
        precision: the ONNX variant (default "fp32").
        max_memory_mb: budget in MiB (None: only what the system has available).
        graphs: graphs to load (default all).
        providers, threads: passed to :class:`OnnxRuntimeRunner`.
        spinning: how intra-op pools spin (None: one caller; a server passes SPIN_DURING_RUNS or False), see
            :func:`jetcap.runtime.backends.onnxruntime.spinning_policy`.
        log: callable for progress lines.
        memory_info: a :class:`jetcap.runtime.memory.MemoryInfo` (default: read now).
    Returns:
        a :class:`LoadedBundle`.
    Raises:
        InsufficientMemoryError: the estimate exceeds the budget or what is available.
    """
    from jetcap.runtime.backends.onnxruntime import bundle_runners

    log = log or _quiet
    manifest = _manifest(bundle)
    graphs = list(graphs or manifest.graph_names)
    estimate = estimate_onnxruntime_bundle(manifest, precision, graphs)
    info = memory_info or memory.read_memory_info()
    decision = require_fits(estimate, info.available, _budget_bytes(max_memory_mb), "onnxruntime",
                            what="the {} graph(s) {} of {}".format(precision, ", ".join(graphs), manifest.bundle_dir),
                            available_text=info.describe())
    rss_before = current_rss_bytes()
    runners = bundle_runners(manifest, precision, graphs=graphs, providers=providers, threads=threads,
                             spinning=spinning)
    _activate_all(runners)
    loaded = LoadedBundle(manifest, "onnxruntime", precision, runners, estimate, decision, rss_before,
                          current_rss_bytes())
    log(loaded.summary())
    return loaded


def tensorrt_runtime_bytes(version, tactic_libraries=None):
    """Bytes the CUDA context and TensorRT take in a process of TensorRT ``version`` (a tuple), besides the
    engines: the pre-flight's context figure (:func:`jetcap.check.memory.context_mb`), with cuBLAS and
    cuDNN when the engines use those tactic sources (``tactic_libraries``; None: the release's default).
    TensorRT 8.2 on JetPack 4.6: 650 MB with them (its default), 250 MB without."""
    from jetcap.check.memory import MB, context_mb

    return int(context_mb(tuple(version), tactic_libraries)[0] * MB)


def estimate_tensorrt_engines(manifest, cached_engines, runtime_bytes=TENSORRT_RUNTIME_BYTES):
    """:class:`MemoryEstimate` of the engines ``{graph: CachedEngine}`` (sidecar device memory when recorded)."""
    engines = []
    for graph, cached in cached_engines.items():
        engines.append({"name": graph, "file_bytes": os.path.getsize(cached.path),
                        "device_memory_bytes": cached.sidecar.get("device_memory_bytes"),
                        "io_bytes": io_bytes_at_max(manifest.graph(graph), manifest.axes)})
    return estimate_engine_memory(engines, runtime_bytes=runtime_bytes)


def tensorrt_available_memory(integrated, memory_info, free_device_bytes=None):
    """``(bytes, description)`` a TensorRT load may use.

    On an integrated GPU (Jetson) device memory *is* system RAM: what the process may use (MemAvailable,
    cgroup).  On a discrete GPU: the free device memory (None when unknown).
    """
    if integrated or integrated is None:
        return memory_info.available, memory_info.describe() + " (the GPU shares this RAM)"
    return free_device_bytes, "free GPU memory {}".format(memory.format_bytes(free_device_bytes))


def load_tensorrt(bundle, precision="fp16", max_memory_mb=None, cache_dir=None, graphs=None, device_index=0,
                  log=None, memory_info=None):
    """Load TensorRT runners for the bundle's built engines after checking memory.

    Each engine's device memory becomes known when it is deserialized: it is recorded in the engine's
    sidecar (so the next estimate is exact) and the check is repeated before the next engine loads.

    Args:
        bundle: bundle directory or :class:`Manifest`.
        precision: engine precision (default "fp16").
        max_memory_mb: budget in MiB (None: only what is available).
        cache_dir: engine cache (default ``<bundle>/engines``).
        graphs: graphs to load (default all).
        device_index: CUDA device.
        log: callable for progress lines.
        memory_info: a :class:`jetcap.runtime.memory.MemoryInfo` (default: read now).
    Raises:
        MissingDependencyError: TensorRT or pycuda missing.  BundleError: no engine built for this
        TensorRT/GPU.  InsufficientMemoryError: it does not fit.
    """
    from jetcap.runtime import engine as engine_cache
    from jetcap.runtime import platform
    from jetcap.runtime.backends import trt_api
    from jetcap.runtime.backends.tensorrt import CudaDevice, TensorRTRunner

    log = log or _quiet
    manifest = _manifest(bundle)
    graphs = list(graphs or manifest.graph_names)
    gpu = platform.detect_gpu(device_index)
    cached = engine_cache.find_engines(manifest, precision, cache_dir=cache_dir, graphs=graphs, gpu=gpu)
    info = memory_info or memory.read_memory_info()
    integrated = gpu.integrated if gpu else None
    free_device = None
    if integrated is False:
        probe = CudaDevice(device_index)
        free_device = probe.free_memory()[0]
        probe.release()
    available, available_text = tensorrt_available_memory(integrated, info, free_device)
    budget = _budget_bytes(max_memory_mb)
    what = "the {} engine(s) {} of {}".format(precision, ", ".join(graphs), manifest.bundle_dir)
    version = trt_api.tensorrt_version()
    runtime_bytes = tensorrt_runtime_bytes(version, any(engine_cache.tactic_libraries_of(found.sidecar, version)
                                                        for found in cached.values()))
    estimate = estimate_tensorrt_engines(manifest, cached, runtime_bytes)
    decision = require_fits(estimate, available, budget, "tensorrt", what=what, available_text=available_text)
    rss_before = current_rss_bytes()
    runners = collections.OrderedDict()
    try:
        for graph in graphs:
            runner = TensorRTRunner(cached[graph].path, manifest.graph(graph),
                                    name="tensorrt:{}[{}]".format(graph, precision), device_index=device_index)
            runner.activate()
            runners[graph] = runner
            if runner.device_memory_bytes is not None:
                cached[graph] = engine_cache.record_device_memory(cached[graph], runner.device_memory_bytes, log)
            estimate = estimate_tensorrt_engines(manifest, cached, runtime_bytes)
            decision = require_fits(estimate, available, budget, "tensorrt", what=what, available_text=available_text)
    except BaseException:
        for runner in runners.values():
            runner.deactivate()
        raise
    loaded = LoadedBundle(manifest, "tensorrt", precision, runners, estimate, decision, rss_before,
                          current_rss_bytes())
    log(loaded.summary())
    return loaded


def load_runners(bundle, backend, precision, max_memory_mb=None, **kwargs):
    """:func:`load_onnxruntime` or :func:`load_tensorrt` by ``backend`` name ("onnxruntime"/"tensorrt")."""
    if backend == "onnxruntime":
        return load_onnxruntime(bundle, precision=precision, max_memory_mb=max_memory_mb, **kwargs)
    if backend == "tensorrt":
        return load_tensorrt(bundle, precision=precision, max_memory_mb=max_memory_mb, **kwargs)
    raise UsageError("unknown backend {!r} (onnxruntime or tensorrt)".format(backend))
