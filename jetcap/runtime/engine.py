"""TensorRT engines for a bundle: cache keys, the engine cache, lookups and building (Python 3.6).

An engine only fits the exact ONNX file, TensorRT version, GPU, precision and optimization profile it
was built for.  Each engine is stored as ``<cache>/<graph>-<precision>-<key[:16]>.engine`` beside a JSON
sidecar holding the full key and its fields; :func:`lookup` returns an engine only when its sidecar
matches exactly, so a mismatching engine is rebuilt, never loaded.  Files are written atomically
(engine first, sidecar last), so an interrupted build leaves nothing that looks usable.

:func:`build_engines` builds one engine per graph of a bundle (``jetcap build``).
"""
import collections
import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from jetcap.errors import BundleError, JetcapError, UsageError
from jetcap.runtime import platform
from jetcap.runtime.backends import trt_api
from jetcap.runtime.manifest import PRECISIONS, Manifest, tensorrt_refusal
from jetcap.util.fsio import read_json, sha256_bytes, write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:  # mypy checks the TensorRT calls against the tensorrt stubs
    import tensorrt as trt
else:
    trt = trt_api.LazyTensorRT()

ENGINE_FORMAT = 1
ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"
DEFAULT_CACHE_SUBDIR = "engines"

CachedEngine = collections.namedtuple("CachedEngine", ["path", "sidecar_path", "sidecar"])
CachedEngine.__doc__ = """An engine file found in the cache, its sidecar path and the sidecar's content."""


class EngineBuildError(JetcapError):
    """TensorRT could not parse a graph or build its engine."""


# -- cache keys -----------------------------------------------------------------------------------
def engine_key_fields(onnx_sha256, trt_version, gpu_name, compute_capability, precision, profiles):
    """The fields an engine depends on, as a JSON-ready dict (lists, not tuples).

    Args:
        onnx_sha256: sha256 of the ONNX file the engine is built from.
        trt_version: TensorRT version (str or tuple).
        gpu_name: the GPU's name (None: "unknown").
        compute_capability: (major, minor) or None.
        precision: "fp32", "fp16" or "int8".
        profiles: ``{input: (min_shape, opt_shape, max_shape)}`` (see ``Manifest.profile``).
    """
    return {
        "format": ENGINE_FORMAT,
        "onnx_sha256": str(onnx_sha256),
        "tensorrt": trt_api.format_version(trt_version),
        "gpu": str(gpu_name) if gpu_name else "unknown",
        "compute_capability": platform.format_compute_capability(compute_capability),
        "precision": str(precision),
        "profiles": dict((str(name), [[int(d) for d in shape] for shape in shapes])
                         for name, shapes in profiles.items()),
    }


def key_of_fields(fields):
    """Hex sha256 of the canonical JSON of ``fields`` (sorted keys, no whitespace): stable everywhere."""
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return sha256_bytes(text.encode("utf-8"))


def engine_cache_key(onnx_sha256, trt_version, gpu_name, compute_capability, precision, profiles):
    """Stable hex key of an engine (see :func:`engine_key_fields` for the arguments)."""
    return key_of_fields(engine_key_fields(onnx_sha256, trt_version, gpu_name, compute_capability,
                                           precision, profiles))


def engine_file_name(graph, precision, key):
    """``<graph>-<precision>-<key[:16]>.engine``."""
    return "{}-{}-{}{}".format(graph, precision, key[:16], ENGINE_SUFFIX)


def sidecar_path(engine_path):
    """The JSON sidecar beside ``engine_path``."""
    engine_path = str(engine_path)
    if engine_path.endswith(ENGINE_SUFFIX):
        engine_path = engine_path[:-len(ENGINE_SUFFIX)]
    return engine_path + SIDECAR_SUFFIX


def default_cache_dir(bundle_dir):
    """Where engines go unless told otherwise: ``<bundle>/engines``."""
    return os.path.join(os.path.abspath(str(bundle_dir)), DEFAULT_CACHE_SUBDIR)


def check_cache(cache_dir, graph, precision, fields):
    """``(CachedEngine or None, reason)``: the cached engine for exactly ``fields``, or why there is none."""
    key = key_of_fields(fields)
    path = os.path.join(str(cache_dir), engine_file_name(graph, precision, key))
    side = sidecar_path(path)
    if not os.path.isfile(path):
        return None, "no cached engine"
    if not os.path.isfile(side):
        return None, "cached engine has no sidecar"
    try:
        sidecar = read_json(side)
    except ValueError:
        return None, "sidecar is not valid JSON"
    if not isinstance(sidecar, dict) or sidecar.get("key") != key:
        return None, "sidecar key differs"
    if sidecar.get("fields") != fields:
        return None, "sidecar fields differ"
    if sidecar.get("engine_bytes") != os.path.getsize(path):
        return None, "engine file size differs from its sidecar (truncated or replaced)"
    return CachedEngine(path, side, sidecar), "cached"


