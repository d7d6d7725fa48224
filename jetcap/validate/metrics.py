"""Tensor-level and task-level comparison of a backend's outputs against PyTorch reference outputs.

Pure numpy, Python 3.6 compatible: this runs on a Jetson without torch.

Tensor level
    :func:`compare_arrays` compares one output array against its reference and returns a
    :class:`TensorComparison` that carries the error statistics and is truthy when the output passes.
    :func:`tolerance_checker` is a factory: give it a default :class:`Tolerance` (and optional
    per-output overrides) and it returns a closure ``check(output_name, actual, reference)``.

    Pass/fail semantics (``numpy.allclose`` plus a cosine floor, and an optional allowance for the tail):

    * an element is *out* when ``|a - r| > atol + rtol * |r|`` (an element exactly on the bound passes);
    * an output fails when more than ``floor(outlier_fraction * size)`` elements are out (0 by default:
      any element out fails, as ``allclose``), when any element is past ``outlier_cap`` times its bound,
      when its cosine similarity to the reference is below ``min_cosine``, when shape or dtype differ
      from the reference, or when the output *or the reference* holds any NaN/Inf (always a failure,
      whatever the tolerance);
    * the allowance exists because a rule "no element out" judges the far tail of the error, which
      grows with the number of elements compared: the same FP16 ResNet passes on one image and fails
      on a batch of eight.  A fixed share of elements, each still within ``outlier_cap`` bounds, gives
      the same verdict at every size; the cosine floor and the task checks judge the rest;
    * integer and boolean outputs (ids, indices, masks) are compared exactly: tolerances do not apply
      and cosine is reported but not enforced.

    Everything is computed in float64, so float16 inputs lose nothing further.

Task level
    :func:`caption_agreement` (identical captions, BLEU drop) and :func:`label_agreement` (top-1
    agreement, largest probability difference) measure what users actually see.

Tolerances and thresholds are plain objects here (:class:`Tolerance`, :class:`TaskThresholds`) with
the same field names as ``jetcap.models.registry`` so they can be read from a bundle manifest on a
device without torch; :meth:`Tolerance.from_any` also accepts the registry's dataclasses.
"""
import math
import numbers
from typing import Optional, Tuple  # noqa: F401 (used in type comments)

import numpy as np

from jetcap.errors import UsageError
from jetcap.runtime.bundle_schema import MAX_OUTLIER_FRACTION  # noqa: F401 (the limit, kept with the schema's)
from jetcap.validate.bleu import corpus_bleu

# Denominator floor of the (informational) relative error |a - r| / max(|r|, REL_EPS).
REL_EPS = 1e-12
# MAX_OUTLIER_FRACTION: the largest share of elements a tolerance may let past its bound (a gate, not a median).
DEFAULT_OUTLIER_CAP = 2.0  # the cap of a fraction given without one: twice the bound


