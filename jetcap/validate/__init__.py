"""Numeric-equivalence checks of a backend x precision against PyTorch reference outputs.

The pure core of ``jetcap validate`` (numpy only, Python 3.6 compatible, no torch/onnx):

* :mod:`jetcap.validate.metrics`: tensor comparison (:func:`compare_arrays`, the
  :func:`tolerance_checker` factory) and task agreement (:func:`caption_agreement`,
  :func:`label_agreement`);
* :mod:`jetcap.validate.bleu`: corpus BLEU-4;
* :mod:`jetcap.validate.report`: :class:`Check` records, the :class:`ValidationReport` that collects
  them all and renders a table, JSON or JUnit XML, and builders from results to checks.

Semantics and thresholds are described in ``docs/VALIDATION.md``.
"""
from jetcap.validate.bleu import BleuScore, corpus_bleu, corpus_bleu_score
from jetcap.validate.metrics import (
    CaptionAgreement,
    LabelAgreement,
    TaskThresholds,
    TensorComparison,
    Tolerance,
    caption_agreement,
    compare_arrays,
    label_agreement,
    softmax,
    tolerance_checker,
)
from jetcap.validate.report import (
    TASK,
    Check,
    ValidationReport,
    caption_checks,
    label_checks,
    tensor_checks,
)

__all__ = [
    "BleuScore", "corpus_bleu", "corpus_bleu_score",
    "CaptionAgreement", "LabelAgreement", "TaskThresholds", "TensorComparison", "Tolerance",
    "caption_agreement", "compare_arrays", "label_agreement", "softmax", "tolerance_checker",
    "TASK", "Check", "ValidationReport", "caption_checks", "label_checks", "tensor_checks",
]
