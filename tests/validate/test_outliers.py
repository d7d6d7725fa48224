"""The element rule's allowance for the tail: ``outlier_fraction`` and ``outlier_cap`` of a tolerance."""
import numpy as np
import pytest

from jetcap.errors import UsageError
from jetcap.runtime import bundle_schema
from jetcap.validate.metrics import MAX_OUTLIER_FRACTION, Tolerance, compare_arrays, compare_with
from jetcap.validate.report import tensor_checks

TAIL = dict(atol=0.05, rtol=0.05, min_cosine=0.999, outlier_fraction=1e-5, outlier_cap=2.0)
SIZE = 1000000  # 10 elements may be out under TAIL


@pytest.fixture(scope="module")
def reference():
    return np.random.RandomState(1).rand(SIZE).astype(np.float32)  # in [0, 1): bounds 0.05..0.1


def _out(reference, count, times):
    """``reference`` with ``count`` elements moved ``times`` their bound away (spread over the array)."""
    actual = reference.astype(np.float64).copy()
    where = np.linspace(0, reference.size - 1, count).astype(np.int64) if count else np.array([], np.int64)
    actual[where] += times * (0.05 + 0.05 * np.abs(actual[where]))
    return actual.astype(np.float32), where


def test_without_an_allowance_one_element_out_of_a_million_fails(reference):
    actual, _ = _out(reference, 1, 1.2)
    result = compare_arrays(actual, reference, 0.05, 0.05, 0.999)
    assert not result and not result.elements_ok
    assert result.outliers_allowed == 0 and result.num_failing == 1
    assert result.tolerance_used == pytest.approx(result.max_tolerance_ratio)
    assert result.tolerance_used == pytest.approx(1.2, rel=1e-4)


def test_allowed_elements_within_the_cap_pass(reference):
    actual, _ = _out(reference, 10, 1.9)
    result = compare_with(actual, reference, TAIL)
    assert result, result.reason
    assert result.elements_ok and result.outliers_allowed == 10 and result.num_failing == 10
    # the 11th largest ratio is an untouched element's (0), so the share used is the largest over the cap
    assert result.tolerance_used == pytest.approx(1.9 / 2.0, rel=1e-3)
    assert "up to 10 allowed within 2x" in result.summary()


def test_one_more_than_allowed_fails(reference):
    actual, _ = _out(reference, 11, 1.1)
    result = compare_with(actual, reference, TAIL)
    assert not result and not result.elements_ok
    assert "11 of 1000000 elements outside" in result.reason and "(10 allowed)" in result.reason
    assert result.tolerance_used == pytest.approx(1.1, rel=1e-3)  # the 11th largest


def test_an_element_past_the_cap_fails_alone(reference):
    actual, _ = _out(reference, 1, 2.5)
    result = compare_with(actual, reference, TAIL)
    assert not result
    assert "past the 2x allowed" in result.reason
    assert result.tolerance_used == pytest.approx(1.25, rel=1e-3)


def test_nonfinite_elements_are_never_allowed(reference):
    actual = reference.copy()
    actual[7] = np.nan
    result = compare_with(actual, reference, TAIL)
    assert not result and not result.elements_ok and "NaN/Inf" in result.reason


def test_small_outputs_get_no_allowance():
    """10 per million of a 10 000-word distribution is 0.1 elements: the rule stays strict there."""
    reference = np.linspace(-5, 5, 10000).astype(np.float32)
    actual = reference.copy()
    actual[3] += 0.3
    result = compare_with(actual, reference, TAIL)
    assert result.outliers_allowed == 0 and not result


def test_the_verdict_no_longer_depends_on_the_batch():
    """Gaussian error at 0.2 of the bound: the largest of 3.2 M elements reaches ~1.06, the largest of
    400 k ~0.97.  Without the allowance batch 8 fails where batch 1 passes; with it both pass."""
    rng = np.random.RandomState(5)
    reference = rng.rand(8, 401408)
    bound = 0.05 + 0.05 * reference
    actual = reference + rng.randn(*reference.shape) * 0.2 * bound
    strict = dict(TAIL, outlier_fraction=0.0)
    assert compare_with(actual[:1], reference[:1], strict).max_tolerance_ratio < 1.0
    assert not compare_with(actual, reference, strict)
    assert compare_with(actual[:1], reference[:1], TAIL) and compare_with(actual, reference, TAIL)