def _as_float(value, field, owner):
    """``value`` as a float, or a UsageError naming ``owner.field``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageError("{} {} must be a number, got {!r}".format(owner, field, value))
    value = float(value)
    if math.isnan(value):
        raise UsageError("{} {} must be a number, got NaN".format(owner, field))
    return value


def _fields_from(obj, names, owner, defaults=None):
    """Read ``names`` from a mapping or from attributes of ``obj``; missing ones from ``defaults``."""
    defaults = defaults or {}
    values = {}
    for name in names:
        if isinstance(obj, dict):
            present = name in obj
            value = obj.get(name)
        else:
            present = hasattr(obj, name)
            value = getattr(obj, name, None)
        if not present:
            if name in defaults:
                value = defaults[name]
            else:
                raise UsageError("{} is missing {!r} (got {!r})".format(owner, name, obj))
        values[name] = value
    if isinstance(obj, dict):
        unknown = sorted(set(obj) - set(names))
        if unknown:
            raise UsageError("{} has unknown field(s) {} (known: {})".format(
                owner, ", ".join(repr(k) for k in unknown), ", ".join(names)))
    return values


class Tolerance(object):
    """Tensor-level tolerance: an element is out when ``|a - r| > atol + rtol * |r|``; an output fails
    when more than ``floor(outlier_fraction * size)`` elements are out, when any is past ``outlier_cap``
    times its bound, or when its cosine similarity to the reference is below ``min_cosine``.

    Args:
        atol: absolute tolerance (>= 0).
        rtol: relative tolerance (>= 0).
        min_cosine: the lowest acceptable cosine similarity, in [-1, 1] (default 0: a sign flip fails).
        outlier_fraction: the share of elements that may be out, in [0, MAX_OUTLIER_FRACTION]
            (default 0: none, ``allclose`` semantics).
        outlier_cap: how far out an allowed element may be, as a multiple of its bound (> 1 with a
            fraction; default :data:`DEFAULT_OUTLIER_CAP` with a fraction, 1 without: an element that is
            out is already past 1x its bound, so a fraction with a cap of 1 lets none out and is refused).
    """

    __slots__ = ("atol", "rtol", "min_cosine", "outlier_fraction", "outlier_cap")
    FIELDS = ("atol", "rtol", "min_cosine", "outlier_fraction", "outlier_cap")
    DEFAULTS = {"min_cosine": 0.0, "outlier_fraction": 0.0, "outlier_cap": None}  # cap None: by the fraction

    def __init__(self, atol, rtol, min_cosine=0.0, outlier_fraction=0.0, outlier_cap=None):
        self.atol = _as_float(atol, "atol", "tolerance")
        self.rtol = _as_float(rtol, "rtol", "tolerance")
        self.min_cosine = _as_float(min_cosine, "min_cosine", "tolerance")
        self.outlier_fraction = _as_float(outlier_fraction, "outlier_fraction", "tolerance")
        if outlier_cap is None:
            outlier_cap = DEFAULT_OUTLIER_CAP if self.outlier_fraction > 0 else 1.0
        self.outlier_cap = _as_float(outlier_cap, "outlier_cap", "tolerance")
        if self.atol < 0 or self.rtol < 0:
            raise UsageError("tolerance atol and rtol must be >= 0, got atol={} rtol={}".format(self.atol, self.rtol))
        if not -1.0 <= self.min_cosine <= 1.0:
            raise UsageError("tolerance min_cosine must be in [-1, 1], got {}".format(self.min_cosine))
        if not 0.0 <= self.outlier_fraction <= MAX_OUTLIER_FRACTION:
            raise UsageError("tolerance outlier_fraction must be in [0, {:g}], got {}".format(
                MAX_OUTLIER_FRACTION, self.outlier_fraction))
        if not 1.0 <= self.outlier_cap < float("inf"):
            raise UsageError("tolerance outlier_cap must be a finite number >= 1, got {}".format(self.outlier_cap))
        if self.outlier_fraction > 0 and self.outlier_cap <= 1.0:
            raise UsageError("tolerance outlier_fraction {:g} needs an outlier_cap above 1: an element that is out is "
                             "already past 1x its bound, so a cap of 1 lets none out".format(self.outlier_fraction))

    def outliers_allowed(self, size):
        """How many of ``size`` elements may be out: ``floor(outlier_fraction * size)``."""
        return int(math.floor(self.outlier_fraction * size + 1e-9))

    @classmethod
    def from_any(cls, obj):
        """A Tolerance from a Tolerance, a dict of :attr:`FIELDS` (e.g. from a manifest; the missing
        ones from :attr:`DEFAULTS`), any object with those attributes (e.g.
        ``jetcap.models.registry.Tolerance``) or a tuple of 3 to 5 of them in that order."""
        if isinstance(obj, cls):
            return obj
        if isinstance(obj, (tuple, list)):
            if not 3 <= len(obj) <= len(cls.FIELDS):
                raise UsageError("a tolerance tuple needs (atol, rtol, min_cosine[, outlier_fraction[, outlier_cap]]),"
                                 " got {!r}".format(obj))
            return cls(*obj)
        values = _fields_from(obj, cls.FIELDS, "tolerance", defaults=cls.DEFAULTS)
        return cls(**values)

    def to_dict(self):
        """``{"atol", "rtol", "min_cosine", "outlier_fraction", "outlier_cap"}`` (JSON-ready)."""
        return {name: getattr(self, name) for name in self.FIELDS}

    @staticmethod
    def manifest_entry(values):
        """``values`` (a dict of :attr:`FIELDS`) without the outlier fields when there is no allowance
        (fraction 0), so bundles without one read as before the allowance existed."""
        if values.get("outlier_fraction", 0.0) != 0.0:
            return dict(values)
        return {name: value for name, value in values.items() if name not in ("outlier_fraction", "outlier_cap")}

    def describe(self):
        """Short text, e.g. ``|a-r| <= 0.05 + 0.05*|r| (up to 1e-05 of elements within 2x), cos >= 0.999``."""
        text = "|a-r| <= {:g} + {:g}*|r|".format(self.atol, self.rtol)
        if self.outlier_fraction > 0:
            text += " (up to {:g} of elements within {:g}x)".format(self.outlier_fraction, self.outlier_cap)
        return text + ", cos >= {:g}".format(self.min_cosine)

    def __eq__(self, other):
        return isinstance(other, Tolerance) and self.to_dict() == other.to_dict()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(tuple(getattr(self, name) for name in self.FIELDS))

    def __repr__(self):
        return "Tolerance({})".format(", ".join("{}={!r}".format(name, getattr(self, name)) for name in self.FIELDS))


class TaskThresholds(object):
    """Task-level pass thresholds of one precision.

    Args:
        min_exact_match: captions: the lowest acceptable fraction of captions identical to PyTorch's;
            classifier: the lowest acceptable top-1 agreement. In [0, 1].
        max_bleu_drop: captions only, the largest acceptable BLEU-4 drop in points (0..100); default 0.
        max_prob_diff: classifier only, the largest acceptable ``|p - p_ref|`` over all classes and
            inputs; default 1 (no limit).
    """

    __slots__ = ("min_exact_match", "max_bleu_drop", "max_prob_diff")
    FIELDS = ("min_exact_match", "max_bleu_drop", "max_prob_diff")

    def __init__(self, min_exact_match, max_bleu_drop=0.0, max_prob_diff=1.0):
        self.min_exact_match = _as_float(min_exact_match, "min_exact_match", "task thresholds")
        self.max_bleu_drop = _as_float(max_bleu_drop, "max_bleu_drop", "task thresholds")
        self.max_prob_diff = _as_float(max_prob_diff, "max_prob_diff", "task thresholds")
        if not 0.0 <= self.min_exact_match <= 1.0:
            raise UsageError("min_exact_match must be in [0, 1], got {}".format(self.min_exact_match))
        if self.max_bleu_drop < 0 or self.max_prob_diff < 0:
            raise UsageError("max_bleu_drop and max_prob_diff must be >= 0")

    @classmethod
    def from_any(cls, obj):
        """TaskThresholds from itself, a dict or any object with the same field names."""
        if isinstance(obj, cls):
            return obj
        values = _fields_from(obj, cls.FIELDS, "task thresholds",
                              defaults={"max_bleu_drop": 0.0, "max_prob_diff": 1.0})
        return cls(**values)

    def to_dict(self):
        """The three fields as a dict (JSON-ready)."""
        return {"min_exact_match": self.min_exact_match, "max_bleu_drop": self.max_bleu_drop,
                "max_prob_diff": self.max_prob_diff}

    def __eq__(self, other):
        return isinstance(other, TaskThresholds) and self.to_dict() == other.to_dict()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((self.min_exact_match, self.max_bleu_drop, self.max_prob_diff))

    def __repr__(self):
        return "TaskThresholds(min_exact_match={!r}, max_bleu_drop={!r}, max_prob_diff={!r})".format(
            self.min_exact_match, self.max_bleu_drop, self.max_prob_diff)


# -- tensor level ---------------------------------------------------------------------------------

class TensorComparison(object):
    """The result of comparing one output with its reference; truthy when it passed.

    Attributes:
        name: the output's name ("" when compared anonymously).
        shape, reference_shape: tuples; dtype, reference_dtype: numpy dtype names.
        shape_ok, dtype_ok: whether they match.
        exact: True for integer/bool outputs, compared exactly.
        size: number of elements (0 when shapes differ).
        atol, rtol, min_cosine, outlier_fraction, outlier_cap: the tolerance applied.
        outliers_allowed: how many elements may be out (``floor(outlier_fraction * size)``).
        max_abs, mean_abs, p99_abs: absolute error ``|a - r|`` statistics (over elements finite in both).
        max_rel, mean_rel, p99_rel: relative error ``|a - r| / max(|r|, 1e-12)`` statistics
            (informational: near-zero references inflate it; pass/fail uses ``atol + rtol*|r|``).
        cosine: cosine similarity of the flattened arrays (1.0 when both are all zeros, 0.0 when
            exactly one is).
        l2: relative L2 error ``||a - r|| / ||r||`` (0 when both are zero, inf when only r is).
        max_tolerance_ratio: ``max |a - r| / (atol + rtol*|r|)``; <= 1 means every element passes
            (None for exact comparisons).
        tolerance_used: the share of the element rule used, ``max(s[k], s[0] / outlier_cap)`` where
            ``s`` are the ratios above sorted from the largest and ``k = outliers_allowed``; <= 1 is
            what passes (equal to ``max_tolerance_ratio`` without an allowance; None for exact ones).
        nonfinite, reference_nonfinite: NaN/Inf counts in the output and in the reference.
        num_failing, fraction_failing: elements out (non-finite ones included), whether allowed or not.
        elements_ok: whether the element rule passed (no NaN/Inf, at most ``outliers_allowed`` out,
            none past the cap); False for mismatched shapes.
        worst_index: index tuple of the worst element (the first non-finite one if any, else the one
            furthest outside tolerance), None for empty arrays or mismatched shapes.
        worst_actual, worst_reference: the values at ``worst_index``.
        passed: bool; reason: why it failed ("ok" when it passed; several reasons joined by "; ").
        Statistics are None when the shapes differ (nothing was compared element-wise).
    """

    def __init__(self, **fields):
        self.name = ""
        self.shape = ()  # type: Tuple[int, ...]
        self.reference_shape = ()  # type: Tuple[int, ...]
        self.dtype = ""
        self.reference_dtype = ""
        self.shape_ok = False
        self.dtype_ok = False
        self.exact = False
        self.size = 0
        self.atol = None  # type: Optional[float]
        self.rtol = None  # type: Optional[float]
        self.min_cosine = None  # type: Optional[float]
        self.outlier_fraction = 0.0
        self.outlier_cap = 1.0
        self.outliers_allowed = 0
        self.max_abs = None  # type: Optional[float]
        self.mean_abs = None  # type: Optional[float]
        self.p99_abs = None  # type: Optional[float]
        self.max_rel = None  # type: Optional[float]
        self.mean_rel = None  # type: Optional[float]
        self.p99_rel = None  # type: Optional[float]
        self.cosine = None  # type: Optional[float]
        self.l2 = None  # type: Optional[float]
        self.max_tolerance_ratio = None  # type: Optional[float]
        self.tolerance_used = None  # type: Optional[float]
        self.worst_actual = None  # type: Optional[float]
        self.worst_reference = None  # type: Optional[float]
        self.nonfinite = 0
        self.reference_nonfinite = 0
        self.num_failing = 0
        self.elements_ok = False
        self.fraction_failing = 0.0
        self.worst_index = None  # type: Optional[Tuple[int, ...]]
        self.passed = False
        self.reason = ""
        for key, value in fields.items():
            if not hasattr(self, key):
                raise TypeError("TensorComparison has no field {!r}".format(key))
            setattr(self, key, value)

    def __bool__(self):
        return bool(self.passed)

    __nonzero__ = __bool__

    def to_dict(self):
        """All fields as a JSON-ready dict (tuples become lists)."""
        out = dict(self.__dict__)
        for key in ("shape", "reference_shape", "worst_index"):
            if out[key] is not None:
                out[key] = list(out[key])
        return out

    def summary(self):
        """One line: the error statistics that matter, e.g. for a report's detail column."""
        if not self.shape_ok:
            return self.reason
        if self.size == 0:
            return "empty output ({})".format(self.reason)
        parts = []
        if self.nonfinite or self.reference_nonfinite:
            parts.append("non-finite: {} in output, {} in reference".format(self.nonfinite, self.reference_nonfinite))
        parts.append("max_abs {} (p99 {}, mean {})".format(_fmt(self.max_abs), _fmt(self.p99_abs), _fmt(self.mean_abs)))
        if not self.exact:
            parts.append("max_rel {}".format(_fmt(self.max_rel)))
            parts.append("cos {}".format(_fmt(self.cosine, 7)))
            parts.append("l2 {}".format(_fmt(self.l2)))
        allowed = " (up to {} allowed within {:g}x)".format(
            self.outliers_allowed, self.outlier_cap) if self.outliers_allowed else ""
        parts.append("{}/{} elements ({:.2%}) outside tolerance{}".format(
            self.num_failing, self.size, self.fraction_failing, allowed))
        if self.worst_index is not None:
            parts.append("worst {}: {} vs {}".format(
                list(self.worst_index), _fmt(self.worst_actual, 6), _fmt(self.worst_reference, 6)))
        if not self.passed:
            parts.append("FAIL: " + self.reason)
        return ", ".join(parts)

    def __repr__(self):
        return "<TensorComparison {!r} {}: {}>".format(self.name, "PASS" if self.passed else "FAIL", self.summary())


