"""Keypoint sequences from files: .npy or JSON ``(T, F)`` (Python 3.6)."""
import json
import os

import numpy as np

from jetcap.errors import UsageError

SEQUENCE_SUFFIXES = (".npy", ".json")


def load_sequence(path):
    """A (T, F) float32 sequence from ``.npy`` or JSON (a list of frames or ``{"sequence": [...]}``)."""
    path = str(path)
    try:
        if path.lower().endswith(".npy"):
            array = np.load(path, allow_pickle=False)
        else:
            with open(path, "r") as handle:
                data = json.load(handle)
            array = np.asarray(data["sequence"] if isinstance(data, dict) else data, dtype=np.float32)
    except (IOError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError("{} is not a readable sequence: {}".format(os.path.basename(path), exc))
    return check_sequence(array, os.path.basename(path))


def check_sequence(array, name="sequence", width=None, max_len=None, min_len=1):
    """``array`` as a C-contiguous float32 (T, F); UsageError for a wrong rank, width, length or NaN/Inf.

    Args:
        array: array-like.
        name: used in messages.
        width: expected F (None: any).
        max_len, min_len: bounds of T (the bundle's positional-encoding length bounds max_len).
    """
    try:
        array = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise UsageError("{} is not numeric: {}".format(name, exc))
    if array.ndim != 2:
        raise UsageError("{} has shape {}, expected (T, F)".format(name, array.shape))
    if width is not None and array.shape[1] != width:
        raise UsageError("{} has {} features per frame, the model expects {}".format(name, array.shape[1], width))
    if array.shape[0] < min_len:
        raise UsageError("{} has {} frames, the model needs at least {}".format(name, array.shape[0], min_len))
    if max_len is not None and array.shape[0] > max_len:
        raise UsageError("{} has {} frames, more than the bundle's maximum of {} (its positional encoding)".format(
            name, array.shape[0], max_len), hint="trim or split the sequence")
    if not np.all(np.isfinite(array)):
        raise UsageError("{} contains NaN or infinite values".format(name))
    return np.ascontiguousarray(array)
