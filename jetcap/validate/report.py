"""The validation report: every check of every backend x precision, rendered for people and for CI.

A :class:`Check` is one pass/fail decision: ``value <sense> threshold`` (e.g. ``cosine >= 0.999``)
for one backend, precision and graph (or ``"task"`` for task-level checks), with a detail line and
the input that did worst. A :class:`ValidationReport` collects *all* checks (it never stops at the
first failure) and renders them as a fixed-width table, a JSON-ready dict or JUnit XML, and gives the
process exit code (0 all passed, 1 a numeric failure, 2 nothing was validated).

Builders turn comparison results into checks, so the orchestration only runs backends and feeds
results in::

    report = ValidationReport(meta={"bundle": "out/captioner"})
    check = tolerance_checker(tolerances["fp16"])
    results = [(label, check("log_probs", out, ref)) for label, out, ref in runs]   # one per input
    report.extend(tensor_checks("onnxruntime", "fp16", "step", "log_probs", results))
    report.extend(caption_checks("onnxruntime", "fp16", caption_agreement(cands, refs), thresholds["fp16"]))
    print(report.to_table())
    sys.exit(report.exit_code())

Python 3.6 compatible, numpy-free.
"""
import math
import numbers
import re
import xml.etree.ElementTree as ET
from typing import Dict, List, Tuple  # noqa: F401 (used in type comments)

from jetcap.errors import UsageError, ValidationFailed
from jetcap.validate.metrics import TaskThresholds

SENSES = ("<=", ">=", "==")
TASK = "task"  # the ``graph`` of task-level checks
_MAX_LISTED = 8  # mismatching indices named in a detail line


def _finite_or_none(value):
    """``value`` for JSON: non-finite floats become None (JSON has no NaN/Inf)."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


def _json_ready(obj):
    """Recursively replace non-finite floats by None and tuples by lists."""
    if isinstance(obj, dict):
        return dict((str(k), _json_ready(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    return _finite_or_none(obj)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _plain_number(value):
    """numpy and other numeric scalars as a plain int or float; anything else unchanged."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value


def compare_value(value, sense, threshold):
    """Whether ``value <sense> threshold`` holds; None or NaN never passes."""
    if sense not in SENSES:
        raise UsageError("unknown comparison sense {!r} (use one of {})".format(sense, ", ".join(SENSES)))
    if not _is_number(value) or not _is_number(threshold):
        return False
    if isinstance(value, float) and math.isnan(value):
        return False
    if sense == "<=":
        return value <= threshold
    if sense == ">=":
        return value >= threshold
    return value == threshold


class Check(object):
    """One pass/fail decision of the validation.

    Args:
        backend: e.g. ``"onnxruntime"``, ``"tensorrt"``.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        graph: the graph checked (``"encoder"``, ``"step"``, ``"model"``) or ``"task"``.
        name: the check, e.g. ``"log_probs.allclose"``, ``"exact_match"``.
        value: the measured number (None when it could not be measured, which fails).
        threshold: the limit it is held to.
        sense: ``"<="`` (value must not exceed threshold), ``">="`` or ``"=="``.
        passed: the verdict; by default ``value <sense> threshold`` (NaN and None fail). Give it
            explicitly only when the verdict is not that comparison.
        detail: one line saying what was measured and, for failures, why it failed.
        worst_input: the label of the input that did worst (e.g. ``"batch=4,T=90"``), or None.
        skipped: True when the check could not run (e.g. TensorRT not installed); a skipped check
            neither passes nor fails; ``detail`` says why.
    """

    FIELDS = ("backend", "precision", "graph", "name", "value", "threshold", "sense", "passed", "detail",
              "worst_input", "skipped")

    def __init__(self, backend, precision, graph, name, value, threshold, sense="<=", passed=None, detail="",
                 worst_input=None, skipped=False):
        if sense not in SENSES:
            raise UsageError("unknown comparison sense {!r} (use one of {})".format(sense, ", ".join(SENSES)))
        self.backend = str(backend)
        self.precision = str(precision)
        self.graph = str(graph)
        self.name = str(name)
        self.value = _plain_number(value)
        self.threshold = _plain_number(threshold)
        self.sense = sense
        self.skipped = bool(skipped)
        if self.skipped:
            self.passed = False
        elif passed is None:
            self.passed = bool(compare_value(self.value, sense, self.threshold))
        else:
            self.passed = bool(passed)
        self.detail = str(detail or "")
        self.worst_input = None if worst_input is None else str(worst_input)

    @property
    def failed(self):
        """True when the check ran and did not pass."""
        return not self.passed and not self.skipped

    @property
    def status(self):
        """``"PASS"``, ``"FAIL"`` or ``"SKIP"``."""
        if self.skipped:
            return "SKIP"
        return "PASS" if self.passed else "FAIL"

    @property
    def label(self):
        """``backend/precision/graph/name``."""
        return "{}/{}/{}/{}".format(self.backend, self.precision, self.graph, self.name)

    def to_dict(self):
        """The fields as a JSON-ready dict (non-finite numbers become None)."""
        return _json_ready(dict((f, getattr(self, f)) for f in self.FIELDS))

    @classmethod
    def from_dict(cls, data):
        """The inverse of :meth:`to_dict` (a None value stays None and so stays failed unless
        ``passed`` says otherwise)."""
        try:
            return cls(**dict((f, data[f]) for f in cls.FIELDS if f in data))
        except TypeError as exc:
            raise UsageError("malformed check record {!r}: {}".format(data, exc))

    def __repr__(self):
        value, threshold = _format_pair(self.value, self.threshold, self.sense)
        return "<Check {} {} {} {} {}>".format(self.label, value, self.sense, threshold, self.status)