def lookup(cache_dir, graph, precision, fields):
    """The cached engine built for exactly ``fields`` (a :class:`CachedEngine`), else None."""
    return check_cache(cache_dir, graph, precision, fields)[0]


def store(cache_dir, graph, precision, fields, engine_data, extra=None):
    """Write ``engine_data`` and its sidecar into ``cache_dir`` atomically; returns the :class:`CachedEngine`.

    Args:
        extra: more sidecar entries (build time, workspace, ...); cannot override key/fields.
    """
    key = key_of_fields(fields)
    path = os.path.join(str(cache_dir), engine_file_name(graph, precision, key))
    sidecar = dict(extra or {})
    sidecar.update({
        "key": key, "fields": fields, "graph": graph, "precision": precision,
        "engine_bytes": len(engine_data), "engine_sha256": sha256_bytes(engine_data),
    })
    write_bytes_atomic(path, engine_data)
    side = sidecar_path(path)
    write_json_atomic(side, sidecar)
    return CachedEngine(path, side, sidecar)


def tactic_libraries_of(sidecar, version):
    """Whether an engine (its sidecar dict) loads the cuBLAS/cuDNN tactic libraries at run time: the
    sidecar's ``tactic_libraries``, or where it is absent or None (engines built before it was recorded,
    or at the default) the default of TensorRT ``version``."""
    from jetcap.check.memory import context_mb

    value = sidecar.get("tactic_libraries")
    if value is None:
        return context_mb(tuple(version))[2]
    return bool(value)


def record_device_memory(cached, device_memory_bytes, log=None):
    """Remember an engine's device memory (known once deserialized) in its sidecar, for later estimates.

    Returns the :class:`CachedEngine` with the value.  A cache this process cannot write (built by another
    user, e.g. ``sudo jetcap build`` for a service account; a read-only mount) keeps the value in memory
    only, said through ``log``: the engines load all the same."""
    sidecar = dict(cached.sidecar)
    if sidecar.get("device_memory_bytes") == int(device_memory_bytes):
        return cached
    sidecar["device_memory_bytes"] = int(device_memory_bytes)
    try:
        write_json_atomic(cached.sidecar_path, sidecar)
    except OSError as exc:
        if log is not None:
            log("note: cannot record the engine's device memory in {} ({}); kept for this process only".format(
                cached.sidecar_path, exc.strerror or exc))
    return CachedEngine(cached.path, cached.sidecar_path, sidecar)


# -- which engine fits this machine ---------------------------------------------------------------
def engine_fields_for(manifest, graph, precision, trt_version, gpu):
    """Key fields of ``graph``'s engine in ``precision`` for TensorRT ``trt_version`` on ``gpu`` (GpuInfo/None).

    Uses the ONNX checksum recorded in the manifest for the variant the build plan parses.
    """
    plan = trt_api.build_plan(trt_api.api_generation(trt_version), precision, force=True)
    entry = manifest.variant(plan.onnx_variant)["files"][graph]
    return engine_key_fields(entry["sha256"], trt_version, gpu.name if gpu else None,
                             gpu.compute_capability if gpu else None, precision, manifest.profile(graph))


def find_engines(manifest, precision, cache_dir=None, graphs=None, trt_version=None, gpu=None):
    """The cached engine of every graph for this TensorRT and GPU: ``{graph: CachedEngine}``.

    Raises:
        BundleError: a graph has no matching engine (names the graph and the ``jetcap build`` to run).
        MissingDependencyError: TensorRT is not installed (when ``trt_version`` is not given).
    """
    if tensorrt_refusal(precision):  # a CPU variant never has an engine (the auto choice says why)
        raise BundleError(tensorrt_refusal(precision))
    if trt_version is None:
        trt_version = trt_api.tensorrt_version()
    if gpu is None:
        gpu = platform.detect_gpu()
    cache_dir = cache_dir or default_cache_dir(manifest.bundle_dir)
    found = {}
    for graph in graphs or manifest.graph_names:
        fields = engine_fields_for(manifest, graph, precision, trt_version, gpu)
        cached, reason = check_cache(cache_dir, graph, precision, fields)
        if cached is None:
            raise BundleError(
                "no usable {} TensorRT engine for graph {!r} in {} ({}; engines are specific to the ONNX file, "
                "TensorRT version, GPU and precision)".format(precision, graph, cache_dir, reason),
                hint="run: jetcap build {} --precision {}".format(manifest.bundle_dir, precision))
        found[graph] = cached
    return found


