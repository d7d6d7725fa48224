"""Open a bundle for inference on the best available backend (Python 3.6, no torch, no onnx).

:func:`open_bundle` reads the manifest, picks the backend, checks memory before anything is loaded
(:mod:`jetcap.runtime.loader`) and activates one runner per graph::

    with open_bundle("bundles/captioner") as session:
        print(session.describe())            # "onnxruntime fp32 (tensorrt not installed)"
        pipeline = session.caption_pipeline()
        hypotheses = pipeline.caption(images)

``backend="auto"`` uses TensorRT when ``tensorrt`` imports *and* every graph of the bundle has a cached
engine for this precision, TensorRT version and GPU that loads; otherwise ONNX Runtime, and
:attr:`BundleSession.reason` says why.  A memory refusal (:class:`InsufficientMemoryError`) is never
turned into a silent fallback: it is raised with the numbers, whatever the backend.
"""
from jetcap.errors import BundleError, InsufficientMemoryError, JetcapError, MissingDependencyError, UsageError
from jetcap.runtime import bundle_schema
from jetcap.runtime.manifest import PRECISIONS, Manifest

BACKENDS = ("auto", "tensorrt", "onnxruntime")


def _quiet(message):
    """Default ``log``: discard."""


class BundleSession(object):
    """A bundle loaded for inference: manifest, active runners, the backend used and why.

    Attributes:
        manifest: the bundle's :class:`jetcap.runtime.manifest.Manifest`.
        backend: "onnxruntime" or "tensorrt" (what was actually loaded).
        precision: the variant loaded ("fp32", "fp16", "int8").
        reason: why this backend, e.g. ``"tensorrt not installed"`` or ``"requested"``.
        loaded: the :class:`jetcap.runtime.loader.LoadedBundle` (estimate, memory decision, RSS).
        runners: ``{graph: Runner}``, active until :meth:`close`.
        load_seconds: wall time of the memory check plus loading.
    """

    def __init__(self, manifest, backend, precision, reason, loaded, load_seconds):
        self.manifest = manifest
        self.backend = backend
        self.precision = precision
        self.reason = reason
        self.loaded = loaded
        self.runners = loaded.runners
        self.load_seconds = load_seconds
        self.closed = False

    @property
    def family(self):
        return self.manifest.family

    def describe(self):
        """One line: ``"onnxruntime fp32 (tensorrt not installed)"``."""
        return "{} {} ({})".format(self.backend, self.precision, self.reason)

    def caption_pipeline(self):
        """A :class:`jetcap.runtime.pipeline.CaptionPipeline` over this session's runners."""
        from jetcap.runtime.pipeline import CaptionPipeline

        self._check_open()
        return CaptionPipeline(self.manifest, self.runners, self.precision)

    def classifier_pipeline(self):
        """A :class:`jetcap.runtime.pipeline.ClassifierPipeline` over this session's runners."""
        from jetcap.runtime.pipeline import ClassifierPipeline

        self._check_open()
        return ClassifierPipeline(self.manifest, self.runners)

    def _check_open(self):
        if self.closed:
            raise RuntimeError("the bundle session is closed")

    def close(self):
        """Release every runner (sessions, engines, device buffers); safe to call twice."""
        if not self.closed:
            self.loaded.close()
            self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()


def expect_family(manifest, family, command=None):
    """UsageError unless the bundle of ``manifest`` is of ``family`` (checked before loading anything).

    Args:
        manifest: a :class:`Manifest`.
        family: "captioner" or "classifier".
        command: the jetcap command that does fit the bundle, named in the hint (optional).
    """
    if manifest.family != family:
        hint = "use jetcap {} for {} bundles".format(command, manifest.family) if command else None
        raise UsageError("{} is a {} bundle, not a {}".format(manifest.bundle_dir, manifest.family, family),
                         hint=hint)
    bundle_schema.require_entries(manifest, "caption" if family == "captioner" else "predict")


def sequence_limits(manifest):
    """``(width, min_len, max_len)`` a classifier bundle accepts: features per frame and T bounds."""
    expect_family(manifest, "classifier", command="caption")
    axis = manifest.axes.get("T", {})
    width = int(manifest.config["input_size"])
    return width, int(axis.get("min", 1)), int(axis.get("max", manifest.config.get("max_len", 1 << 30)))


def tensorrt_unavailable_reason():
    """None when a usable TensorRT imports; otherwise a short reason such as ``"tensorrt not installed"``."""
    from jetcap.runtime.backends import trt_api

    try:
        trt_api.load_tensorrt()
    except MissingDependencyError as exc:
        if "not a usable TensorRT" in exc.message:
            return "tensorrt not installed: only stubs or an incomplete install found"
        return "tensorrt not installed"
    except Exception as exc:  # a broken install can fail with anything (OSError of a shared library, ...)
        return "tensorrt unusable: {}".format(exc)
    return None