def _format_number(value, digits=4):
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "{:.{}g}".format(value, digits)
    return str(value)


def _format_pair(value, threshold, sense="<="):
    """Format value and threshold for display.

    The threshold is written exactly as set (up to 12 significant digits); the value with 4
    significant digits, or more when needed so that the printed numbers compare the way the real
    ones do (a cosine of 0.9999891 against 0.99999 must not print as ``1 >= 0.99999``).
    """
    t_text = _format_number(threshold, 12)
    if not isinstance(value, float) or not _is_number(threshold) or math.isnan(value) or math.isinf(value):
        return _format_number(value), t_text
    truth = compare_value(value, sense, threshold)
    for digits in range(4, 18):
        v_text = _format_number(value, digits)
        shown = float(v_text)
        if compare_value(shown, sense, threshold) == truth and (shown != threshold or value == threshold):
            return v_text, t_text
    return repr(value), t_text


class ValidationReport(object):
    """All checks of a validation run; passes only when every check that ran passed.

    Args:
        meta: optional dict of context written into every rendering (bundle path, versions, ...).
        checks: optional initial checks.
    """

    def __init__(self, meta=None, checks=None):
        self.meta = dict(meta or {})
        self.checks = []
        for check in checks or ():
            self.add(check)

    # -- collecting -----------------------------------------------------------------------------
    def add(self, check):
        """Append one :class:`Check`; returns it."""
        if not isinstance(check, Check):
            raise TypeError("ValidationReport.add expects a Check, got {!r}".format(check))
        self.checks.append(check)
        return check

    def extend(self, checks):
        """Append several checks (e.g. from :func:`tensor_checks`)."""
        for check in checks:
            self.add(check)

    # -- verdict --------------------------------------------------------------------------------
    def failures(self):
        """The checks that ran and failed, in the order they were added."""
        return [c for c in self.checks if c.failed]

    def skipped(self):
        """The checks that could not run."""
        return [c for c in self.checks if c.skipped]

    @property
    def ran(self):
        """How many checks ran (not skipped)."""
        return sum(1 for c in self.checks if not c.skipped)

    @property
    def passed(self):
        """True when at least one check ran and none failed (an empty report validated nothing)."""
        return self.ran > 0 and not self.failures()

    def exit_code(self):
        """0 when passed, 1 when any check failed (``ValidationFailed.exit_code``), 2 when no check ran."""
        if self.failures():
            return ValidationFailed.exit_code
        if self.ran == 0:
            return 2
        return 0

    def summary(self):
        """One line, e.g. ``FAILED: 2 of 14 checks failed (1 skipped)``."""
        skipped = len(self.skipped())
        tail = " ({} skipped)".format(skipped) if skipped else ""
        if self.ran == 0:
            return "NOTHING VALIDATED: no check ran{}".format(tail)
        failed = len(self.failures())
        if failed:
            return "FAILED: {} of {} checks failed{}".format(failed, self.ran, tail)
        return "PASSED: all {} checks passed{}".format(self.ran, tail)

    def raise_for_failures(self):
        """Raise :class:`ValidationFailed` (exit code 1) naming the failed checks, if any."""
        failed = self.failures()
        if failed:
            names = ", ".join(c.label for c in failed[:3])
            more = " and {} more".format(len(failed) - 3) if len(failed) > 3 else ""
            raise ValidationFailed("{}: {}{}".format(self.summary(), names, more))

    # -- rendering ------------------------------------------------------------------------------
    def to_table(self):
        """A fixed-width text table, one row per check, then the summary and every failure's detail."""
        headers = ("BACKEND", "PRECISION", "GRAPH", "CHECK", "VALUE", "THRESHOLD", "RESULT", "WORST INPUT")
        rows = []
        for c in self.checks:
            value, threshold = _format_pair(c.value, c.threshold, c.sense)
            rows.append((c.backend, c.precision, c.graph, c.name, value, "{} {}".format(c.sense, threshold),
                         c.status, c.worst_input or "-"))
        widths = [len(h) for h in headers]
        for row in rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
        numeric = (4,)  # right-align values

        def line(cells):
            out = []
            for i, (cell, width) in enumerate(zip(cells, widths)):
                out.append(cell.rjust(width) if i in numeric else cell.ljust(width))
            return "  ".join(out).rstrip()

        lines = []
        for key in sorted(self.meta):
            lines.append("{}: {}".format(key, self.meta[key]))
        if lines:
            lines.append("")
        lines.append(line(headers))
        lines.append(line(["-" * w for w in widths]))
        for row in rows:
            lines.append(line(row))
        lines.append("")
        lines.append(self.summary())
        failed = self.failures()
        if failed:
            lines.append("")
            lines.append("Failures:")
            for c in failed:
                worst = " (worst input: {})".format(c.worst_input) if c.worst_input else ""
                lines.append("  {}{}: {}".format(c.label, worst, c.detail or "-"))
        skipped = self.skipped()
        if skipped:
            lines.append("")
            lines.append("Skipped:")
            for c in skipped:
                lines.append("  {}: {}".format(c.label, c.detail or "-"))
        return "\n".join(lines) + "\n"

    def to_json(self):
        """A JSON-ready dict: ``passed``, ``exit_code``, ``summary`` counts, ``meta`` and ``checks``.
        Non-finite numbers are written as null (the check's ``passed`` and ``detail`` say why)."""
        return _json_ready({
            "passed": self.passed,
            "exit_code": self.exit_code(),
            "summary": {"checks": len(self.checks), "ran": self.ran, "failed": len(self.failures()),
                        "skipped": len(self.skipped()), "text": self.summary()},
            "meta": self.meta,
            "checks": [c.to_dict() for c in self.checks],
        })

    @classmethod
    def from_json(cls, data):
        """Rebuild a report from :meth:`to_json`'s dict (e.g. written on a device, rendered on a host)."""
        if not isinstance(data, dict) or not isinstance(data.get("checks"), list):
            raise UsageError("not a jetcap validation report (no 'checks' list)")
        return cls(meta=data.get("meta") or {}, checks=[Check.from_dict(c) for c in data["checks"]])

    def to_junit_xml(self, suite_name="jetcap.validate"):
        """JUnit XML (a string): one ``<testsuite>`` per backend x precision, one ``<testcase>`` per
        check, a ``<failure>`` with message and detail for failures, ``<skipped>`` for skipped ones.

        Args:
            suite_name: the name of the ``<testsuites>`` element and the prefix of each suite's name.
        """
        groups = []  # type: List[Tuple[str, str]]
        by_key = {}  # type: Dict[Tuple[str, str], List[Check]]
        for c in self.checks:
            key = (c.backend, c.precision)
            if key not in by_key:
                by_key[key] = []
                groups.append(key)
            by_key[key].append(c)

        root = ET.Element("testsuites", {
            "name": _xml_text(suite_name), "tests": str(len(self.checks)),
            "failures": str(len(self.failures())), "errors": "0", "skipped": str(len(self.skipped())),
        })
        for backend, precision in groups:
            checks = by_key[(backend, precision)]
            suite = ET.SubElement(root, "testsuite", {
                "name": _xml_text("{}.{}.{}".format(suite_name, backend, precision)),
                "tests": str(len(checks)),
                "failures": str(sum(1 for c in checks if c.failed)),
                "errors": "0",
                "skipped": str(sum(1 for c in checks if c.skipped)),
            })
            if self.meta:
                props = ET.SubElement(suite, "properties")
                for key in sorted(self.meta):
                    ET.SubElement(props, "property", {"name": _xml_text(key), "value": _xml_text(self.meta[key])})
            for c in checks:
                value, threshold = _format_pair(c.value, c.threshold, c.sense)
                case = ET.SubElement(suite, "testcase", {
                    "classname": _xml_text("{}.{}.{}".format(backend, precision, c.graph)),
                    "name": _xml_text(c.name),
                })
                verdict = "{} {} {}".format(value, c.sense, threshold)
                if c.skipped:
                    ET.SubElement(case, "skipped", {"message": _xml_text(c.detail or "skipped")})
                elif c.failed:
                    worst = " (worst input: {})".format(c.worst_input) if c.worst_input else ""
                    failure = ET.SubElement(case, "failure", {
                        "message": _xml_text("{} is false{}".format(verdict, worst)),
                        "type": "ValidationFailed",
                    })
                    failure.text = _xml_text(c.detail or verdict)
                else:
                    out = ET.SubElement(case, "system-out")
                    out.text = _xml_text("{}{}".format(verdict, "; " + c.detail if c.detail else ""))
        body = ET.tostring(root, encoding="unicode")
        return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"

    def __repr__(self):
        return "<ValidationReport {}>".format(self.summary())