def open_tensorrt_runners(manifest, precision, cache_dir=None, graphs=None, device_index=0, trt_version=None,
                          gpu=None):
    """``{graph: TensorRTRunner}`` (not yet activated) for the cached engines of ``precision``.

    Raises BundleError naming the ``jetcap build`` to run when a graph has no engine for this
    TensorRT/GPU (see :func:`find_engines`, which also explains ``trt_version`` and ``gpu``); no memory
    check (see :mod:`jetcap.runtime.loader`).
    """
    from jetcap.runtime.backends.tensorrt import TensorRTRunner

    engines = find_engines(manifest, precision, cache_dir=cache_dir, graphs=graphs, trt_version=trt_version, gpu=gpu)
    return collections.OrderedDict(
        (graph, TensorRTRunner(cached.path, manifest.graph(graph), name="tensorrt:{}[{}]".format(graph, precision),
                               device_index=device_index))
        for graph, cached in engines.items())


# -- building -------------------------------------------------------------------------------------
def _quiet(message):
    """Default ``log``: discard progress messages."""


def check_opset(manifest, trt_version):
    """UsageError when the bundle's ONNX opset is newer than TensorRT ``trt_version``'s parser reads."""
    limit = trt_api.max_onnx_opset(trt_version)
    opset = manifest.data.get("export", {}).get("opset")
    if limit is not None and isinstance(opset, int) and opset > limit:
        raise UsageError("the bundle was exported at ONNX opset {}, but TensorRT {} parses opsets up to {}".format(
            opset, trt_api.format_version(trt_version), limit), hint="re-export with --opset {}".format(limit))


def builder_precision_support(builder):
    # type: (trt.Builder) -> Tuple[Optional[bool], Optional[bool]]
    """``(fast_fp16, fast_int8)`` as the builder reports them (8.x-10.x); ``(None, None)`` on 11 (removed)."""
    if not hasattr(builder, "platform_has_fast_fp16"):
        return None, None
    return bool(builder.platform_has_fast_fp16), bool(builder.platform_has_fast_int8)


def network_creation_flags(version):
    # type: (Tuple[int, ...]) -> int
    """Bit mask of the ``NetworkDefinitionCreationFlag`` members :func:`trt_api.network_flags` names."""
    mask = 0
    for name in trt_api.network_flags(version):
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is not None:  # a flag a release no longer has is one it no longer needs
            mask |= 1 << int(member)
    return mask


def set_workspace(config, version, size_bytes):
    # type: (trt.IBuilderConfig, Tuple[int, ...], int) -> None
    """Limit the builder workspace the way TensorRT ``version`` wants."""
    if trt_api.workspace_setting(version) == "memory_pool_limit":
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, size_bytes)
    else:
        # TensorRT < 8.4 only: the attribute was removed in 10.0, so the 10.x stubs do not know it
        setattr(config, "max_workspace_size", size_bytes)


def parse_onnx(builder, onnx_path, version, logger):
    # type: (trt.Builder, str, Tuple[int, ...], trt.ILogger) -> Tuple[trt.INetworkDefinition, trt.OnnxParser]
    """Parse ``onnx_path`` into a new network; EngineBuildError listing the parser's errors."""
    network = builder.create_network(network_creation_flags(version))
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as handle:
        data = handle.read()
    if not parser.parse(data, onnx_path):
        errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
        raise EngineBuildError("TensorRT {} cannot parse {}: {}".format(
            trt_api.format_version(version), onnx_path, "; ".join(errors) or "unknown error"),
            hint="check the opset and operators against this TensorRT's ONNX support matrix")
    return network, parser


def network_input_names(network):
    # type: (trt.INetworkDefinition) -> List[str]
    """Names of the network's inputs."""
    return [network.get_input(index).name for index in range(network.num_inputs)]