def _fmt(value, digits=3):
    """Compact number formatting for summaries; None -> '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return "{:.{}g}".format(value, digits)
    return str(value)


def _check_numeric(array, what):
    """Reject arrays that have no meaningful numeric comparison (strings, objects, complex)."""
    kind = array.dtype.kind
    if kind not in "biuf":
        raise UsageError("cannot compare {} of dtype {} numerically (expected float, int or bool)".format(
            what, array.dtype))


def compare_with(actual, reference, tolerance, name="", strict_dtype=True):
    """:func:`compare_arrays` under a :class:`Tolerance` (or anything :meth:`Tolerance.from_any` reads)."""
    tol = Tolerance.from_any(tolerance)
    return compare_arrays(actual, reference, tol.atol, tol.rtol, tol.min_cosine, name=name,
                          strict_dtype=strict_dtype, outlier_fraction=tol.outlier_fraction,
                          outlier_cap=tol.outlier_cap)


def compare_arrays(actual, reference, atol, rtol, min_cosine=0.0, name="", strict_dtype=True,
                   outlier_fraction=0.0, outlier_cap=1.0):
    """Compare ``actual`` (a backend's output) with ``reference`` (PyTorch's) element-wise.

    Args:
        actual, reference: array-likes (numpy arrays, lists, scalars); float16/32/64, int or bool.
        atol, rtol: element ``i`` is out when ``|a_i - r_i| > atol + rtol * |r_i|``.
        min_cosine: the output fails when cosine(a, r) < min_cosine (default 0; ignored for exact,
            i.e. integer/bool, outputs).
        outlier_fraction, outlier_cap: up to ``floor(outlier_fraction * size)`` elements may be out,
            none past ``outlier_cap`` times its bound (default 0 and 1: none may be out; ignored for
            exact outputs, which never allow one).
        name: the output's name, carried into the result (default "").
        strict_dtype: when True (default) the dtypes must be identical; when False only their kinds
            must agree (float vs float, int vs int), e.g. to accept float16 outputs of an FP16 engine
            against a float32 reference.
    Returns:
        a :class:`TensorComparison` (truthy when it passed). Never raises for numeric disagreement:
        shape/dtype mismatches and NaN/Inf are failures with a reason, so every output can be
        collected before reporting.
    Raises:
        UsageError: for arrays of non-numeric dtype or an invalid tolerance.
    """
    tol = Tolerance(atol, rtol, min_cosine, outlier_fraction, outlier_cap)
    a = np.asarray(actual)
    r = np.asarray(reference)
    _check_numeric(a, "output {!r}".format(name) if name else "output")
    _check_numeric(r, "reference {!r}".format(name) if name else "reference")

    result = TensorComparison(
        name=name, shape=tuple(int(d) for d in a.shape), reference_shape=tuple(int(d) for d in r.shape),
        dtype=str(a.dtype), reference_dtype=str(r.dtype), atol=tol.atol, rtol=tol.rtol,
        min_cosine=tol.min_cosine, outlier_fraction=tol.outlier_fraction, outlier_cap=tol.outlier_cap)
    exact_kinds = "biu"
    result.exact = r.dtype.kind in exact_kinds and a.dtype.kind in exact_kinds
    reasons = []

    if a.dtype == r.dtype:
        result.dtype_ok = True
    else:
        same_kind = (a.dtype.kind in exact_kinds) == (r.dtype.kind in exact_kinds) and a.dtype.kind != "b" \
            and r.dtype.kind != "b"
        result.dtype_ok = (not strict_dtype) and same_kind
        if not result.dtype_ok:
            reasons.append("dtype {} != reference {}".format(a.dtype, r.dtype))

    if a.shape != r.shape:
        result.shape_ok = False
        reasons.insert(0, "shape {} != reference {}".format(result.shape, result.reference_shape))
        result.passed = False
        result.reason = "; ".join(reasons)
        return result
    result.shape_ok = True
    result.size = int(a.size)

    if a.size == 0:
        for field in ("max_abs", "mean_abs", "p99_abs", "max_rel", "mean_rel", "p99_rel", "l2"):
            setattr(result, field, 0.0)
        result.cosine = 1.0
        result.max_tolerance_ratio = None if result.exact else 0.0
        result.tolerance_used = result.max_tolerance_ratio
        result.elements_ok = True
        result.passed = not reasons
        result.reason = "; ".join(reasons) if reasons else "ok"
        return result

    a64 = a.astype(np.float64).reshape(-1)
    r64 = r.astype(np.float64).reshape(-1)
    finite_a = np.isfinite(a64)
    finite_r = np.isfinite(r64)
    result.nonfinite = int(a64.size - np.count_nonzero(finite_a))
    result.reference_nonfinite = int(r64.size - np.count_nonzero(finite_r))
    both = finite_a & finite_r

    fa = a64[both]
    fr = r64[both]
    diff = np.abs(fa - fr)
    abs_r = np.abs(fr)
    if diff.size:
        rel = diff / np.maximum(abs_r, REL_EPS)
        result.max_abs = float(diff.max())
        result.mean_abs = float(diff.mean())
        result.p99_abs = float(np.percentile(diff, 99))
        result.max_rel = float(rel.max())
        result.mean_rel = float(rel.mean())
        result.p99_rel = float(np.percentile(rel, 99))
    else:
        for field in ("max_abs", "mean_abs", "p99_abs", "max_rel", "mean_rel", "p99_rel"):
            setattr(result, field, float("nan"))
    result.cosine = _cosine(fa, fr)
    result.l2 = _relative_l2(fa, fr)

    if result.exact:
        failing = diff != 0
        score = diff
    else:
        bound = tol.atol + tol.rtol * abs_r
        failing = diff > bound
        with np.errstate(divide="ignore", invalid="ignore"):
            score = np.where(diff == 0, 0.0, diff / bound)
        result.max_tolerance_ratio = float(score.max()) if score.size else float("nan")
        result.outliers_allowed = tol.outliers_allowed(a64.size)
        result.tolerance_used = _tolerance_used(score, result.outliers_allowed, tol.outlier_cap)

    num_failing = int(np.count_nonzero(failing)) + int(a64.size - np.count_nonzero(both))
    result.num_failing = num_failing
    result.fraction_failing = num_failing / float(a64.size)

    # worst element: the first non-finite one, else the one furthest outside tolerance
    if not both.all():
        flat_worst = int(np.flatnonzero(~both)[0])
    else:
        flat_worst = int(np.argmax(score))
    result.worst_index = tuple(int(i) for i in np.unravel_index(flat_worst, a.shape))
    result.worst_actual = float(a64[flat_worst])
    result.worst_reference = float(r64[flat_worst])

    if result.nonfinite:
        reasons.append("{} NaN/Inf value(s) in output".format(result.nonfinite))
    if result.reference_nonfinite:
        reasons.append("{} NaN/Inf value(s) in reference".format(result.reference_nonfinite))
    elements_out = int(np.count_nonzero(failing))
    if result.exact:
        if elements_out:
            reasons.append("{} of {} elements differ (exact comparison)".format(elements_out, a64.size))
    elif elements_out > result.outliers_allowed:
        allowed = " ({} allowed)".format(result.outliers_allowed) if result.outliers_allowed else ""
        reasons.append("{} of {} elements outside |a-r| <= {:g} + {:g}*|r|{} (max_abs {})".format(
            elements_out, a64.size, tol.atol, tol.rtol, allowed, _fmt(result.max_abs)))
    elif elements_out and result.max_tolerance_ratio > tol.outlier_cap:
        reasons.append("an element is {}x its bound |a-r| <= {:g} + {:g}*|r|, past the {:g}x allowed"
                       " (max_abs {})".format(_fmt(result.max_tolerance_ratio), tol.atol, tol.rtol,
                                              tol.outlier_cap, _fmt(result.max_abs)))
    if not result.exact and not (result.cosine >= tol.min_cosine):
        reasons.append("cosine {} < min_cosine {:g}".format(_fmt(result.cosine, 7), tol.min_cosine))
    result.elements_ok = not (result.nonfinite or result.reference_nonfinite) and (
        elements_out == 0 if result.exact else result.tolerance_used <= 1.0)
    result.passed = not reasons
    result.reason = "; ".join(reasons) if reasons else "ok"
    return result


def _tolerance_used(score, allowed, cap):
    """``max(s[allowed], s[0] / cap)`` of the ratios ``score`` sorted from the largest (NaN when empty)."""
    if not score.size:
        return float("nan")
    largest = float(score.max())
    if allowed <= 0:
        return largest
    if allowed >= score.size:
        return largest / cap
    kth = float(-np.partition(-score, allowed)[allowed])
    return max(kth, largest / cap)


def _cosine(a, r):
    """Cosine similarity of two float64 vectors; 1 when both are all zeros, 0 when only one is."""
    # scale first so that squares of large values cannot overflow
    scale = max(float(np.max(np.abs(a))) if a.size else 0.0, float(np.max(np.abs(r))) if r.size else 0.0)
    if scale == 0.0:
        return 1.0
    a = a / scale
    r = r / scale
    na = float(np.sqrt(np.dot(a, a)))
    nr = float(np.sqrt(np.dot(r, r)))
    if na == 0.0 or nr == 0.0:
        return 0.0
    return float(min(1.0, max(-1.0, np.dot(a, r) / (na * nr))))


def _relative_l2(a, r):
    """``||a - r|| / ||r||``: 0 when both are zero, inf when only the reference is."""
    scale = max(float(np.max(np.abs(a))) if a.size else 0.0, float(np.max(np.abs(r))) if r.size else 0.0)
    if scale == 0.0:
        return 0.0
    num = float(np.linalg.norm((a - r) / scale))
    den = float(np.linalg.norm(r / scale))
    if den == 0.0:
        return 0.0 if num == 0.0 else float("inf")
    return num / den


def tolerance_checker(default, per_output=None, strict_dtype=True):
    """Make a comparison function with a default tolerance and optional per-output overrides.

    Args:
        default: the tolerance of every output not in ``per_output``: a :class:`Tolerance`, a dict
            ``{atol, rtol, min_cosine}`` (e.g. from a manifest) or any object with those attributes
            (such as ``jetcap.models.registry.Tolerance``).
        per_output: optional ``{output_name: tolerance}`` overrides (same accepted forms).
        strict_dtype: passed to :func:`compare_arrays` (default True: dtypes must be identical).
    Returns:
        ``check(output_name, actual, reference) -> TensorComparison``. The closure also carries
        ``check.tolerance_for(output_name) -> Tolerance`` and ``check.default``.

    Example::

        check = tolerance_checker({"atol": 5e-2, "rtol": 5e-2, "min_cosine": 0.999},
                                  per_output={"alpha": {"atol": 1e-2, "rtol": 0.0, "min_cosine": 0.99}})
        results = [check(name, outputs[name], reference[name]) for name in reference]
        failed = [r for r in results if not r]
    """
    default_tol = Tolerance.from_any(default)
    overrides = {}
    for output_name, tol in (per_output or {}).items():
        overrides[str(output_name)] = Tolerance.from_any(tol)

    def tolerance_for(output_name):
        """The tolerance applied to ``output_name``."""
        return overrides.get(output_name, default_tol)

    def check(output_name, actual, reference):
        """Compare one output with its reference under its tolerance."""
        return compare_with(actual, reference, tolerance_for(output_name), name=output_name,
                            strict_dtype=strict_dtype)

    # attributes of the closure (setattr keeps type checkers from objecting to function attributes)
    setattr(check, "tolerance_for", tolerance_for)
    setattr(check, "default", default_tol)
    return check


# -- task level -----------------------------------------------------------------------------------

def _token_tuple(tokens, what):
    """A caption's tokens as a hashable tuple of Python scalars."""
    if isinstance(tokens, (str, bytes)):
        raise UsageError("{} must be a sequence of tokens, got a string (tokenize it first)".format(what))
    try:
        items = list(tokens.tolist() if isinstance(tokens, np.ndarray) else tokens)
    except TypeError:
        raise UsageError("{} must be a sequence of tokens, got {!r}".format(what, tokens))
    return tuple(items)


