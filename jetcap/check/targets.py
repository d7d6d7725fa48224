"""Which TensorRT a pre-flight checks against, and the device it will run on.

``--target nano|xavier-nx|xavier|orin-nano|orin`` names a Jetson module and the TensorRT of the newest
JetPack that supports it; ``--tensorrt VERSION`` names a TensorRT release alone (no device: no memory plan,
no precision facts).  Both together check that TensorRT on that device.  Versions are parsed with
:func:`jetcap.runtime.backends.trt_api.parse_version` and compared as tuples.

JetPack -> TensorRT (NVIDIA's JetPack release notes, cross-checked against public issue threads):
4.6 -> 8.0.1, 4.6.1-4.6.6 -> 8.2.1 (the last JetPack line for the Nano and the TX2), 5.1.x -> 8.5.2,
6.0 -> 8.6.2, 6.1/6.2 -> 10.3.
"""
import collections

from jetcap.errors import UsageError
from jetcap.runtime.backends.trt_api import format_version, parse_version

Device = collections.namedtuple("Device", [
    "name", "title", "jetpack", "tensorrt", "compute_capability", "ram_mb", "os_reserve_mb", "cuda"])
Device.__doc__ = """A Jetson module: ``title`` (for messages), the newest ``jetpack`` that supports it and the
``tensorrt`` version it ships (str), ``compute_capability`` ((major, minor)), ``ram_mb`` (memory shared by CPU
and GPU), ``os_reserve_mb`` (what L4T itself keeps: kernel, carve-outs, a headless Ubuntu; a desktop session
takes about 1 GB more) and the ``cuda`` version of that JetPack."""

DEVICES = {
    "nano": Device("nano", "Jetson Nano 4 GB", "4.6.x", "8.2.1", (5, 3), 3964, 700, "10.2"),
    "xavier-nx": Device("xavier-nx", "Jetson Xavier NX 8 GB", "5.1.x", "8.5.2", (7, 2), 7620, 900, "11.4"),
    "xavier": Device("xavier", "Jetson AGX Xavier 32 GB", "5.1.x", "8.5.2", (7, 2), 31011, 1200, "11.4"),
    "orin-nano": Device("orin-nano", "Jetson Orin Nano 8 GB", "6.2", "10.3", (8, 7), 7620, 900, "12.6"),
    "orin": Device("orin", "Jetson AGX Orin 32 GB", "6.2", "10.3", (8, 7), 30536, 1200, "12.6"),
}

Target = collections.namedtuple("Target", ["tensorrt", "device"])
Target.__doc__ = """What to check against: ``tensorrt`` (version tuple) and ``device`` (a :class:`Device` or None)."""

DEFAULT_TARGET = "nano"


def resolve_target(tensorrt=None, target=None):
    """The :class:`Target` of a pre-flight.

    Args:
        tensorrt: TensorRT version (``"8.2"``, ``"10.3.0"``, a tuple) or None: the device's.
        target: a device name of :data:`DEVICES`, or a TensorRT version written as a target, or None.
            With neither argument the target is ``"nano"`` (the smallest device jetcap supports).
    Raises:
        UsageError: an unknown device or an unparseable version.
    """
    device = None
    if target is not None:
        key = str(target).strip().lower()
        if key in DEVICES:
            device = DEVICES[key]
        elif tensorrt is None:
            tensorrt = key  # --target 8.6: a version, no device
        else:
            raise UsageError("unknown target {!r} (devices: {})".format(target, ", ".join(sorted(DEVICES))))
    if tensorrt is None and device is None:
        device = DEVICES[DEFAULT_TARGET]
    try:
        version = parse_version(tensorrt if tensorrt is not None else device.tensorrt)
    except UsageError:
        raise UsageError("unknown target or TensorRT version {!r} (devices: {}; versions like 8.2, 8.6, 10.3)".format(
            tensorrt if tensorrt is not None else target, ", ".join(sorted(DEVICES))))
    return Target(version, device)


def describe(target):
    """``"TensorRT 8.2.1 on Jetson Nano 4 GB (JetPack 4.6.x, SM 5.3)"`` or ``"TensorRT 8.6"``."""
    text = "TensorRT {}".format(format_version(target.tensorrt))
    if target.device is not None:
        device = target.device
        text += " on {} (JetPack {}, SM {}.{})".format(device.title, device.jetpack, *device.compute_capability)
    return text