def set_tactic_libraries(config, libraries):
    # type: (trt.IBuilderConfig, Optional[bool]) -> None
    """Turn the cuBLAS/cuDNN tactic sources on or off (None: leave the release's default)."""
    if libraries is None:
        return
    bits = [int(getattr(trt.TacticSource, name)) for name in trt_api.LIBRARY_TACTIC_SOURCES
            if hasattr(trt.TacticSource, name)]
    mask = trt_api.tactic_sources_mask(config.get_tactic_sources(), bits, libraries)
    if not config.set_tactic_sources(mask):
        raise EngineBuildError("TensorRT refused the tactic sources {:#x}".format(mask),
                               hint="build without --tactic-libraries/--no-tactic-libraries")


def build_serialized_engine(builder, network, plan, version, workspace, profiles, timing_cache=None,
                            tactic_libraries=None):
    # type: (trt.Builder, trt.INetworkDefinition, trt_api.BuildPlan, Tuple[int, ...], int, Dict[str, Sequence[Sequence[int]]], Optional[trt.ITimingCache], Optional[bool]) -> Tuple[bytes, Optional[trt.ITimingCache]]
    """Configure (flags, workspace, tactic sources, one optimization profile, timing cache) and build.

    Returns:
        ``(engine bytes, the timing cache as the build left it)`` (None when no cache was given).
    """
    inputs = network_input_names(network)
    if sorted(inputs) != sorted(profiles):
        raise EngineBuildError("network inputs {} do not match the manifest's {}".format(
            sorted(inputs), sorted(profiles)), hint="re-export the bundle")
    config = builder.create_builder_config()
    set_workspace(config, version, workspace)
    for flag in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    set_tactic_libraries(config, tactic_libraries)
    profile = builder.create_optimization_profile()
    for name, (smallest, typical, largest) in profiles.items():
        profile.set_shape(name, trt.Dims(list(smallest)), trt.Dims(list(typical)), trt.Dims(list(largest)))
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        config.set_timing_cache(timing_cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            "TensorRT failed to build the engine (see the TensorRT messages above)",
            hint="try a different --workspace-mb, free memory, or --precision fp32")
    updated = config.get_timing_cache() if timing_cache is not None else None
    return bytes(serialized), updated


def _load_timing_cache(builder, path):
    # type: (trt.Builder, Optional[str]) -> Optional[trt.ITimingCache]
    if not path:
        return None
    data = b""
    if os.path.isfile(path):
        with open(path, "rb") as handle:
            data = handle.read()
    config = builder.create_builder_config()
    return config.create_timing_cache(data)


