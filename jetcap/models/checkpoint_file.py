"""Reading a checkpoint file safely: format sniffing, ``weights_only`` loading, and the trusted path.

``torch.load(weights_only=True)`` is always tried first.  A few globals are mapped onto inert
placeholders so that tensors-only data stays loadable without trust: the packed weights of
dynamically quantized RNNs (``torch.ScriptObject``), numpy arrays of class names, and scikit-learn
LabelEncoders.  Anything else pickled (modules, optimizers, user classes, ``__reduce__`` payloads)
is refused with the names of the globals unless the caller passes ``trust_pickle`` -- then
``torch.load(weights_only=False)`` runs with ``code_path`` on ``sys.path`` and classes pickled from
``__main__`` (a training script) resolved from the modules in ``code_path``.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import json
import os
import pickle
import pickletools
import struct
import sys
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from jetcap.errors import CheckpointError, UsageError
from jetcap.models.labels import LABEL_ENCODER_GLOBALS, InertLabelEncoder
from jetcap.models.state_dict import InertScriptObject
from jetcap.runtime.memory import format_bytes
from jetcap.util.pyfile import import_python_file

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of torch's pre-1.6 (non-zip) format
TRUST_HINT = "if you trust the file's source, pass --trust-pickle"

_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "an executable"),
    (b"\x08\x01\x12", "possibly an ONNX model"),
)

# torch.save stores archive members uncompressed; a member inflating beyond this ratio is a
# decompression bomb, not a checkpoint.  Members under the floor are not judged (tiny files compress well).
MAX_COMPRESSION_RATIO = 200
_RATIO_FLOOR = 1 << 20
# The safetensors package's own limit on the JSON header.
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024

_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass
class RawCheckpoint:
    """What a checkpoint file holds, as loaded, and how it was read."""

    obj: Any
    format: str  # "torch zip", "torch legacy", "torchscript", "safetensors" or "pickle"
    trusted: bool  # loaded with weights_only=False (code from the file may have run)


def _bad_zip(path: Path, exc: BaseException) -> CheckpointError:
    return CheckpointError("{} is a truncated or corrupted zip archive ({}); the checkpoint is incomplete, "
                           "was the download or copy interrupted?".format(path, exc))


def declared_size(path: Path) -> int:
    """The bytes loading ``path`` inflates to, read before anything is inflated.

    For a zip archive (torch.save, TorchScript) the sum of the member sizes its central directory
    declares; for any other file its size on disk.

    Raises:
        CheckpointError: the archive is unreadable, or declares sizes absurd for the file -- a member
            (or all of them together) over ``MAX_COMPRESSION_RATIO`` times its stored size.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        if handle.read(4) != b"PK\x03\x04":
            return size
    try:
        with zipfile.ZipFile(str(path)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise _bad_zip(path, exc) from None
    for info in members:
        if info.file_size > _RATIO_FLOOR and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise CheckpointError(
                "{}: archive member {} declares {} uncompressed from {} stored ({:.0f}x, over the {}x any real "
                "checkpoint needs); a decompression bomb, refused before inflating it".format(
                    path, info.filename, format_bytes(info.file_size), format_bytes(info.compress_size),
                    info.file_size / max(info.compress_size, 1), MAX_COMPRESSION_RATIO))
    total = sum(info.file_size for info in members)
    if total > _RATIO_FLOOR and total > MAX_COMPRESSION_RATIO * size:
        raise CheckpointError(
            "{}: its {} archive members declare {} in all from a {} file ({:.0f}x, over {}x); a decompression "
            "bomb, refused before inflating it".format(path, len(members), format_bytes(total), format_bytes(size),
                                                       total / max(size, 1), MAX_COMPRESSION_RATIO))
    return total


def sniff_format(path: Path) -> str:
    """``torch zip``, ``torchscript``, ``torch legacy``, ``pickle`` or ``safetensors``; CheckpointError
    naming what the file is otherwise (image, text, truncated archive, ...)."""
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("{} is empty, not a checkpoint".format(path))
    with path.open("rb") as handle:
        head = handle.read(512)
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(str(path)) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile as exc:
            raise _bad_zip(path, exc) from None
        if any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in names):
            return "torchscript"
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return "torch zip"
        raise CheckpointError("{} is a zip archive but not a PyTorch checkpoint (no data.pkl inside)".format(path))
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "torch legacy" if _is_legacy_torch(path) else "pickle"
    if size >= 10 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len <= size - 8:
            return "safetensors"
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            raise CheckpointError("{} is {}, not a PyTorch checkpoint".format(path, what))
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass  # not text either: fall through to the generic message
        else:
            raise CheckpointError("{} is a text file, not a PyTorch checkpoint (starts with {!r})".format(
                path, head[:40].decode("utf-8", "replace")))
    if path.suffix == ".safetensors" and size >= 8:
        return "safetensors"  # with a broken header: read_safetensors says what is wrong with it
    raise CheckpointError("{} is not a PyTorch checkpoint (unrecognised format, first bytes {})".format(
        path, head[:8].hex()))


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("no globals here")


