"""Adapters written by the user: a small Python file following :mod:`jetcap.export.adapters.base`.

The file defines ``STATE`` and ``CONTEXT`` (tuples of names), ``encode(model, images)`` and
``step(model, words, **tensors)``; optionally ``INT8_KEEP_FLOAT`` (node-name substrings kept float in
the INT8 variant) and ``teacher_forced(model, images, captions) -> scores (B, L - 1, V)``, the model's
own teacher-forced forward, against which export checks the step.  docs/EXPORT.md has a complete one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from jetcap.errors import UsageError
from jetcap.export.adapters.base import CaptionerAdapter, check_adapter
from jetcap.util.fsio import sha256_file
from jetcap.util.pyfile import import_python_file


class FileAdapter(CaptionerAdapter):
    """The adapter defined by the module of a user's file."""

    def __init__(self, module, path: Path):
        self.module = module
        self.path = path
        self.sha256 = sha256_file(path)
        self.name = "adapter file {}".format(path.name)
        self.state = tuple(getattr(module, "STATE", ()) or ())
        self.context = tuple(getattr(module, "CONTEXT", ()) or ())
        self.int8_keep_float = tuple(getattr(module, "INT8_KEEP_FLOAT", ()) or ())
        self.teacher_forced = getattr(module, "teacher_forced", None)
        self.notes = []
        if self.teacher_forced is None:  # said where the check is skipped: nothing then checks the wiring
            self.notes.append("{} defines no teacher_forced(model, images, captions): nothing checks its step "
                              "wiring against your model's own forward; validate compares the bundle with this "
                              "same adapter".format(self.name))
        check_adapter(self)

    def encode(self, model, images) -> Dict[str, Any]:
        return self.module.encode(model, images)

    def step(self, model, words, **tensors) -> Dict[str, Any]:
        return self.module.step(model, words, **tensors)


def load_adapter_file(path: Path) -> FileAdapter:
    """Import the adapter file ``path``; UsageError for a missing, failing or incomplete file."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise UsageError("adapter file not found or not a .py file: {}".format(path))
    try:
        module = import_python_file(path, "_jetcap_adapter_" + path.stem)
    except Exception as exc:  # user code: one line naming the file and the error
        raise UsageError("importing the adapter file {} failed: {}: {}".format(
            path, type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")) from None
    module.encode = getattr(module, "encode", None)
    module.step = getattr(module, "step", None)
    return FileAdapter(module, path)
