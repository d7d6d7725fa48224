"""Keypoint sequences from files: .npy or JSON ``(T, F)`` (Python 3.6)."""
import json
import os
import re

import numpy as np

from jetcap.errors import UsageError

SEQUENCE_SUFFIXES = (".npy", ".json")


class SequenceLengthError(UsageError):
    """A readable sequence of the right width whose number of frames is outside the bounds asked for
    (``validate --data`` skips such files, where every other UsageError stops the run)."""


# a (T, F) sequence is two levels deep; anything far deeper is hostile (and would hit the recursion limit)
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 64
#: the largest input magnitude accepted, a heuristic bound: its square stays finite in float32 (max 3.4e38)
#: with some room for sums; a model whose first layers amplify much more can still overflow below it
MAX_ABS_VALUE = 1e18


def _parse_number(text):
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError("a number of {} characters".format(len(text)))
    return float(text)  # never an int: huge integers become inf (refused later), not OverflowError


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_depth_ok(text, limit):
    """False when brackets in ``text`` nest deeper than ``limit`` (strings skipped); cheap, before parsing."""
    depth = 0
    for match in _JSON_TOKEN.finditer(text):
        ch = match.group(0)
        if ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def parse_sequence_json(text, name="sequence"):
    """Parse JSON text of a sequence (or of a request holding one); UsageError for anything hostile.

    Nesting deeper than :data:`MAX_JSON_DEPTH`, numbers longer than :data:`MAX_NUMBER_CHARS` characters and
    malformed JSON are one-line UsageErrors; integers are read as floats (so 400 digits are ``inf``, which
    :func:`check_sequence` refuses) and NaN/Infinity literals are refused there too.
    """
    if not _json_depth_ok(text, MAX_JSON_DEPTH):
        raise UsageError("{} nests JSON deeper than {} levels (a sequence is [[...], ...])".format(
            name, MAX_JSON_DEPTH))
    try:
        return json.loads(text, parse_int=_parse_number, parse_float=_parse_number)
    except RecursionError:
        raise UsageError("{} nests JSON too deeply".format(name))
    except ValueError as exc:
        raise UsageError("{} is not valid JSON: {}".format(name, str(exc)[:200]))