def _is_legacy_torch(path: Path) -> bool:
    with path.open("rb") as handle:
        try:
            first = _NoGlobals(handle).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError):
            return False
    return isinstance(first, int) and first == TORCH_LEGACY_MAGIC


def inert_globals() -> List[Any]:
    """``(placeholder, "module.name")`` pairs and classes added to torch's weights_only allowlist."""
    reconstruct = np.ndarray.__reduce__(np.zeros(1))[0]
    scalar = np.float64(0).__reduce__()[0]
    out: List[Any] = [(InertScriptObject, "torch.ScriptObject"), np.ndarray, np.dtype]
    out += [(InertLabelEncoder, name) for name in LABEL_ENCODER_GLOBALS]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(reconstruct, module + "._reconstruct"), (scalar, module + ".scalar")]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25: one class per dtype, needed for BUILD
    if dtypes is not None:
        for name in getattr(dtypes, "__all__", []):
            cls = getattr(dtypes, name)
            out.append((cls, "numpy.dtypes." + name))
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def pickle_globals(data: bytes) -> List[str]:
    """``module.name`` of every GLOBAL/STACK_GLOBAL in one pickle stream (read statically, nothing runs)."""
    found: List[str] = []
    pushed: List[Any] = []  # what each pushing opcode put on the stack: a str, or None for anything else
    memo: Dict[int, Any] = {}
    try:
        for opcode, arg, _pos in pickletools.genops(data):
            name = opcode.name
            if name == "GLOBAL":
                found.append(str(arg).replace(" ", "."))
                pushed.append(None)
            elif name == "STACK_GLOBAL":
                if len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                    found.append("{}.{}".format(pushed[-2], pushed[-1]))
                pushed.append(None)
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING",
                          "SHORT_BINSTRING"):
                pushed.append(str(arg))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(str(arg))] = pushed[-1] if pushed else None
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else None
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(int(str(arg))))
            elif name == "STOP":
                break
            else:
                pushed.append(None)
    except ValueError:  # truncated stream: report what was seen
        pass
    return list(dict.fromkeys(found))


def unsafe_globals(path: Path, file_format: str) -> List[str]:
    """Globals in the checkpoint that weights_only loading (with the inert placeholders) refuses."""
    with torch.serialization.safe_globals(inert_globals()):
        if file_format == "torch zip":
            try:
                return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
            except (RuntimeError, ValueError) as exc:
                raise CheckpointError("{} cannot be read: {}".format(path, _first_line(exc))) from None
    data = path.read_bytes()
    names: List[str] = []
    stream = io.BytesIO(data)
    for _ in range(5 if file_format == "torch legacy" else 1):  # legacy: magic, protocol, sys info, data
        start = stream.tell()
        if start >= len(data):
            break
        names += pickle_globals(data[start:])
        try:
            _skip_pickle(stream)
        except (ValueError, EOFError):
            break
    inert = {name for entry in inert_globals() if isinstance(entry, tuple) for name in [entry[1]]}
    return sorted({n for n in names if not n.startswith("torch.") and n != "collections.OrderedDict"
                   and n not in inert and not n.startswith("numpy.")})


def _skip_pickle(stream: io.BytesIO) -> None:
    for opcode, _arg, _pos in pickletools.genops(stream):
        if opcode.name == "STOP":
            return
    raise EOFError


def _importable(module: str) -> bool:
    if module == "__main__":
        return False
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def refusal(path: Path, names: Sequence[str], what: str = "pickled Python objects, not only tensors") -> CheckpointError:
    """The CheckpointError for a file that needs ``--trust-pickle`` (and maybe ``--code-path``)."""
    ordered = sorted(names, key=lambda n: (n.startswith("torch."), n))
    shown = ", ".join(ordered[:8]) + (" and {} more".format(len(ordered) - 8) if len(ordered) > 8 else "")
    missing = sorted({n.rsplit(".", 1)[0] for n in ordered if not _importable(n.rsplit(".", 1)[0])})
    hint = TRUST_HINT
    if missing:
        hint += " and --code-path DIR (the folder with the code defining {})".format(
            ", ".join(m + ".*" for m in missing[:4]))
    return CheckpointError("{} contains {} ({}); loading it would run code from the file, so it was refused".format(
        path, what, shown), hint=hint)


