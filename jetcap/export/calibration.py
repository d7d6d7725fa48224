"""Calibration data in ONNX Runtime's ``CalibrationDataReader`` protocol.

Anything with ``get_next() -> {input_name: ndarray} | None`` is a calibration reader; the same readers
feed ONNX Runtime's Q/DQ calibration and can feed a TensorRT calibrator on the device.
"""
from __future__ import annotations

from typing import Dict, Iterable, Iterator, List, Optional

import numpy as np



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