_XML_INVALID = re.compile(u"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(value):
    """``value`` as text without the control characters XML 1.0 cannot hold."""
    return _XML_INVALID.sub(u"?", u"{}".format(value))


# -- builders: comparison results -> checks -------------------------------------------------------

def _labelled(results):
    """``[(label, result)]`` from a dict, a list of pairs, or a single result (label None)."""
    if isinstance(results, dict):
        return [(str(k), v) for k, v in results.items()]
    if hasattr(results, "passed") and not isinstance(results, (list, tuple)):
        return [(None, results)]
    pairs = []
    for item in results:
        if isinstance(item, (list, tuple)) and len(item) == 2:
            pairs.append((None if item[0] is None else str(item[0]), item[1]))
        else:
            pairs.append((None, item))
    if not pairs:
        raise UsageError("no comparison results given")
    return pairs


def _sortable(value):
    """None -> 0, NaN -> inf, so that ``max`` over severities is well defined."""
    if value is None:
        return 0.0
    return float("inf") if math.isnan(value) else value


def _inputs_phrase(pairs, failed):
    if len(pairs) == 1:
        return ""
    return "{} of {} inputs failed; ".format(failed, len(pairs))


def tensor_checks(backend, precision, graph, output, comparisons):
    """Checks of one output over one or more inputs (e.g. a sweep over dynamic axes).

    Args:
        backend, precision, graph: where the output comes from.
        output: the output's name.
        comparisons: the :class:`~jetcap.validate.metrics.TensorComparison` of each input: a dict
            ``{input_label: comparison}``, a list of ``(input_label, comparison)`` pairs, a list of
            comparisons, or a single comparison.
    Returns:
        ``[<output>.allclose, <output>.cosine]`` (no cosine check for exact integer/bool outputs).
        ``allclose``: value = elements outside tolerance (NaN/Inf included) of the worst input,
        threshold = the elements its tolerance lets out (0 unless it has an ``outlier_fraction``);
        it also fails for shape/dtype mismatches and for an element past the tolerance's cap (then
        value = the largest element's multiple of its bound, threshold = the cap).
        ``cosine``: value = the lowest cosine over inputs, threshold = ``min_cosine``. Each names the
        worst input and its statistics.
    """
    pairs = _labelled(comparisons)

    def severity(pair):
        comp = pair[1]
        return (not comp.passed, not comp.shape_ok, comp.nonfinite + comp.reference_nonfinite,
                not comp.elements_ok, comp.num_failing, _sortable(comp.tolerance_used), _sortable(comp.max_abs))

    label, worst = max(pairs, key=severity)
    failed_inputs = sum(1 for _, comp in pairs if not comp.passed)
    prefix = _inputs_phrase(pairs, failed_inputs)
    # the allclose check carries the failures that are not about cosine
    allclose_ok = all(comp.shape_ok and comp.dtype_ok and comp.elements_ok for _, comp in pairs)
    value, threshold = (worst.num_failing if worst.shape_ok else None), worst.outliers_allowed
    if worst.shape_ok and not worst.elements_ok and worst.num_failing <= worst.outliers_allowed:
        value, threshold = worst.max_tolerance_ratio, worst.outlier_cap  # out by the cap, not by the count
    checks = [Check(
        backend, precision, graph, "{}.allclose".format(output),
        value=value, threshold=threshold, sense="<=",
        passed=allclose_ok,
        detail="{}{}".format(prefix, worst.summary()), worst_input=label)]
    if not worst.exact:
        def cosine_key(pair):
            cos = pair[1].cosine
            return float("inf") if cos is None else (-1.0 if math.isnan(cos) else cos)

        cos_pairs = [p for p in pairs if p[1].shape_ok]
        if len(cos_pairs) < len(pairs):
            bad_label, bad = [p for p in pairs if not p[1].shape_ok][0]
            checks.append(Check(backend, precision, graph, "{}.cosine".format(output), value=None,
                                threshold=worst.min_cosine, sense=">=", passed=False,
                                detail="not compared: " + bad.reason, worst_input=bad_label))
        else:
            cos_label, cos_worst = min(cos_pairs, key=cosine_key)
            cos_failed = sum(1 for _, comp in pairs if not comp.cosine >= comp.min_cosine)
            checks.append(Check(
                backend, precision, graph, "{}.cosine".format(output), value=cos_worst.cosine,
                threshold=cos_worst.min_cosine, sense=">=",
                passed=cos_failed == 0,
                detail="{}cos {:.7g}, l2 {:.3g}".format(
                    "{} of {} inputs below; ".format(cos_failed, len(pairs)) if len(pairs) > 1 else "",
                    cos_worst.cosine, cos_worst.l2),
                worst_input=cos_label))
    return checks


def _index_list(indices, labels):
    names = [str(labels[i]) if labels is not None else "#{}".format(i) for i in indices[:_MAX_LISTED]]
    more = " and {} more".format(len(indices) - _MAX_LISTED) if len(indices) > _MAX_LISTED else ""
    return ", ".join(names) + more


def caption_checks(backend, precision, agreement, thresholds, labels=None):
    """Task-level checks of captions: ``exact_match >= min_exact_match`` and
    ``bleu_drop <= max_bleu_drop``.

    Args:
        backend, precision: where the captions come from.
        agreement: a :class:`~jetcap.validate.metrics.CaptionAgreement`.
        thresholds: :class:`~jetcap.validate.metrics.TaskThresholds` (or a dict / registry object).
        labels: optional names of the inputs by index (e.g. image file names) for the detail lines.
    """
    th = TaskThresholds.from_any(thresholds)
    first = agreement.mismatches[0] if agreement.mismatches else None
    worst = None if first is None else (str(labels[first]) if labels is not None else "#{}".format(first))
    differ = ("differing: " + _index_list(agreement.mismatches, labels)) if agreement.mismatches else "all identical"
    bleu_detail = "BLEU vs PyTorch {:.2f}".format(agreement.bleu)
    if agreement.reference_bleu is not None:
        bleu_detail = "BLEU vs ground truth: PyTorch {:.2f}, backend {:.2f}".format(
            agreement.reference_bleu, agreement.candidate_bleu)
    return [
        Check(backend, precision, TASK, "caption.exact_match", agreement.exact_match_rate, th.min_exact_match,
              ">=", detail="{}/{} captions identical; {}".format(agreement.exact_matches, agreement.count, differ),
              worst_input=worst),
        Check(backend, precision, TASK, "caption.bleu_drop", agreement.bleu_drop, th.max_bleu_drop, "<=",
              detail=bleu_detail, worst_input=worst),
    ]


def label_checks(backend, precision, agreement, thresholds, labels=None):
    """Task-level checks of class predictions: ``top1_agreement >= min_exact_match`` and
    ``max_prob_diff <= max_prob_diff``.

    Args:
        backend, precision: where the predictions come from.
        agreement: a :class:`~jetcap.validate.metrics.LabelAgreement`.
        thresholds: :class:`~jetcap.validate.metrics.TaskThresholds` (or a dict / registry object).
        labels: optional names of the inputs by index, for the detail lines.
    """
    th = TaskThresholds.from_any(thresholds)

    def name(i):
        return str(labels[i]) if labels is not None else "#{}".format(i)

    differ = ("differing: " + _index_list(agreement.mismatches, labels)) if agreement.mismatches else "all agree"
    nonfinite = "; {} input(s) with NaN/Inf".format(agreement.nonfinite_rows) if agreement.nonfinite_rows else ""
    return [
        Check(backend, precision, TASK, "label.top1_agreement", agreement.top1_agreement, th.min_exact_match, ">=",
              detail="{}/{} top-1 identical; {}{}".format(agreement.top1_matches, agreement.count, differ, nonfinite),
              worst_input=name(agreement.mismatches[0]) if agreement.mismatches else None),
        Check(backend, precision, TASK, "label.max_prob_diff", agreement.max_prob_diff, th.max_prob_diff, "<=",
              detail="largest |p - p_ref| over {} inputs{}".format(agreement.count, nonfinite),
              worst_input=name(agreement.worst_index)),
    ]
