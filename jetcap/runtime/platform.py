"""GPU and platform facts: compute capability -> fast FP16/INT8, Jetson detection (Python 3.6).

Everything that decides something is a plain function over strings and tuples (tested everywhere);
the readers at the bottom only gather those strings from the machine (``/etc/nv_tegra_release``,
``/proc/device-tree/model``, pycuda, ``nvidia-smi``) and never fail: an unknown fact is ``None``.
"""
import collections
import os
import re
import subprocess

from jetcap.util.lazy import available, require

GpuInfo = collections.namedtuple(
    "GpuInfo", ["name", "compute_capability", "total_memory_bytes", "integrated", "source"])
GpuInfo.__doc__ = """What jetcap knows about the GPU: ``name`` (str), ``compute_capability`` ((major, minor)
or None), ``total_memory_bytes`` (int or None), ``integrated`` (True when the GPU shares system RAM, as on
every Jetson; None when unknown) and ``source`` (where the facts came from: "pycuda", "jetson",
"nvidia-smi")."""

JetsonInfo = collections.namedtuple("JetsonInfo", ["model", "l4t", "board", "compute_capability"])
JetsonInfo.__doc__ = """A Jetson module: ``model`` (device-tree model string or None), ``l4t`` (L4T release as
(major, minor, patch) or None), ``board`` (e.g. "t210ref" or None) and ``compute_capability``."""

# compute capability -> (fast FP16, fast INT8), after NVIDIA's TensorRT hardware/precision matrix.
# Capabilities not listed: >= 7.0 has both (tensor cores / DP4A), below 5.3 neither.
PRECISION_SUPPORT = {
    (5, 3): (True, False),  # Jetson Nano / TX1 (Maxwell): native FP16, no DP4A
    (6, 0): (True, False),  # P100
    (6, 1): (False, True),  # GTX 10xx / P4 / P40: DP4A INT8, FP16 at 1/64 rate
    (6, 2): (True, False),  # Jetson TX2
}

# Jetson SoC -> compute capability; keys are matched against the device-tree model and the L4T board
JETSON_SOCS = (
    ("orin", (8, 7)),
    ("t234", (8, 7)),
    ("xavier", (7, 2)),
    ("t194", (7, 2)),
    ("tx2", (6, 2)),
    ("t186", (6, 2)),
    ("nano", (5, 3)),
    ("tx1", (5, 3)),
    ("t210", (5, 3)),
)

# L4T major.minor -> JetPack release (informative; used in messages and docs)
L4T_TO_JETPACK = {
    (32, 4): "4.4", (32, 5): "4.5", (32, 6): "4.6", (32, 7): "4.6.x",
    (35, 1): "5.0.2", (35, 2): "5.1", (35, 3): "5.1.1", (35, 4): "5.1.2", (35, 5): "5.1.3",
    (36, 2): "6.0 DP", (36, 3): "6.0", (36, 4): "6.1/6.2",
}


def parse_compute_capability(text):
    """``"5.3"`` / ``"8.6"`` / ``(7, 2)`` -> ``(major, minor)`` tuple of ints; ValueError otherwise."""
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise ValueError("compute capability needs (major, minor), got {!r}".format(text))
        return int(text[0]), int(text[1])
    match = re.match(r"^\s*(\d+)\.(\d+)\s*$", str(text))
    if not match:
        raise ValueError("not a compute capability: {!r}".format(text))
    return int(match.group(1)), int(match.group(2))


def format_compute_capability(capability):
    """``(5, 3)`` or ``"5.3"`` -> ``"5.3"``; None -> ``"unknown"``."""
    if capability is None:
        return "unknown"
    major, minor = parse_compute_capability(capability)
    return "{}.{}".format(major, minor)


def precision_support(capability):
    """``(fast_fp16, fast_int8)`` of a GPU with compute capability ``capability`` ((major, minor)).

    Returns ``(None, None)`` when ``capability`` is None (unknown GPU).
    """
    if capability is None:
        return None, None
    capability = parse_compute_capability(capability)
    if capability in PRECISION_SUPPORT:
        return PRECISION_SUPPORT[capability]
    if capability >= (7, 0):
        return True, True
    return False, False