def _find_engines(manifest, precision, engine_cache):
    """``({graph: CachedEngine}, None)`` or ``(None, reason)`` for the auto choice."""
    from jetcap.runtime import engine as engine_cache_module

    try:
        return engine_cache_module.find_engines(manifest, precision, cache_dir=engine_cache), None
    except BundleError as exc:
        return None, exc.message
    except MissingDependencyError as exc:
        return None, "tensorrt unusable: {}".format(exc.message)


def choose_backend(manifest, backend="auto", precision="fp32", engine_cache=None):
    """``(backend, reason)``: which backend :func:`open_bundle` tries first.

    ``auto`` picks "tensorrt" only when TensorRT imports and every graph has a cached engine for
    ``precision`` on this TensorRT/GPU; the reason says why ONNX Runtime was chosen otherwise.
    """
    if backend not in BACKENDS:
        raise UsageError("unknown backend {!r} (one of {})".format(backend, ", ".join(BACKENDS)))
    if backend != "auto":
        return backend, "requested"
    missing = tensorrt_unavailable_reason()
    if missing:
        return "onnxruntime", missing
    engines, why_not = _find_engines(manifest, precision, engine_cache)
    if engines is None:
        return "onnxruntime", why_not
    return "tensorrt", "cached {} engines found".format(precision)


def _verify_files(manifest, precision):
    for graph in manifest.graph_names:
        manifest.verify_file(precision, graph)


def open_bundle(bundle_dir, backend="auto", precision="fp32", engine_cache=None, max_memory_mb=None, log=None,
                family=None, verify=True, threads=None, providers=None, spinning=None):
    """Load a bundle's graphs for inference, after checking memory.

    Args:
        bundle_dir: the bundle directory (or a loaded :class:`Manifest`).
        backend: "auto" (default), "tensorrt" or "onnxruntime".
        precision: "fp32" (default), "fp16" or "int8": the ONNX variant for ONNX Runtime, the engine
            precision for TensorRT.
        engine_cache: TensorRT engine cache directory (default ``<bundle>/engines``).
        max_memory_mb: refuse to load when the estimate exceeds this many MiB (default: only what the
            system has available).
        log: callable receiving progress lines (default: silent).
        family: when given ("captioner"/"classifier"), a bundle of another family is refused before loading.
        verify: check the ONNX files' sha256 against the manifest before loading (ONNX Runtime; default True).
        threads: ONNX Runtime intra-op threads (default: its own choice).
        providers: ONNX Runtime execution providers (default: CUDA when available, then CPU).
        spinning: ONNX Runtime thread pools spinning (default None: one caller; a server passes
            SPIN_DURING_RUNS for its decode loop, False for its workers), see
            :func:`jetcap.runtime.backends.onnxruntime.spinning_policy`.
    Returns:
        a :class:`BundleSession` (a context manager).
    Raises:
        BundleError: not a bundle, missing variant or file, checksum mismatch, no engine (tensorrt).
        UsageError: bad backend/precision, wrong family.
        MissingDependencyError: the requested backend is not installed.
        InsufficientMemoryError: the estimate exceeds ``max_memory_mb`` or what is available.
    """
    import time

    from jetcap.runtime import loader

    log = log or _quiet
    started = time.time()
    manifest = bundle_dir if isinstance(bundle_dir, Manifest) else Manifest.load(bundle_dir)
    if family is not None:
        expect_family(manifest, family)
    if precision not in PRECISIONS:
        raise UsageError("unknown precision {!r} (one of {})".format(precision, ", ".join(PRECISIONS)))
    chosen, reason = choose_backend(manifest, backend, precision, engine_cache)
    loaded = None
    if chosen == "tensorrt":
        try:
            loaded = loader.load_tensorrt(manifest, precision=precision, max_memory_mb=max_memory_mb,
                                          cache_dir=engine_cache, log=log)
        except JetcapError as exc:
            # auto: an engine that cannot be loaded (pycuda missing, stale or corrupt engine) falls back;
            # too little memory never does (the numbers are what the user needs to see)
            if backend != "auto" or isinstance(exc, InsufficientMemoryError):
                raise
            reason = "tensorrt engines found but not loadable: {}".format(exc.message)
            chosen = "onnxruntime"
            log("falling back to onnxruntime: " + reason)
    if loaded is None:
        manifest.variant(precision)
        if verify:
            _verify_files(manifest, precision)
        loaded = loader.load_onnxruntime(manifest, precision=precision, max_memory_mb=max_memory_mb,
                                         threads=threads, providers=providers, log=log, spinning=spinning)
    return BundleSession(manifest, chosen, precision, reason, loaded, time.time() - started)

