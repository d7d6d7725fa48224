"""Calibration data in ONNX Runtime's ``CalibrationDataReader`` protocol.

Anything with ``get_next() -> {input_name: ndarray} | None`` is a calibration reader; the same readers
feed ONNX Runtime's Q/DQ calibration and can feed a TensorRT calibrator on the device.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np

from jetcap.errors import UsageError
from jetcap.runtime.sequences import SEQUENCE_SUFFIXES, load_sequence  # noqa: F401  (re-exported)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class FeedReader:
    """A calibration reader over an iterable of feeds ``{input_name: ndarray}``."""

    def __init__(self, feeds: Iterable[Dict[str, np.ndarray]]):
        self._feeds: List[Dict[str, np.ndarray]] = list(feeds)
        self._iter: Iterator[Dict[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def list_files(folder: Path, suffixes: tuple, limit: int) -> List[Path]:
    """Sorted files of ``folder`` with one of ``suffixes``, at most ``limit``; none is a UsageError."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in suffixes)[:limit]
    if not files:
        raise UsageError("{} holds no {} files".format(folder, "/".join(suffixes)))
    return files