def parse_tegra_release(text):
    """Parse ``/etc/nv_tegra_release`` -> ``(l4t (major, minor, patch), board)``.

    The file reads like ``# R32 (release), REVISION: 6.1, GCID: 27863751, BOARD: t210ref, EABI: aarch64,
    DATE: ...``.  Returns ``(None, None)`` when the text is not in that form.
    """
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text or "")
    if not match:
        return None, None
    l4t = (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))
    board = re.search(r"BOARD:\s*([A-Za-z0-9_]+)", text)
    return l4t, (board.group(1) if board else None)


def clean_device_tree_model(raw):
    """The device-tree model as text: bytes decoded, trailing NUL bytes and whitespace removed."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return (raw or "").replace("\x00", "").strip()


def jetson_compute_capability(model=None, board=None):
    """Compute capability of a Jetson from its device-tree ``model`` or L4T ``board``; None if unknown."""
    for text in (model, board):
        lowered = (text or "").lower()
        if not lowered:
            continue
        for key, capability in JETSON_SOCS:
            if key in lowered:
                return capability
    return None


def jetpack_release(l4t):
    """The JetPack release of an L4T version ``(major, minor, patch)``, or None when not in the table."""
    if l4t is None:
        return None
    return L4T_TO_JETPACK.get((l4t[0], l4t[1]))


def parse_nvidia_smi(text):
    """Parse ``nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader,nounits``.

    Returns a :class:`GpuInfo` for the first GPU listed, or None when the text has no usable line.
    """
    for line in (text or "").splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) < 3 or not parts[0]:
            continue
        try:
            capability = parse_compute_capability(parts[1])
        except ValueError:
            capability = None
        try:
            total = int(float(parts[2]) * (1 << 20))
        except ValueError:
            total = None
        return GpuInfo(parts[0], capability, total, False, "nvidia-smi")
    return None


# -- readers (gather facts from this machine; never raise) ----------------------------------------
def _read_text(path):
    try:
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except (IOError, OSError):
        return None


def read_jetson_info(root="/"):
    """A :class:`JetsonInfo` when this machine (rooted at ``root``) is a Jetson, else None.

    Args:
        root: filesystem root to read from (tests point it at a directory holding the two files).
    """
    release = _read_text(os.path.join(root, "etc", "nv_tegra_release"))
    model_text = _read_text(os.path.join(root, "proc", "device-tree", "model"))
    model = clean_device_tree_model(model_text) if model_text else None
    l4t, board = parse_tegra_release(release) if release else (None, None)
    if release is None and not (model and "jetson" in model.lower()):
        return None
    return JetsonInfo(model, l4t, board, jetson_compute_capability(model, board))


def _pycuda_gpu(device_index):
    """Facts from pycuda's driver API (None when pycuda is absent or no device answers)."""
    if not available("pycuda.driver"):
        return None
    cuda = require("pycuda.driver")
    try:
        cuda.init()
        device = cuda.Device(device_index)
        integrated = bool(device.get_attribute(cuda.device_attribute.INTEGRATED))
        return GpuInfo(device.name(), tuple(device.compute_capability()), int(device.total_memory()),
                       integrated, "pycuda")
    except cuda.Error:  # no driver / no device: the fact stays unknown
        return None


def _nvidia_smi_gpu():
    try:
        output = subprocess.check_output(
            ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader,nounits"],
            stderr=subprocess.STDOUT, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(output.decode("utf-8", "replace"))


def detect_gpu(device_index=0, root="/"):
    """What is known about GPU ``device_index``: a :class:`GpuInfo`, or None when no GPU is found.

    On a Jetson the name is the device-tree model (the same whether or not pycuda is installed, so
    engine cache keys stay stable) and the GPU is integrated; elsewhere pycuda, then ``nvidia-smi``.
    """
    jetson = read_jetson_info(root)
    gpu = _pycuda_gpu(device_index)
    if jetson is not None:
        capability = gpu.compute_capability if gpu is not None else jetson.compute_capability
        return GpuInfo(jetson.model or "Jetson ({})".format(jetson.board or "unknown board"), capability,
                       gpu.total_memory_bytes if gpu is not None else None, True, "jetson")
    if gpu is not None:
        return gpu
    return _nvidia_smi_gpu()
