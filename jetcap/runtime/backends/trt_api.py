"""What differs between TensorRT releases, as plain functions of the parsed version (Python 3.6).

jetcap supports three API generations:

* ``"bindings"`` (TensorRT 8.0-8.4; JetPack 4.6 ships 8.2 for the Nano): binding indices,
  ``execute_async_v2``; workspace via ``config.max_workspace_size`` before 8.4.
* ``"named"`` (8.5-10.x): named I/O tensors, ``set_tensor_address`` + ``execute_async_v3``,
  ``set_memory_pool_limit``.  10.0 removed the bindings API.
* ``"strongly_typed"`` (11.x): no precision builder flags; FP16 comes from the bundle's FP16 ONNX and
  INT8 only from its Q/DQ ONNX.

Every decision (which ONNX variant to parse, which builder flags to set, how to size the workspace)
is made here without TensorRT, so it is tested on any machine; ``load_tensorrt`` imports the real
module lazily.  Versions are always compared as tuples of ints, never as strings.
"""
import collections
from typing import Any, Dict

from jetcap.errors import MissingDependencyError, UsageError
from jetcap.util import versions
from jetcap.util.lazy import INSTALL_HINTS, require

BINDINGS = "bindings"
NAMED = "named"
STRONGLY_TYPED = "strongly_typed"
GENERATIONS = (BINDINGS, NAMED, STRONGLY_TYPED)

MIN_VERSION = (8, 0)
DEFAULT_WORKSPACE_MB = 256  # sized for a 4 GB Jetson Nano that also runs the OS and the caller

BuildPlan = collections.namedtuple("BuildPlan", [
    "precision", "generation", "onnx_variant", "flags", "strongly_typed", "warnings"])
BuildPlan.__doc__ = """How to build one precision: parse the bundle's ``onnx_variant`` ONNX files, set the
builder ``flags`` (names of ``trt.BuilderFlag`` members), create the network strongly typed or not,
and tell the user the ``warnings`` (list of str)."""


def parse_version(text):
    """``"8.2.1.8"`` -> ``(8, 2, 1, 8)``; trailing non-numeric parts (``"10.0.1.post1"``) are dropped.

    Raises UsageError when ``text`` does not start with ``<major>.<minor>``.
    """
    return versions.parse_version(text, "TensorRT version")


def format_version(version):
    """``(8, 2, 1, 8)`` -> ``"8.2.1.8"``."""
    return ".".join(str(part) for part in parse_version(version))


def api_generation(version):
    """The API generation of TensorRT ``version`` (str or tuple): "bindings", "named" or "strongly_typed".

    8.0-8.4 -> bindings; 8.5-10.x -> named tensors; 11 and later -> strongly typed.  Versions before 8.0
    are refused (UsageError): jetcap needs explicit-batch networks with optimization profiles.
    """
    version = parse_version(version)
    if version < MIN_VERSION:
        raise UsageError("TensorRT {} is too old; jetcap needs TensorRT 8.0 or newer".format(
            format_version(version)), hint="on a Jetson Nano use JetPack 4.6 (TensorRT 8.2)")
    if version < (8, 5):
        return BINDINGS
    if version < (11,):
        return NAMED
    return STRONGLY_TYPED


def workspace_setting(version):
    """How to limit the builder workspace: ``"max_workspace_size"`` (< 8.4) or ``"memory_pool_limit"``."""
    return "max_workspace_size" if parse_version(version) < (8, 4) else "memory_pool_limit"


def network_flags(version):
    """Names of ``trt.NetworkDefinitionCreationFlag`` members to set when creating the network.

    < 10: EXPLICIT_BATCH (implicit batch was still the default); 10.x: none (explicit batch is the
    only mode); >= 11: STRONGLY_TYPED (accepted and ignored by 11.x, which is always strongly typed).
    """
    version = parse_version(version)
    if version < (10,):
        return ["EXPLICIT_BATCH"]
    if version < (11,):
        return []
    return ["STRONGLY_TYPED"]


def max_onnx_opset(version):
    """Newest ONNX opset the TensorRT ``version``'s ONNX parser is known to read, or None if not known.

    TensorRT 8.0-8.2 (JetPack 4.6) parse opsets up to 13.
    """
    if parse_version(version) < (8, 4):
        return 13
    return None


