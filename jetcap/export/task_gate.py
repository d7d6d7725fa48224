"""The export's task-level gate: a variant's graphs must say what PyTorch says (captions / labels).

The same checks and thresholds as ``jetcap validate`` (:func:`jetcap.validate.gate.task_level`), on the
task inputs stored in the bundle's reference (real images from ``--calibration-data`` when given), run on
candidate graph files before the bundle exists: so that the export refuses what validate would refuse,
and the INT8 search can aim at it (:mod:`jetcap.export.int8_task`).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from jetcap.runtime.backends.onnxruntime import OnnxRuntimeRunner, variant_options
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.pipeline import CaptionPipeline
from jetcap.util.fsio import sha256_file
from jetcap.validate.gate import task_inputs, task_level
from jetcap.validate.report import ValidationReport
from jetcap.validate.stability import CaptionStability, caption_stability


@dataclass
class TaskOutcome:
    """The task checks of one set of graph files.

    Attributes:
        passed: every task check passed.
        score: task inputs whose result differs from PyTorch's (greedy and beam counted apart; twice
            the input count plus one when decoding failed): lower is better.
        summary: one line, e.g. "greedy 16/16, beam3 15/16 identical".
        failures: the failed checks' lines.
    """

    passed: bool
    score: int
    summary: str
    failures: List[str] = field(default_factory=list)


class _StoredInputs(object):
    data = None
    samples = None


class TaskGate:
    """Task checks of graph files against the PyTorch results stored in ``reference``.

    Args:
        manifest_data: the manifest being written (family, config, graphs, axes, vocabulary or labels,
            preprocessing, decoding, task_thresholds); its ``variants`` are not needed.
        fp32_files: ``{graph: FP32 file}`` in ``bundle_dir``.
        bundle_dir: the folder the files are in.
        reference: the reference arrays (with the ``task/...`` entries).
    """

    def __init__(self, manifest_data: Dict[str, Any], bundle_dir: Path, reference: Dict[str, np.ndarray],
                 fp32_files: Dict[str, Path]):
        # the FP32 files stand in for the variants, which do not exist yet (the runners get the files)
        variants = {"fp32": {"files": {g: {"path": Path(p).name, "sha256": sha256_file(p)}
                                      for g, p in fp32_files.items()}}}
        self.manifest = Manifest(dict(manifest_data, variants=variants), bundle_dir)
        self.task = task_inputs(self.manifest, reference, _StoredInputs())

    def run(self, precision: str, files: Dict[str, Path]) -> TaskOutcome:
        """Run the task checks of ``precision`` on ``files`` (``{graph: ONNX file}``) with ONNX Runtime,
        as the runtime runs that variant."""
        report = ValidationReport()
        with self._runners(precision, files) as runners:
            agreements = task_level(self.manifest, self.task, runners, "onnxruntime", precision, report)
        failed = [c for c in report.checks if c.passed is False]
        count = len(self.task["names"])
        if not agreements:
            score = 2 * count + 1
        else:
            score = sum(len(a.mismatches) for a in agreements)
        return TaskOutcome(passed=not failed and bool(agreements), score=score,
                           summary=self._summary(agreements, failed),
                           failures=["{}: {}".format(c.name, c.detail) for c in failed])

    def stability(self, fp32_files: Dict[str, Path]) -> Optional[CaptionStability]:
        """The FP32 graphs' greedy captions under :data:`jetcap.validate.stability.PIXEL_NOISE` against
        PyTorch's on the clean inputs: how far this model's own captions hold (captioners; None for
        other families)."""
        if self.manifest.family != "captioner":
            return None
        with self._runners("fp32", fp32_files) as runners:
            return caption_stability(CaptionPipeline(self.manifest, runners), self.task["images"], self.task["greedy"])

    @contextlib.contextmanager
    def _runners(self, precision: str, files: Dict[str, Path]):
        """``{graph: activated ONNX Runtime runner}`` of ``files``, as the runtime runs ``precision``."""
        runners = {graph: OnnxRuntimeRunner(str(files[graph]), self.manifest.graph(graph),
                                            name="{}[{}]".format(graph, precision), spinning=False,
                                            **variant_options(precision))
                   for graph in self.manifest.graph_names}
        try:
            for runner in runners.values():
                runner.activate()
            yield runners
        finally:
            for runner in runners.values():
                runner.deactivate()

    def _summary(self, agreements, failed) -> str:
        if not agreements:
            return "task run failed: " + (failed[0].detail if failed else "no result")
        if self.manifest.family == "captioner":
            labels = ["greedy", "beam{}".format(self.task["beam_size"])]
            parts = ["{} {}/{}".format(label, a.exact_matches, a.count) for label, a in zip(labels, agreements)]
            return ", ".join(parts) + " captions identical to PyTorch"
        a = agreements[0]
        return "top-1 {}/{} labels as PyTorch, max prob diff {:.3g}".format(a.top1_matches, a.count, a.max_prob_diff)