class CaptionAgreement(object):
    """How a backend's captions agree with PyTorch's.

    Attributes:
        count: number of captions compared.
        exact_matches: how many are token-for-token identical; exact_match_rate = exact_matches / count.
        mismatches: indices of captions that differ.
        bleu: corpus BLEU-4 (0..100) of the backend's captions with PyTorch's as references.
        bleu_drop: BLEU points lost (see :func:`caption_agreement`); 0 when every caption matches.
        reference_bleu, candidate_bleu: BLEU of PyTorch's and of the backend's captions against the
            ground truth, when ground truth was given (else None).
    """

    def __init__(self, count, exact_matches, mismatches, bleu, bleu_drop, reference_bleu=None,
                 candidate_bleu=None):
        self.count = count
        self.exact_matches = exact_matches
        self.exact_match_rate = exact_matches / float(count)
        self.mismatches = list(mismatches)
        self.bleu = bleu
        self.bleu_drop = bleu_drop
        self.reference_bleu = reference_bleu
        self.candidate_bleu = candidate_bleu

    def to_dict(self):
        """All fields as a JSON-ready dict."""
        return dict(self.__dict__)

    def __repr__(self):
        return "<CaptionAgreement {}/{} identical, BLEU drop {:.3f}>".format(
            self.exact_matches, self.count, self.bleu_drop)


