"""Class labels of a classifier from whatever a checkpoint or a side file holds.

Accepted: a list of names (``classes``), a ``{name: id}`` or ``{id: name}`` map (``label_map``), a
numpy array of names, a text file with one name per line, and a pickled scikit-learn
``LabelEncoder`` -- read **without importing scikit-learn and without trusting the pickle**: a
restricted unpickler allows only numpy's array-reconstruction globals and maps the LabelEncoder
class onto an inert placeholder that just keeps its state; any other global is refused.
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from jetcap.errors import CheckpointError, UsageError

# Entry names under which checkpoints keep their class names, most specific first.
LABEL_KEYS = ("classes", "class_names", "labels", "label_names", "label_map", "class_to_idx", "idx_to_class",
              "label_encoder", "encoder_classes", "actions")

# Where scikit-learn has kept LabelEncoder (0.22+ and older releases).
LABEL_ENCODER_GLOBALS = ("sklearn.preprocessing._label.LabelEncoder", "sklearn.preprocessing.label.LabelEncoder")


class InertLabelEncoder:
    """Stands in for ``sklearn.preprocessing.LabelEncoder`` while unpickling; keeps the state only."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.state: Dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("a LabelEncoder state must be a dict, got {}".format(type(state).__name__))
        self.state = dict(state)

    @property
    def classes(self) -> List[str]:
        """The encoder's ``classes_`` as strings; CheckpointError if it was never fitted."""
        if "classes_" not in self.state:
            raise CheckpointError("the pickled LabelEncoder has no classes_ (it was never fitted)")
        return [_label_text(c) for c in np.asarray(self.state["classes_"]).tolist()]


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """Safe stand-in for ``copyreg._reconstructor`` (protocol 0/1 pickles): only the placeholder."""
    if cls is not InertLabelEncoder or base is not object or state is not None:
        raise pickle.UnpicklingError("copyreg._reconstructor is only allowed for LabelEncoder")
    return InertLabelEncoder.__new__(InertLabelEncoder)


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Safe stand-in for ``_codecs.encode``: only str -> bytes with latin-1 (what pickle emits)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed for latin-1 text")
    return text.encode("latin-1")


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """Safe stand-in for numpy's ``_frombuffer`` (arrays in protocol-5 pickles)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F"):
        raise RefusedGlobal("numpy _frombuffer is only allowed for plain dtypes")
    array = np.frombuffer(buffer, dtype=dtype)
    return array.reshape(tuple(shape), order="F") if order == "F" else array.reshape(tuple(shape))


def _numpy_globals() -> Dict[str, Any]:
    """The numpy globals an array of strings or numbers needs, under numpy 1.x and 2.x names."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's own _reconstruct, whatever its module
    scalar = np.float64(0).__reduce__()[0]
    out: Dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[module + "._reconstruct"] = reconstruct
        out[module + ".scalar"] = scalar
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        out[module + "._frombuffer"] = _frombuffer
    return out


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle referenced a global the restricted unpickler does not allow."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy array globals and the LabelEncoder placeholder."""

    def find_class(self, module: str, name: str) -> Any:
        full = "{}.{}".format(module, name)
        if full in LABEL_ENCODER_GLOBALS:
            return InertLabelEncoder
        if full in ("copyreg._reconstructor", "copy_reg._reconstructor"):  # protocols 0 and 1
            return _reconstructor
        if full in ("builtins.object", "__builtin__.object"):
            return object
        if full == "_codecs.encode":  # how protocol-2 pickles spell bytes
            return _latin1_encode
        allowed = _numpy_globals()
        if full in allowed:
            return allowed[full]
        raise RefusedGlobal("refused global {}".format(full))