# -- trusted loading -------------------------------------------------------------------------------

class _CodePath:
    """``code_path`` on sys.path for the duration of a trusted load, and ``__main__`` resolution."""

    def __init__(self, code_path: Optional[Path]) -> None:
        self.code_path = code_path
        self._imported: Dict[Path, Optional[types.ModuleType]] = {}
        self._failures: List[str] = []

    def __enter__(self) -> "_CodePath":
        self._modules_before = set(sys.modules)
        if self.code_path is not None:
            sys.path.insert(0, str(self.code_path if self.code_path.is_dir() else self.code_path.parent))
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.code_path is not None:
            folder = self.code_path if self.code_path.is_dir() else self.code_path.parent
            with contextlib.suppress(ValueError):
                sys.path.remove(str(folder))
            root = os.path.realpath(str(folder))
            for name in set(sys.modules) - self._modules_before:  # forget the user's modules again
                module_file = getattr(sys.modules.get(name), "__file__", None) or ""
                if name.startswith("_jetcap_user_") or os.path.realpath(module_file).startswith(root + os.sep):
                    del sys.modules[name]

    def _import_file(self, file: Path) -> Optional[types.ModuleType]:
        """``file`` imported under a private name (its ``if __name__ == "__main__"`` block stays off)."""
        if file not in self._imported:
            relative = file.relative_to(self.code_path) if self.code_path and self.code_path.is_dir() else Path(file.name)
            name = "_jetcap_user_" + "_".join(relative.with_suffix("").parts)
            module = None
            try:
                module = import_python_file(file, name)
            except Exception as exc:  # user code: remembered and reported if the class is not found
                self._failures.append("{} ({}: {})".format(file.name, type(exc).__name__, _first_line(exc)))
            self._imported[file] = module
        return self._imported[file]

    def _code_files(self) -> List[Path]:
        """The ``.py`` files of code_path: the file itself, or every one below the folder (hidden
        folders, virtual environments and caches skipped), shallowest first."""
        if self.code_path is None:
            return []
        if self.code_path.is_file():
            return [self.code_path]
        skip = {"__pycache__", "site-packages", "node_modules"}
        files = [f for f in self.code_path.rglob("*.py")
                 if not any(p.startswith(".") or p in skip or p.startswith("venv")
                            for p in f.relative_to(self.code_path).parts[:-1])]
        return sorted(files, key=lambda f: (len(f.relative_to(self.code_path).parts), str(f)))

    def _find_main_class(self, name: str) -> Any:
        """``__main__.name`` from the first ``.py`` file of code_path defining it (searched
        recursively, e.g. ``processing/predictor.py``), then the real __main__."""
        for file in self._code_files():
            module = self._import_file(file)
            found = _getattr_path(module, name)
            if found is not None:
                return found
        found = _getattr_path(sys.modules.get("__main__"), name)
        if found is not None:
            return found
        where = "none of the modules in --code-path {} defines it".format(self.code_path) if self.code_path else \
            "no --code-path was given"
        if self._failures:
            where += "; these failed to import: " + ", ".join(self._failures)
        raise CheckpointError("the checkpoint pickles class __main__.{} (defined in the training script) but "
                              "{}".format(name, where),
                              hint="pass --code-path DIR, the folder with the script that defines {}".format(name))

    def _from_code_path(self, module: str, name: str) -> Any:
        """``module.name`` from the file below code_path that is ``module`` (``a/b.py`` or
        ``a/b/__init__.py``), imported under a private name: a pickled ``models.Encoder`` is found in
        ``REPO/src/models.py`` even when another ``models`` is importable (or already imported)."""
        tail = Path(*module.split("."))
        for file in self._code_files():
            for candidate in (tail.with_suffix(".py"), tail / "__init__.py"):
                if tuple(file.parts[-len(candidate.parts):]) == candidate.parts:
                    found = _getattr_path(self._import_file(file), name)
                    if found is not None:
                        return found
        return None

    def find_class(self, module: str, name: str, default: Any) -> Any:
        if module == "__main__":
            return self._find_main_class(name)
        if "{}.{}".format(module, name) in LABEL_ENCODER_GLOBALS:
            return InertLabelEncoder  # beside the model: read inertly, scikit-learn not needed
        try:
            return default(module, name)
        except (ImportError, AttributeError) as exc:
            found = self._from_code_path(module, name)
            if found is not None:
                return found
            raise CheckpointError("the checkpoint pickles {}.{} which cannot be imported: {}".format(
                module, name, _first_line(exc)),
                hint="pass --code-path DIR, the folder with the code that defines it") from None

    def pickle_module(self) -> types.ModuleType:
        """A stand-in for the ``pickle`` module whose Unpickler resolves classes through this object."""
        resolver = self

        class Unpickler(pickle.Unpickler):
            def find_class(self, module: str, name: str) -> Any:
                return resolver.find_class(module, name, super().find_class)

        module = types.ModuleType("jetcap_trusted_pickle")
        module.Unpickler = Unpickler  # type: ignore[attr-defined]

        def load(file: Any, **kwargs: Any) -> Any:
            return Unpickler(file, **kwargs).load()

        module.load = load  # type: ignore[attr-defined]
        module.__dict__["UnpicklingError"] = pickle.UnpicklingError
        return module