def caption_agreement(candidate_token_lists, reference_token_lists, ground_truth=None):
    """Compare a backend's captions with PyTorch's.

    Args:
        candidate_token_lists: the backend's captions, one token sequence (ids or words) each.
        reference_token_lists: PyTorch's captions for the same inputs, in the same order.
        ground_truth: optional human captions: for each input a *list* of reference token sequences.
    Returns:
        a :class:`CaptionAgreement`. ``bleu_drop`` is ``BLEU(pytorch, gt) - BLEU(backend, gt)`` when
        ground truth is given, else ``100 - BLEU(backend, pytorch)``; it is 0 when every caption is
        identical. BLEU here uses the *effective order* (n-gram orders that no caption is long
        enough for are left out) so that short identical captions are not scored 0.
    Raises:
        UsageError: when the lists differ in length or are empty, or a caption is not a token list.
    """
    candidates = [_token_tuple(c, "candidate caption {}".format(i)) for i, c in enumerate(candidate_token_lists)]
    references = [_token_tuple(r, "reference caption {}".format(i)) for i, r in enumerate(reference_token_lists)]
    if len(candidates) != len(references):
        raise UsageError("{} candidate captions but {} reference captions".format(len(candidates), len(references)))
    if not candidates:
        raise UsageError("no captions to compare")
    if ground_truth is not None:
        ground_truth = list(ground_truth)
        if len(ground_truth) != len(candidates):
            raise UsageError("{} captions but ground truth for {}".format(len(candidates), len(ground_truth)))
    mismatches = [i for i, (c, r) in enumerate(zip(candidates, references)) if c != r]
    exact = len(candidates) - len(mismatches)

    bleu = corpus_bleu(candidates, [[r] for r in references], effective_order=True)
    reference_bleu = candidate_bleu = None  # type: Optional[float]
    if ground_truth is not None:
        reference_bleu = corpus_bleu(references, ground_truth, effective_order=True)
        candidate_bleu = corpus_bleu(candidates, ground_truth, effective_order=True)
    if not mismatches:
        bleu, drop = 100.0, 0.0
    elif reference_bleu is not None and candidate_bleu is not None:
        drop = reference_bleu - candidate_bleu
    else:
        drop = 100.0 - bleu
    return CaptionAgreement(len(candidates), exact, mismatches, bleu, drop, reference_bleu, candidate_bleu)