def build_plan(generation, precision, fast_fp16=None, fast_int8=None, force=False):
    """Decide how to build an engine of ``precision`` with API ``generation`` on a GPU.

    Args:
        generation: "bindings", "named" or "strongly_typed" (see :func:`api_generation`).
        precision: "fp32", "fp16" or "int8".
        fast_fp16, fast_int8: whether the GPU has fast native FP16 / INT8 (None: unknown).
        force: build INT8 even on a GPU without fast INT8 (it runs, slower than FP16).
    Returns:
        a :class:`BuildPlan`.  Before 11, FP16 parses the FP32 ONNX and sets the FP16 flag, INT8 parses
        the Q/DQ ONNX and sets INT8 (+FP16 when fast, for the layers left unquantized).  On 11, FP16 and
        INT8 parse the FP16 / Q/DQ ONNX into a strongly typed network without flags.
    Raises:
        UsageError: INT8 on a GPU known to lack fast INT8 (e.g. the Jetson Nano, SM 5.3) without ``force``.
    """
    if generation not in GENERATIONS:
        raise ValueError("unknown TensorRT API generation {!r}".format(generation))
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError("unknown precision {!r} (fp32, fp16 or int8)".format(precision))
    warnings = []
    strongly_typed = generation == STRONGLY_TYPED
    if precision == "int8" and fast_int8 is False:
        if not force:
            raise UsageError(
                "this GPU has no fast INT8 (e.g. Jetson Nano, SM 5.3): an INT8 engine would be slower than FP16",
                hint="build with --precision fp16, or pass --allow-slow-int8 to build INT8 anyway")
        warnings.append("building INT8 on a GPU without fast INT8 (forced): expect it to be slower than FP16")
    if precision == "fp16" and fast_fp16 is False:
        warnings.append("this GPU has no fast FP16: an FP16 engine may be no faster than FP32")
    if precision == "fp32":
        return BuildPlan(precision, generation, "fp32", [], strongly_typed, warnings)
    if precision == "fp16":
        if strongly_typed:
            return BuildPlan(precision, generation, "fp16", [], True, warnings)
        return BuildPlan(precision, generation, "fp32", ["FP16"], False, warnings)
    if strongly_typed:
        warnings.append("a strongly typed INT8 build runs every layer outside the Q/DQ pairs in the graph's own "
                        "float type, FP32 here (earlier releases also had the FP16 flag): compare its speed "
                        "with the fp16 engine's (jetcap bench)")
        return BuildPlan(precision, generation, "int8", [], True, warnings)
    flags = ["INT8"]
    if fast_fp16 is not False:
        flags.append("FP16")
    return BuildPlan(precision, generation, "int8", flags, False, warnings)


# The tactic sources that load a whole library into the process at run time: on by default before
# TensorRT 8.5 (cuBLAS + cuDNN: about 400 MB of a Nano's shared RAM, jetcap.check.memory), off by default
# since 10.  Names a release lacks are skipped.
LIBRARY_TACTIC_SOURCES = ("CUBLAS", "CUBLAS_LT", "CUDNN")


def tactic_sources_mask(mask, library_bits, libraries):
    """The builder's tactic-source bit mask with the library sources on or off.

    Args:
        mask: the builder config's default mask (``IBuilderConfig.get_tactic_sources()``).
        library_bits: the bit positions of :data:`LIBRARY_TACTIC_SOURCES` in this release.
        libraries: True (on), False (off) or None (``mask`` unchanged: the release's default).
    """
    mask = int(mask)
    if libraries is None:
        return mask
    bits = 0
    for position in library_bits:
        bits |= 1 << int(position)
    return mask | bits if libraries else mask & ~bits


def workspace_bytes(workspace_mb):
    """``workspace_mb`` MiB in bytes; UsageError unless it is a positive integer."""
    try:
        value = int(workspace_mb)
    except (TypeError, ValueError):
        raise UsageError("workspace size must be an integer number of MiB, got {!r}".format(workspace_mb))
    if value < 1:
        raise UsageError("workspace size must be at least 1 MiB, got {}".format(value))
    return value << 20


def load_tensorrt():
    """Import and return the real ``tensorrt`` module; MissingDependencyError (exit 2) when unusable.

    A ``tensorrt`` directory holding only type stubs (the ``tensorrt-stubs`` package) imports as an empty
    namespace package; that counts as missing, as does a wheel whose shared libraries fail to load.
    """
    trt = require("tensorrt")
    if not hasattr(trt, "Builder") or not hasattr(trt, "__version__"):
        location = ", ".join(str(path) for path in getattr(trt, "__path__", []))
        raise MissingDependencyError(
            "the tensorrt found{} is not a usable TensorRT (type stubs only or an incomplete install)".format(
                " in " + location if location else ""),
            hint=INSTALL_HINTS["tensorrt"])
    return trt


def tensorrt_available():
    """True when a usable TensorRT imports (see :func:`load_tensorrt`)."""
    try:
        load_tensorrt()
    except MissingDependencyError:
        return False
    return True


def tensorrt_version():
    """The installed TensorRT version as a tuple of ints (MissingDependencyError when not installed)."""
    return parse_version(load_tensorrt().__version__)


class LazyTensorRT(object):
    """Stands in for the ``tensorrt`` module until an attribute is first used, then imports it.

    Modules write ``trt = LazyTensorRT()`` at run time (and ``import tensorrt as trt`` only under
    ``typing.TYPE_CHECKING``, so mypy checks every call against the TensorRT stubs).
    """

    def __getattr__(self, name):
        return getattr(load_tensorrt(), name)


_LOGGERS = {}  # type: Dict[bool, Any]


def get_logger(verbose=False):
    """The process-wide ``trt.Logger`` (TensorRT wants a single one): WARNING, or VERBOSE if ``verbose``."""
    trt = load_tensorrt()
    key = bool(verbose)
    if key not in _LOGGERS:
        _LOGGERS[key] = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    return _LOGGERS[key]