def _getattr_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if obj is None:
            return None
        obj = getattr(obj, part, None)
    return obj


def _trusted_load(path: Path, file_format: str, code_path: Optional[Path]) -> Any:
    with _CodePath(code_path) as resolver:
        try:
            if file_format == "torchscript":
                return torch.jit.load(str(path), map_location="cpu")
            if file_format == "pickle":
                with path.open("rb") as handle:
                    return resolver.pickle_module().Unpickler(handle).load()  # type: ignore[attr-defined]
            return torch.load(str(path), map_location="cpu", weights_only=False,
                              pickle_module=resolver.pickle_module())
        except CheckpointError:
            raise
        except Exception as exc:  # arbitrary user code ran: name what failed, keep one line
            raise CheckpointError("loading {} with --trust-pickle failed: {}: {}".format(
                path, type(exc).__name__, _first_line(exc)),
                hint="pass --code-path DIR if the training code is needed") from None


# -- the entry point -------------------------------------------------------------------------------

def _safetensors_header(path: Path, handle: Any, size: int) -> Tuple[int, Dict[str, Any]]:
    """``(header length, parsed header)`` of an open ``.safetensors`` file; CheckpointError if the
    length does not fit the file or the header is not a JSON object."""
    prefix = handle.read(8)
    if len(prefix) < 8:
        raise CheckpointError("{} is truncated: no safetensors header length".format(path))
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len == 0 or header_len > size - 8:
        raise CheckpointError("{} has a corrupted safetensors header: its length {} runs past the end of the "
                              "{}-byte file".format(path, header_len, size))
    if header_len > MAX_SAFETENSORS_HEADER:
        raise CheckpointError("{} has a corrupted safetensors header: {} of JSON, over the {} limit".format(
            path, format_bytes(header_len), format_bytes(MAX_SAFETENSORS_HEADER)))
    try:
        header = json.loads(handle.read(header_len).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise CheckpointError("{} has a corrupted safetensors header (not JSON): {}".format(
            path, _first_line(exc))) from None
    if not isinstance(header, dict):
        raise CheckpointError("{} has a corrupted safetensors header: a JSON {} instead of an object".format(
            path, type(header).__name__))
    return header_len, header


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _safetensors_entries(path: Path, header: Dict[str, Any],
                         body_len: int) -> List[Tuple[str, torch.dtype, List[int], int, int]]:
    """``(name, dtype, shape, begin, end)`` of each tensor in the header, every field checked against
    the spec and the file: known dtype, a shape of non-negative ints whose byte size is the span of its
    ``data_offsets``, offsets ordered, inside the data and not overlapping another tensor's."""
    entries = []
    for name, info in header.items():
        what = "{}: tensor {!r}".format(path, name)
        if not isinstance(info, dict):
            raise CheckpointError("{} has a malformed safetensors entry (a JSON {}, not an object)".format(
                what, type(info).__name__))
        dtype_name = info.get("dtype")
        dtype = _SAFETENSORS_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise CheckpointError("{} has unsupported dtype {!r} (known: {})".format(
                what, dtype_name, ", ".join(_SAFETENSORS_DTYPES)))
        shape = info.get("shape")
        if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
            raise CheckpointError("{} has an invalid shape {!r} (a list of non-negative integers is needed)".format(
                what, shape))
        offsets = info.get("data_offsets")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            raise CheckpointError("{} has invalid data_offsets {!r} ([begin, end] byte offsets are needed)".format(
                what, offsets))
        begin, end = offsets
        if begin > end:
            raise CheckpointError("{} has reversed data_offsets [{}, {}]".format(what, begin, end))
        if end > body_len:
            raise CheckpointError("{} is truncated: tensor {!r} ends at byte {} of a {}-byte data section".format(
                path, name, end, body_len))
        numel = 1
        for dim in shape:
            numel *= dim  # Python ints: a huge shape cannot overflow, it just cannot match the span
        nbytes = numel * torch.empty(0, dtype=dtype).element_size()
        if nbytes != end - begin:
            raise CheckpointError("{} with shape {} and dtype {} needs {} bytes but its data_offsets span {}".format(
                what, shape, dtype_name, nbytes, end - begin))
        entries.append((name, dtype, shape, begin, end))
    spans = sorted((begin, end, name) for name, _dtype, _shape, begin, end in entries if end > begin)
    for (_b, previous_end, previous), (begin, _e, name) in zip(spans, spans[1:]):
        if begin < previous_end:
            raise CheckpointError("{}: the data of tensors {!r} and {!r} overlap".format(path, previous, name))
    return entries


def read_safetensors(path: Path) -> Dict[str, Any]:
    """A ``.safetensors`` file without the safetensors package: ``{"state_dict": ..., **metadata}``.

    The header is checked completely (see ``_safetensors_entries``) before any tensor data is read;
    a malformed one is a one-line CheckpointError.
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        header_len, header = _safetensors_header(path, handle, size)
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise CheckpointError("{} has a malformed safetensors __metadata__ (a JSON {}, not an object)".format(
                path, type(metadata).__name__))
        entries = _safetensors_entries(path, header, size - 8 - header_len)
        body = handle.read()
    tensors: Dict[str, torch.Tensor] = {}
    for name, dtype, shape, begin, end in entries:
        raw = bytearray(body[begin:end])
        tensor = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = tensor.reshape(shape).clone()
    out: Dict[str, Any] = {"state_dict": tensors}
    for key, text in metadata.items():  # metadata values are strings; JSON ones (config, word maps) decoded
        try:
            out[key] = json.loads(text)
        except (TypeError, ValueError, RecursionError):
            out[key] = text
    return out


def read_checkpoint(path: Path, trust_pickle: bool = False, code_path: Optional[Path] = None) -> RawCheckpoint:
    """Load ``path`` safely (weights_only) or, if it needs more and ``trust_pickle`` is set, trusted.

    Args:
        path: the checkpoint file.
        trust_pickle: allow ``weights_only=False`` (runs code from the file) when weights_only refuses.
        code_path: a folder put on sys.path for the trusted load; classes pickled from ``__main__``
            come from its ``.py`` files, imported in name order under private module names until one
            defines the class (training must stay behind ``if __name__ == "__main__":``).
    """
    path = Path(path)
    if not path.exists():
        raise UsageError("checkpoint file not found: {}".format(path))
    if not path.is_file():
        raise UsageError("checkpoint path is not a file: {}".format(path))
    code_path = Path(code_path) if code_path is not None else None
    if code_path is not None and not code_path.is_dir() and not (code_path.is_file() and code_path.suffix == ".py"):
        raise UsageError("--code-path is neither a directory nor a .py file: {}".format(code_path))
    file_format = sniff_format(path)
    if file_format in ("torch zip", "torchscript"):
        declared_size(path)  # refuses decompression bombs before anything is inflated
    if file_format == "safetensors":
        return RawCheckpoint(read_safetensors(path), file_format, False)
    if file_format == "torchscript":
        if not trust_pickle:
            raise CheckpointError("{} is a TorchScript archive; loading it runs its TorchScript code, so it was "
                                  "refused".format(path), hint=TRUST_HINT)
        return RawCheckpoint(_trusted_load(path, file_format, code_path), file_format, True)
    if file_format == "pickle":
        names = unsafe_globals(path, file_format)
        if not trust_pickle:
            raise refusal(path, names, "a plain Python pickle (not written by torch.save)")
        return RawCheckpoint(_trusted_load(path, file_format, code_path), file_format, True)
    try:
        with torch.serialization.safe_globals(inert_globals()), warnings.catch_warnings():
            # torch's own rebuild of quantized tensors still goes through TypedStorage
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        return RawCheckpoint(obj, file_format, False)
    except pickle.UnpicklingError as exc:
        names = unsafe_globals(path, file_format)
        if not names:
            raise CheckpointError("{} cannot be read safely: {}".format(path, _first_line(exc)),
                                  hint=TRUST_HINT) from None
        if not trust_pickle:
            raise refusal(path, names) from None
    except (RuntimeError, EOFError, ValueError, OSError, struct.error, KeyError, IndexError) as exc:
        raise CheckpointError("{} is corrupted or truncated: {}".format(path, _first_line(exc))) from None
    return RawCheckpoint(_trusted_load(path, file_format, code_path), file_format, True)