def softmax(logits, axis=-1):
    """Numerically stable softmax in float64 along ``axis`` (NaN/Inf rows give NaN)."""
    x = np.asarray(logits, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        shifted = x - np.max(x, axis=axis, keepdims=True)
        e = np.exp(shifted)
        return e / np.sum(e, axis=axis, keepdims=True)


class LabelAgreement(object):
    """How a backend's class predictions agree with PyTorch's.

    Attributes:
        count: number of inputs compared.
        top1_matches, top1_agreement: inputs whose arg-max class is PyTorch's, and their fraction.
        mismatches: indices of inputs whose top-1 class differs (rows with NaN/Inf included).
        max_prob_diff: the largest ``|p - p_ref|`` over inputs and classes (NaN when any value is
            non-finite, so that a threshold check on it fails).
        worst_index: the input with the largest probability difference (the first non-finite row
            if any).
        nonfinite_rows: how many inputs have NaN/Inf in either array.
    """

    def __init__(self, count, top1_matches, mismatches, max_prob_diff, worst_index, nonfinite_rows):
        self.count = count
        self.top1_matches = top1_matches
        self.top1_agreement = top1_matches / float(count)
        self.mismatches = list(mismatches)
        self.max_prob_diff = max_prob_diff
        self.worst_index = worst_index
        self.nonfinite_rows = nonfinite_rows

    def to_dict(self):
        """All fields as a JSON-ready dict."""
        return dict(self.__dict__)

    def __repr__(self):
        return "<LabelAgreement {}/{} top-1, max prob diff {:.3g}>".format(
            self.top1_matches, self.count, self.max_prob_diff)


def label_agreement(candidate_probs, reference_probs, from_logits=False):
    """Compare a backend's class probabilities with PyTorch's.

    Args:
        candidate_probs, reference_probs: arrays of shape ``(N, C)``, one row per input.
        from_logits: when True, both are logits and are turned into probabilities with a softmax
            first (default False).
    Returns:
        a :class:`LabelAgreement`. Ties in the arg-max go to the lowest class index (numpy's rule).
    Raises:
        UsageError: when the arrays are not 2-D, differ in shape or hold no inputs.
    """
    cand = np.asarray(candidate_probs)
    ref = np.asarray(reference_probs)
    for what, arr in (("candidate", cand), ("reference", ref)):
        _check_numeric(arr, what + " probabilities")
        if arr.ndim != 2:
            raise UsageError("{} probabilities must have shape (N, classes), got {}".format(what, arr.shape))
    if cand.shape != ref.shape:
        raise UsageError("candidate probabilities have shape {} but reference {}".format(cand.shape, ref.shape))
    if cand.shape[0] == 0 or cand.shape[1] == 0:
        raise UsageError("no class probabilities to compare (shape {})".format(cand.shape))
    if from_logits:
        cand, ref = softmax(cand), softmax(ref)
    cand = cand.astype(np.float64)
    ref = ref.astype(np.float64)
    finite_rows = np.isfinite(cand).all(axis=1) & np.isfinite(ref).all(axis=1)
    agree = (np.argmax(cand, axis=1) == np.argmax(ref, axis=1)) & finite_rows
    mismatches = [int(i) for i in np.flatnonzero(~agree)]
    nonfinite_rows = int(cand.shape[0] - np.count_nonzero(finite_rows))
    if nonfinite_rows:
        max_diff = float("nan")
        worst = int(np.flatnonzero(~finite_rows)[0])
    else:
        row_diff = np.abs(cand - ref).max(axis=1)
        worst = int(np.argmax(row_diff))
        max_diff = float(row_diff[worst])
    return LabelAgreement(int(cand.shape[0]), int(np.count_nonzero(agree)), mismatches, max_diff, worst,
                          nonfinite_rows)