def restricted_loads(data: bytes, source: str = "pickle") -> Any:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`; CheckpointError naming any refused global."""
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except RefusedGlobal as exc:
        raise CheckpointError("{} cannot be read safely: {}".format(source, exc),
                              hint="only plain lists/dicts, numpy arrays and scikit-learn LabelEncoders are "
                                   "accepted; save the class names as JSON and pass --labels") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise CheckpointError("{} is not a readable pickle: {}".format(source, exc)) from None


def _label_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def labels_from_value(value: Any, source: str) -> List[str]:
    """Class names (index = class id) from a list/tuple/array, a map, a LabelEncoder or its pickle.

    Args:
        value: what a checkpoint entry or side file holds.
        source: where it came from, for messages (e.g. ``"checkpoint['label_map']"``).
    """
    if isinstance(value, (bytes, bytearray)):
        value = restricted_loads(bytes(value), source)
    if isinstance(value, InertLabelEncoder):
        return value.classes
    if hasattr(value, "classes_") and not isinstance(value, Mapping):  # a real LabelEncoder (trusted load)
        return [_label_text(c) for c in np.asarray(value.classes_).tolist()]
    if isinstance(value, np.ndarray):
        if value.ndim != 1:
            raise CheckpointError("{}: expected a 1-D array of class names, got shape {}".format(source, value.shape))
        return [_label_text(c) for c in value.tolist()]
    if isinstance(value, Mapping):
        if "classes" in value and not _looks_like_label_map(value):
            return labels_from_value(value["classes"], source + "['classes']")
        return _labels_from_map(value, source)
    if isinstance(value, (list, tuple)):
        if not value:
            raise CheckpointError("{} is an empty list of class names".format(source))
        return [_label_text(v) for v in value]
    raise CheckpointError("{}: cannot read class names from a {}".format(source, type(value).__name__))


def _as_int(value: Any) -> Optional[int]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a 0-d tensor or array
        item = value.item()
        return int(item) if isinstance(item, int) else None
    return None


def _looks_like_label_map(value: Mapping) -> bool:
    return all(_as_int(v) is not None for v in value.values()) or all(_as_int(k) is not None for k in value)


def _labels_from_map(value: Mapping, source: str) -> List[str]:
    """``{name: id}`` or ``{id: name}`` (JSON keys are strings) -> names ordered by id."""
    if not value:
        raise CheckpointError("{} is an empty label map".format(source))
    values_are_ids = all(_as_int(v) is not None for v in value.values()) and not all(
        _as_int(k) is not None for k in value)
    by_id: Dict[int, str] = {}
    if values_are_ids:
        by_id = {int(_as_int(v) or 0): _label_text(k) for k, v in value.items()}
    elif all(_as_int(k) is not None for k in value):
        by_id = {int(_as_int(k) or 0): _label_text(v) for k, v in value.items()}
    else:
        raise CheckpointError("{}: a label map must be {{name: id}} or {{id: name}}".format(source))
    if sorted(by_id) != list(range(len(value))):
        raise CheckpointError("{}: class ids must be 0..{} without gaps or duplicates, got {}".format(
            source, len(value) - 1, sorted(by_id)[:10]))
    return [by_id[i] for i in range(len(value))]


def labels_from_checkpoint(entries: Mapping[str, Any]) -> Optional[tuple]:
    """``(labels, key)`` from the first known label entry of a checkpoint dict, or None."""
    for key in LABEL_KEYS:
        if key in entries and entries[key] is not None:
            return labels_from_value(entries[key], "checkpoint[{!r}]".format(key)), key
    return None


def side_labels_warning(side: Sequence[str], found: Optional[tuple], side_name: str) -> Optional[str]:
    """The warning (a ``"warning: "`` note, which export prints) when a side file's class names ``side``
    contradict the checkpoint's own ``found`` (``(labels, key)`` of :func:`labels_from_checkpoint`, None
    when it has none): the side file wins, as asked, but if it is the wrong file every answer is printed
    under another class's name.  None when they agree."""
    if found is None or list(found[0]) == list(side):
        return None
    return ("warning: {} names the classes otherwise than the checkpoint does ({}: {}...); the file's names are "
            "used: leave out --labels for the checkpoint's own, in their training order".format(
                side_name, found[1], ", ".join(str(x) for x in list(found[0])[:4])))


def labels_from_file(path: Path) -> List[str]:
    """Class names from a side file: JSON (list or map), ``.pkl``/``.pickle`` (LabelEncoder, list, map,
    read with the restricted unpickler), ``.npy`` (array of names, no pickle) or text (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError("labels file not found: {}".format(path))
    suffix = path.suffix.lower()
    source = "labels file {}".format(path)
    data = path.read_bytes()
    if suffix in (".pkl", ".pickle", ".joblib") or data[:1] == b"\x80":
        return labels_from_value(restricted_loads(data, source), source)
    if suffix == ".npy":
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except ValueError as exc:
            raise CheckpointError("{} cannot be read without pickle: {}".format(source, exc),
                                  hint="save the class names as a string array or JSON") from None
        return labels_from_value(array, source)
    text = data.decode("utf-8-sig")
    if suffix == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise UsageError("{} is not valid JSON: {}".format(source, exc)) from None
        if isinstance(value, dict):
            for key in LABEL_KEYS:
                if key in value and not _looks_like_label_map(value):
                    return labels_from_value(value[key], source + "[{!r}]".format(key))
        return labels_from_value(value, source)
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UsageError("{} is empty".format(source))
    return names


def check_label_count(labels: Sequence[str], num_classes: Optional[int], source: str) -> None:
    """CheckpointError when the model's output size disagrees with the number of labels."""
    if num_classes is not None and len(labels) != int(num_classes):
        raise CheckpointError("{} has {} class names but the model outputs {} classes".format(
            source, len(labels), num_classes))
    if len(set(labels)) != len(labels):
        duplicates = sorted({name for name in labels if list(labels).count(name) > 1})
        raise CheckpointError("{} repeats class names: {}".format(source, ", ".join(duplicates[:5])))