def test_exact_outputs_never_allow_a_difference():
    reference = np.arange(SIZE, dtype=np.int64)
    actual = reference.copy()
    actual[0] = 5
    result = compare_with(actual, reference, TAIL)
    assert not result and result.exact and "differ" in result.reason


@pytest.mark.parametrize("fields", [dict(outlier_fraction=-1e-6), dict(outlier_fraction=MAX_OUTLIER_FRACTION * 2),
                                    dict(outlier_cap=0.5), dict(outlier_cap=float("inf")),
                                    dict(outlier_fraction="x"),
                                    dict(outlier_fraction=1e-5, outlier_cap=1.0)])
def test_bad_allowances_are_usage_errors(fields):
    with pytest.raises(UsageError):
        Tolerance(0.05, 0.05, 0.999, **fields)


def test_tolerance_forms_and_old_manifests():
    tol = Tolerance(**TAIL)
    assert Tolerance.from_any(tol.to_dict()) == tol
    assert Tolerance.from_any((0.05, 0.05, 0.999, 1e-5, 2.0)) == tol
    assert tol.outliers_allowed(3211264) == 32 and tol.outliers_allowed(10000) == 0
    assert "up to 1e-05 of elements within 2x" in tol.describe()
    # a manifest written before the allowance existed: none allowed
    old = Tolerance.from_any({"atol": 0.05, "rtol": 0.05, "min_cosine": 0.999})
    assert old.outlier_fraction == 0.0 and old.outlier_cap == 1.0
    assert "up to" not in old.describe()


def test_report_check_shows_the_allowance(reference):
    passing = compare_with(_out(reference, 3, 1.5)[0], reference, TAIL, name="features")
    failing = compare_with(_out(reference, 1, 3.0)[0], reference, TAIL, name="features")
    allclose = tensor_checks("onnxruntime", "fp16", "encoder", "features", {"batch1": passing})[0]
    assert allclose.passed and allclose.value == 3 and allclose.threshold == 10
    allclose = tensor_checks("onnxruntime", "fp16", "encoder", "features",
                             {"batch1": passing, "batch8": failing})[0]
    assert not allclose.passed and allclose.worst_input == "batch8"
    assert allclose.threshold == 2.0 and allclose.value > 2.0  # out by the cap: the row shows the cap


def test_bundle_schema_checks_the_allowance():
    good = {"fp16": dict(TAIL), "fp32": dict(TAIL, min_cosine=-0.5)}
    bundle_schema._check_tolerances(good)
    for bad in (dict(TAIL, outlier_cap=0.5), dict(TAIL, outlier_fraction=-1.0), dict(TAIL, outlier_fraction=0.5)):
        with pytest.raises(Exception, match="tolerances.fp16.outlier"):
            bundle_schema._check_tolerances({"fp16": bad})
    with pytest.raises(Exception, match="tolerances.fp16.min_cosine"):
        bundle_schema._check_tolerances({"fp16": dict(TAIL, min_cosine=1.5)})


def test_a_fraction_alone_needs_a_cap_and_manifests_omit_unused_fields(classifier_bundle, captioner_bundle):
    import json

    with pytest.raises(UsageError, match="needs an outlier_cap above 1"):
        Tolerance.from_any({"atol": 0.05, "rtol": 0.05, "min_cosine": 0.999, "outlier_fraction": 1e-5,
                            "outlier_cap": 1.0})
    alone = Tolerance.from_any({"atol": 0.05, "rtol": 0.05, "min_cosine": 0.999, "outlier_fraction": 1e-5})
    assert alone.outlier_cap == 2.0 and Tolerance(0.05, 0.05).outlier_cap == 1.0
    plain = {"atol": 1e-4, "rtol": 1e-4, "min_cosine": 0.9999, "outlier_fraction": 0.0, "outlier_cap": 1.0}
    assert Tolerance.manifest_entry(plain) == {"atol": 1e-4, "rtol": 1e-4, "min_cosine": 0.9999}
    assert Tolerance.manifest_entry(TAIL) == TAIL
    # bundles without an allowance read as before it existed (an older jetcap validates them)
    for precision, entry in json.loads((classifier_bundle / "manifest.json").read_text())["tolerances"].items():
        assert set(entry) == {"atol", "rtol", "min_cosine"}, precision
    captioner = json.loads((captioner_bundle / "manifest.json").read_text())["tolerances"]
    assert set(captioner["fp32"]) == {"atol", "rtol", "min_cosine"}
    assert captioner["fp16"]["outlier_fraction"] == 1e-5 and captioner["fp16"]["outlier_cap"] == 2.0