def load_sequence(path, max_len=None, width=None):
    """A (T, F) float32 sequence from ``.npy`` or JSON (a list of frames or ``{"sequence": [...]}``).

    A ``.npy`` file's header is read first and its shape checked against ``max_len`` / ``width`` before
    any data is read; the data is memory-mapped, so a 2 GB file costs nothing until it passed.
    """
    path = str(path)
    name = os.path.basename(path)
    try:
        if path.lower().endswith(".npy"):
            array = _load_npy(path, name, max_len, width)
        else:
            with open(path, "rb") as handle:
                raw = handle.read(MAX_JSON_BYTES + 1)
            if len(raw) > MAX_JSON_BYTES:
                raise UsageError("{} is over {} MiB of JSON; use .npy for long sequences".format(
                    name, MAX_JSON_BYTES >> 20))
            try:
                data = parse_sequence_json(raw.decode("utf-8"), "the file")
            except UsageError as exc:
                raise UsageError("{} is not a readable sequence: {}".format(name, exc))
            if isinstance(data, dict):
                if "sequence" not in data:
                    raise UsageError('{} is a JSON object without "sequence"'.format(name))
                data = data["sequence"]
            array = data
    except UnicodeDecodeError:
        raise UsageError("{} is not UTF-8 JSON".format(name))
    except (IOError, OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError("{} is not a readable sequence: {}".format(name, exc))
    return check_sequence(array, name, width=width, max_len=max_len)


MAX_JSON_BYTES = 64 << 20


def _load_npy(path, name, max_len, width):
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            raise UsageError("{} is not a readable sequence: .npy format version {}".format(name, version))
        data_offset = handle.tell()
    if any(int(dim) < 0 for dim in shape):
        raise UsageError("{} is not a readable sequence: its header declares the shape {}".format(name, tuple(shape)))
    if dtype.hasobject:
        raise UsageError("{} is not a readable sequence: it holds Python objects (pickles are never loaded)".format(
            name))
    if os.path.getsize(path) < data_offset + _frame_size((1,) + tuple(shape)) * dtype.itemsize:
        raise UsageError("{} is truncated: its header declares a {} array of {} that the file does not hold".format(
            name, tuple(shape), dtype))
    if dtype.kind not in "iuf":  # booleans are not coordinates (JSON true/false is refused too)
        raise UsageError("{} is not a readable sequence: it holds {} values, not numbers".format(name, dtype))
    if len(shape) > 2 and width is not None and _frame_size(shape) == width:
        shape = (shape[0], width)  # (T, hands, joints, xyz): flattened per frame below
    if len(shape) != 2:
        raise UsageError("{} has shape {}, expected (T, F){}".format(name, shape, _wanted(width)))
    if width is not None and shape[1] != width:
        raise UsageError("{} has {} features per frame, the model expects {}".format(name, shape[1], width))
    if max_len is not None and shape[0] > max_len:
        raise SequenceLengthError("{} has {} frames, more than the bundle's maximum of {} (its T axis)".format(
            name, shape[0], max_len), hint="trim or split the sequence")
    if 0 in shape:
        return np.zeros(shape, dtype=np.float32)
    return np.load(path, mmap_mode="r", allow_pickle=False).reshape(shape)


def _wanted(width):
    return "" if width is None else " with F = {} (or frames of {} values, e.g. (T, hands, joints, xyz))".format(
        width, width)


def _frame_size(shape):
    size = 1
    for dim in shape[1:]:
        size *= int(dim)
    return size


def _check_numbers(rows, name):
    """UsageError unless the nested lists ``rows`` (parsed JSON) hold only numbers: numpy would otherwise
    read ``"1"`` and ``true`` as 1.0."""
    stack = [rows]
    while stack:
        for value in stack.pop():
            if isinstance(value, (list, tuple)):
                stack.append(value)
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError("{} holds a {} value ({}), not a number".format(
                    name, type(value).__name__, json.dumps(value)[:20] if isinstance(value, (str, bool)) or
                    value is None else "[...]"))


def check_sequence(array, name="sequence", width=None, max_len=None, min_len=1):
    """``array`` as a C-contiguous float32 (T, F); UsageError for a wrong rank, width, length or NaN/Inf.

    Args:
        array: array-like.
        name: used in messages.
        width: expected F (None: any).
        max_len, min_len: bounds of T (the bundle's positional-encoding length bounds max_len).
    """
    if isinstance(array, (list, tuple)):
        _check_numbers(array, name)
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below in one line
            array = np.asarray(array, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        if isinstance(array, (list, tuple)) and "inhomogeneous" in str(exc):
            raise UsageError("{} has frames of different lengths: every frame needs the same number of "
                             "values{}".format(name, "" if width is None else " ({})".format(width)))
        raise UsageError("{} is not numeric: {}".format(name, exc))
    if array.ndim > 2 and width is not None and _frame_size(array.shape) == width:
        array = array.reshape(array.shape[0], width)  # (T, hands, joints, xyz) -> (T, F), row-major
    if array.ndim != 2:
        raise UsageError("{} has shape {}, expected (T, F){}".format(name, array.shape, _wanted(width)))
    if width is not None and array.shape[1] != width:
        raise UsageError("{} has {} features per frame, the model expects {}".format(name, array.shape[1], width))
    if array.shape[0] < min_len:
        raise SequenceLengthError("{} has {} frames, the model needs at least {}".format(
            name, array.shape[0], min_len))
    if max_len is not None and array.shape[0] > max_len:
        raise SequenceLengthError("{} has {} frames, more than the bundle's maximum of {} (its T axis)".format(
            name, array.shape[0], max_len), hint="trim or split the sequence")
    if not np.all(np.isfinite(array)):
        raise UsageError("{} contains NaN or infinite values".format(name))
    largest = float(max(array.max(), -array.min())) if array.size else 0.0  # no |array| temporary
    if largest > MAX_ABS_VALUE:
        # squares and dot products of such values overflow float32 inside the model, and whether that ends
        # in inf, NaN or a label depends on the backend's kernels: there is no defined answer to compare
        raise UsageError("{} has values as large as {:.3g}: beyond +-{:.0e} the model's float32 arithmetic "
                         "overflows (its answer depends on the backend, not on the input)".format(
                             name, largest, MAX_ABS_VALUE))
    return np.ascontiguousarray(array)