def build_engines(bundle_dir, precision="fp16", workspace_mb=trt_api.DEFAULT_WORKSPACE_MB, cache_dir=None,
                  timing_cache=None, force=False, allow_int8_without_fast_int8=False, graphs=None, log=None,
                  verbose=False, tactic_libraries=None):
    # type: (str, str, int, Optional[str], Optional[str], bool, bool, Optional[List[str]], Optional[Callable[[str], Any]], bool, Optional[bool]) -> Dict[str, Any]
    """Build (or find in the cache) one TensorRT engine per graph of the bundle.

    Args:
        bundle_dir: the exported bundle.
        precision: "fp16" (default), "fp32" or "int8".
        workspace_mb: builder workspace limit in MiB (default 256, sized for a 4 GB Jetson).
        cache_dir: engine cache directory (default ``<bundle>/engines``).
        timing_cache: file to load/save TensorRT's timing cache (speeds up rebuilds); None: no cache.
        force: rebuild even when a matching engine is cached.
        allow_int8_without_fast_int8: build INT8 on a GPU without fast INT8 (refused by default).
        graphs: graph names to build (default: all).
        log: callable receiving progress lines (default: silent).
        verbose: TensorRT's verbose log.
        tactic_libraries: let the builder use cuBLAS/cuDNN kernels (True/False; None: the release's
            default, on before TensorRT 8.5).  Engines built without them do not load those libraries at
            run time (about 400 MB less of a Nano's RAM); the sidecar records it, and a cached engine
            built the other way is rebuilt.
    Returns:
        ``{bundle, precision, tensorrt, api, gpu, compute_capability, cache_dir, engines: [{graph, path,
        cached, seconds, bytes, onnx}], warnings}``.
    Raises:
        MissingDependencyError: TensorRT is not installed (exit code 2).
        UsageError: bad precision/workspace, a CPU variant (int8-cpu), or INT8 on a GPU without fast INT8
            unless allowed.
        BundleError, EngineBuildError: bundle or TensorRT problems.
    """
    log = log or _quiet
    manifest = Manifest.load(bundle_dir)
    if precision not in PRECISIONS:
        raise UsageError("unknown precision {!r} (one of {})".format(precision, ", ".join(PRECISIONS)))
    if tensorrt_refusal(precision):  # int8-cpu: refused before TensorRT is even imported
        raise UsageError(tensorrt_refusal(precision))
    workspace = trt_api.workspace_bytes(workspace_mb)
    for graph in graphs or []:
        manifest.graph(graph)
    trt_api.load_tensorrt()
    version = trt_api.tensorrt_version()
    generation = trt_api.api_generation(version)
    check_opset(manifest, version)
    gpu = platform.detect_gpu()
    capability = gpu.compute_capability if gpu else None
    logger = trt_api.get_logger(verbose)
    builder = trt.Builder(logger)
    fast_fp16, fast_int8 = platform.precision_support(capability)
    if fast_fp16 is None:
        fast_fp16, fast_int8 = builder_precision_support(builder)
    plan = trt_api.build_plan(generation, precision, fast_fp16, fast_int8, force=allow_int8_without_fast_int8)
    for warning in plan.warnings:
        log("warning: " + warning)
    cache_dir = os.path.abspath(cache_dir) if cache_dir else default_cache_dir(manifest.bundle_dir)
    timing = _load_timing_cache(builder, timing_cache)
    log("TensorRT {} ({} API) on {} (SM {}); engines in {}".format(
        trt_api.format_version(version), generation, gpu.name if gpu else "an unknown GPU",
        platform.format_compute_capability(capability), cache_dir))
    libraries = tactic_libraries_of({"tactic_libraries": tactic_libraries}, version)
    results = []
    total_start = time.time()
    for graph in graphs or manifest.graph_names:
        onnx_path = manifest.graph_path(plan.onnx_variant, graph)
        onnx_sha = manifest.verify_file(plan.onnx_variant, graph)
        profiles = manifest.profile(graph)
        fields = engine_key_fields(onnx_sha, version, gpu.name if gpu else None, capability, precision, profiles)
        cached, reason = check_cache(cache_dir, graph, precision, fields)
        if cached is not None and not force and tactic_libraries_of(cached.sidecar, version) != libraries:
            cached, reason = None, "the cached engine was built {} the cuBLAS/cuDNN tactic sources".format(
                "with" if not libraries else "without")
        if cached is not None and not force:
            log("{}: cached engine {} (use --force to rebuild)".format(graph, cached.path))
            results.append({"graph": graph, "path": cached.path, "cached": True, "seconds": 0.0,
                            "bytes": cached.sidecar["engine_bytes"], "onnx": onnx_path})
            continue
        log("{}: building {} engine from {} ({}; workspace {} MiB)...".format(
            graph, precision, os.path.relpath(onnx_path, manifest.bundle_dir),
            "forced" if cached is not None else reason, workspace >> 20))
        start = time.time()
        network, parser = parse_onnx(builder, onnx_path, version, logger)
        data, timing = build_serialized_engine(builder, network, plan, version, workspace, profiles, timing,
                                               tactic_libraries)
        # the parser owns the network's weights: drop both (parser first) before the next graph is parsed,
        # so a Nano never holds two graphs' parsed weights at once
        del parser, network
        seconds = time.time() - start
        stored = store(cache_dir, graph, precision, fields, data, extra={
            "built_seconds": round(seconds, 3), "workspace_mb": workspace >> 20, "flags": list(plan.flags),
            "onnx_variant": plan.onnx_variant, "api": generation, "tactic_libraries": libraries,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())})
        log("{}: built in {:.1f} s -> {} ({:.1f} MB)".format(graph, seconds, stored.path, len(data) / 1e6))
        results.append({"graph": graph, "path": stored.path, "cached": False, "seconds": round(seconds, 3),
                        "bytes": len(data), "onnx": onnx_path})
        del data  # the serialized engine, stored: not kept in RAM while the next graph builds
    if timing is not None and timing_cache:
        write_bytes_atomic(timing_cache, bytes(timing.serialize()))
        log("timing cache saved to {}".format(timing_cache))
    log("done in {:.1f} s".format(time.time() - total_start))
    return {
        "bundle": manifest.bundle_dir, "precision": precision, "tensorrt": trt_api.format_version(version),
        "api": generation, "gpu": gpu.name if gpu else None,
        "compute_capability": platform.format_compute_capability(capability), "cache_dir": cache_dir,
        "engines": results, "warnings": list(plan.warnings),
    }
