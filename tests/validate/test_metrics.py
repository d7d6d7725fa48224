"""Tensor-level and task-level comparison (jetcap.validate.metrics)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from jetcap.errors import JetcapError, UsageError
from jetcap.validate.metrics import (
    TaskThresholds,
    Tolerance,
    caption_agreement,
    compare_arrays,
    label_agreement,
    softmax,
    tolerance_checker,
)

FP16_TOL = dict(atol=5e-2, rtol=5e-2, min_cosine=0.999)  # the registry's FP16 tolerance


@pytest.fixture(scope="module")
def reference():
    return np.random.RandomState(0).randn(4, 64, 32).astype(np.float32) * 3.0


# -- compare_arrays ------------------------------------------------------------------------------

def test_identical_arrays_pass_with_zero_tolerance(reference):
    result = compare_arrays(reference, reference.copy(), atol=0.0, rtol=0.0, min_cosine=1.0)
    assert result
    assert result.passed and result.reason == "ok"
    assert result.max_abs == 0.0 and result.mean_abs == 0.0 and result.p99_abs == 0.0
    assert result.max_rel == 0.0 and result.l2 == 0.0
    assert result.cosine == pytest.approx(1.0, abs=1e-12)
    assert result.num_failing == 0 and result.fraction_failing == 0.0
    assert result.max_tolerance_ratio == 0.0
    assert result.shape == (4, 64, 32) and result.dtype == "float32"


def test_fp16_rounding_passes_fp16_tolerance_but_fails_polygraphy_default(reference):
    rounded = reference.astype(np.float16).astype(np.float32)
    assert compare_arrays(rounded, reference, **FP16_TOL)
    strict = compare_arrays(rounded, reference, atol=1e-5, rtol=1e-5)
    assert not strict
    assert strict.num_failing > 0
    assert "outside |a-r| <= 1e-05 + 1e-05*|r|" in strict.reason
    # the statistics describe float16 rounding: relative error below 2**-11
    assert strict.max_rel <= 2.0 ** -11 + 1e-12
    assert strict.cosine > 0.999999


def test_float16_inputs_are_compared_in_float64():
    ref = np.array([1000.0, -2000.0, 0.5], dtype=np.float16)
    act = np.array([1001.0, -2000.0, 0.5], dtype=np.float16)
    result = compare_arrays(act, ref, atol=0.0, rtol=0.0)
    assert result.max_abs == 1.0  # float16 subtraction would round differently/overflow
    assert result.worst_index == (0,)
    assert result.worst_actual == 1000.0 + 1.0 and result.worst_reference == 1000.0
    big = np.array([60000.0, 60000.0], dtype=np.float16)
    assert compare_arrays(big, big, 0, 0).cosine == pytest.approx(1.0)  # squares overflow in fp16


def test_perturbed_element_fails_and_is_located(reference):
    actual = reference.copy()
    actual[2, 10, 5] += 1.0
    result = compare_arrays(actual, reference, **FP16_TOL)
    assert not result
    assert result.num_failing == 1
    assert result.fraction_failing == pytest.approx(1.0 / reference.size)
    assert result.worst_index == (2, 10, 5)
    assert result.worst_actual == pytest.approx(float(actual[2, 10, 5]))
    assert result.max_abs == pytest.approx(1.0, rel=1e-6)
    assert result.max_tolerance_ratio > 1.0
    assert "1 of {} elements outside".format(reference.size) in result.reason


def test_allclose_semantics_boundary_passes_and_matches_numpy():
    ref = np.array([0.0, 1.0, -2.0, 10.0])
    atol, rtol = 0.25, 0.5
    on_bound = ref + (atol + rtol * np.abs(ref))
    assert compare_arrays(on_bound, ref, atol, rtol)
    assert np.allclose(on_bound, ref, rtol=rtol, atol=atol)
    just_over = on_bound.copy()
    just_over[3] += 1e-9
    result = compare_arrays(just_over, ref, atol, rtol)
    assert not result and result.num_failing == 1 and result.worst_index == (3,)
    rng = np.random.RandomState(3)
    for _ in range(50):
        r = rng.randn(20)
        a = r + rng.randn(20) * 0.05
        assert bool(compare_arrays(a, r, 0.05, 0.05)) == bool(np.allclose(a, r, rtol=0.05, atol=0.05))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_output_always_fails(reference, bad):
    actual = reference.copy()
    actual[1, 2, 3] = bad
    huge = compare_arrays(actual, reference, atol=1e30, rtol=1e30, min_cosine=-1.0)
    assert not huge
    assert huge.nonfinite == 1 and huge.reference_nonfinite == 0
    assert huge.worst_index == (1, 2, 3)
    assert huge.num_failing == 1
    assert "NaN/Inf value(s) in output" in huge.reason
    # the statistics are those of the finite elements, so they stay readable
    assert huge.max_abs == 0.0 and math.isfinite(huge.cosine)


def test_nonfinite_reference_fails_too(reference):
    ref = reference.copy()
    ref[0, 0, 0] = np.nan
    result = compare_arrays(ref, ref, atol=1.0, rtol=1.0)
    assert not result
    assert result.nonfinite == 1 and result.reference_nonfinite == 1
    assert "in reference" in result.reason


def test_all_nan_output_fails_with_nan_statistics():
    result = compare_arrays(np.full(3, np.nan), np.zeros(3), 1.0, 1.0)
    assert not result
    assert result.nonfinite == 3 and result.num_failing == 3 and result.fraction_failing == 1.0
    assert math.isnan(result.max_abs)


def test_shape_mismatch_fails_with_message():
    result = compare_arrays(np.zeros((2, 3)), np.zeros((3, 2)), 1.0, 1.0)
    assert not result
    assert not result.shape_ok
    assert result.reason.startswith("shape (2, 3) != reference (3, 2)")
    assert result.max_abs is None and result.cosine is None and result.worst_index is None
    assert "shape (2, 3) != reference (3, 2)" in result.summary()
    # same number of elements but an extra axis is still a mismatch (no silent broadcasting)
    assert not compare_arrays(np.zeros((1, 6)), np.zeros(6), 1.0, 1.0)


def test_dtype_mismatch_fails_unless_relaxed():
    ref = np.linspace(-1, 1, 10).astype(np.float32)
    act = ref.astype(np.float16)
    strict = compare_arrays(act, ref, **FP16_TOL)
    assert not strict and not strict.dtype_ok
    assert "dtype float16 != reference float32" in strict.reason
    assert strict.max_abs is not None  # statistics are still computed
    relaxed = compare_arrays(act, ref, strict_dtype=False, **FP16_TOL)
    assert relaxed and relaxed.dtype_ok
    # a float output against an integer reference is never the same kind
    assert not compare_arrays(ref, ref.astype(np.int64), 1.0, 1.0, strict_dtype=False)


def test_integer_outputs_are_compared_exactly():
    ref = np.array([[3, 7, 1], [0, 2, 9]], dtype=np.int64)
    assert compare_arrays(ref.copy(), ref, atol=0.0, rtol=0.0)
    act = ref.copy()
    act[1, 2] = 10
    # a loose tolerance does not make a different token id acceptable
    result = compare_arrays(act, ref, atol=5.0, rtol=0.5, min_cosine=0.0)
    assert not result and result.exact
    assert result.num_failing == 1 and result.worst_index == (1, 2)
    assert "differ (exact comparison)" in result.reason
    assert result.max_tolerance_ratio is None


def test_integer_outputs_do_not_enforce_cosine():
    ref = np.zeros(4, dtype=np.int32)
    act = np.zeros(4, dtype=np.int32)
    result = compare_arrays(act, ref, 0, 0, min_cosine=1.0)
    assert result


def test_bool_outputs():
    ref = np.array([True, False, True])
    assert compare_arrays(ref.copy(), ref, 0, 0)
    result = compare_arrays(np.array([True, True, True]), ref, 0, 0)
    assert not result and result.worst_index == (1,)


def test_empty_arrays_pass():
    result = compare_arrays(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), 0.0, 0.0, 1.0)
    assert result
    assert result.size == 0 and result.cosine == 1.0 and result.max_abs == 0.0 and result.worst_index is None
    assert "empty" in result.summary()


def test_zero_vectors_cosine_and_l2():
    zeros = np.zeros(8)
    both = compare_arrays(zeros, zeros, 0.0, 0.0, min_cosine=1.0)
    assert both and both.cosine == 1.0 and both.l2 == 0.0
    one = compare_arrays(np.full(8, 1e-3), zeros, atol=1e-2, rtol=0.0, min_cosine=0.9)
    assert one.cosine == 0.0 and math.isinf(one.l2)
    assert not one and "cosine 0 < min_cosine 0.9" in one.reason
    # relative error of a near-zero reference is huge but finite; pass/fail uses atol
    assert one.num_failing == 0 and math.isfinite(one.max_rel)


def test_sign_flip_fails_cosine_even_when_elementwise_passes():
    ref = np.full(100, 0.01)
    result = compare_arrays(-ref, ref, atol=0.05, rtol=0.0, min_cosine=0.0)
    assert result.num_failing == 0
    assert result.cosine == pytest.approx(-1.0)
    assert not result and "cosine" in result.reason


def test_cosine_floor_catches_diffuse_error():
    rng = np.random.RandomState(1)
    ref = rng.randn(1000) * 0.01
    act = ref + rng.randn(1000) * 0.004
    result = compare_arrays(act, ref, atol=0.05, rtol=0.05, min_cosine=0.999)
    assert result.num_failing == 0
    assert result.cosine < 0.999
    assert not result


def test_scalars_and_lists_and_large_values():
    assert compare_arrays(1.0, 1.0, 0, 0)
    assert compare_arrays([1.0, 2.0], [1.0, 2.0], 0, 0).shape == (2,)
    big = np.array([1e200, -1e200])
    assert compare_arrays(big, big, 0, 0).cosine == pytest.approx(1.0)


def test_statistics_values():
    ref = np.array([1.0, 2.0, 4.0, 8.0])
    act = np.array([1.1, 2.0, 3.6, 8.0])
    result = compare_arrays(act, ref, atol=0.0, rtol=0.2)
    assert result.max_abs == pytest.approx(0.4)
    assert result.mean_abs == pytest.approx(0.5 / 4)
    assert result.p99_abs == pytest.approx(np.percentile([0.1, 0.0, 0.4, 0.0], 99))
    assert result.max_rel == pytest.approx(0.1)
    assert result.mean_rel == pytest.approx((0.1 + 0.1) / 4)
    assert result.l2 == pytest.approx(math.sqrt(0.01 + 0.16) / math.sqrt(1 + 4 + 16 + 64))
    expected_cos = float(np.dot(act, ref) / (np.linalg.norm(act) * np.linalg.norm(ref)))
    assert result.cosine == pytest.approx(expected_cos, abs=1e-15)
    assert result.max_tolerance_ratio == pytest.approx(0.5)  # 0.4 / (0.2 * 4) and 0.1 / (0.2 * 1)
    assert result


def test_to_dict_is_plain():
    d = compare_arrays(np.ones((2, 2)), np.ones((2, 2)), 0, 0, name="h").to_dict()
    assert d["name"] == "h" and d["shape"] == [2, 2] and d["passed"] is True
    assert isinstance(d["worst_index"], list)


def test_non_numeric_arrays_are_usage_errors():
    with pytest.raises(UsageError, match="dtype"):
        compare_arrays(np.array(["a"]), np.array(["a"]), 0, 0)
    with pytest.raises(UsageError):
        compare_arrays(np.array([1 + 2j]), np.array([1 + 2j]), 0, 0)


@pytest.mark.parametrize("kwargs", [dict(atol=-1, rtol=0), dict(atol=0, rtol=float("nan")),
                                    dict(atol=0, rtol=0, min_cosine=1.5), dict(atol="x", rtol=0)])
def test_bad_tolerance_is_usage_error(kwargs):
    with pytest.raises(UsageError):
        compare_arrays(np.ones(2), np.ones(2), **kwargs)


# -- tolerances and the checker factory ----------------------------------------------------------

def test_tolerance_from_any_forms():
    expected = Tolerance(0.05, 0.05, 0.999)
    assert Tolerance.from_any(expected) is expected
    assert Tolerance.from_any({"atol": 0.05, "rtol": 0.05, "min_cosine": 0.999}) == expected
    assert Tolerance.from_any((0.05, 0.05, 0.999)) == expected
    assert Tolerance.from_any({"atol": 0.05, "rtol": 0.05}).min_cosine == 0.0

    class Like(object):
        atol, rtol, min_cosine = 0.05, 0.05, 0.999

    assert Tolerance.from_any(Like()) == expected
    with pytest.raises(UsageError, match="missing 'rtol'"):
        Tolerance.from_any({"atol": 1.0})
    with pytest.raises(UsageError, match="unknown field"):
        Tolerance.from_any({"atol": 1.0, "rtol": 1.0, "min_cos": 0.9})
    assert isinstance(UsageError("x"), JetcapError)


def test_tolerance_from_registry_dataclass():
    if sys.version_info < (3, 8):
        pytest.skip("jetcap.models needs Python 3.8+")
    from jetcap.models import registry
    tol = Tolerance.from_any(registry.Tolerance(atol=1e-3, rtol=2e-3, min_cosine=0.99999))
    assert tol == Tolerance(1e-3, 2e-3, 0.99999)
    th = TaskThresholds.from_any(registry.TaskThresholds(min_exact_match=0.99, max_bleu_drop=1.0))
    assert th == TaskThresholds(0.99, 1.0, 1.0)


def test_task_thresholds_defaults_and_validation():
    th = TaskThresholds.from_any({"min_exact_match": 0.95})
    assert th.max_bleu_drop == 0.0 and th.max_prob_diff == 1.0
    assert th.to_dict() == {"min_exact_match": 0.95, "max_bleu_drop": 0.0, "max_prob_diff": 1.0}
    with pytest.raises(UsageError):
        TaskThresholds(1.5)
    with pytest.raises(UsageError):
        TaskThresholds(0.9, max_bleu_drop=-1)


def test_tolerance_checker_default_and_per_output(reference):
    check = tolerance_checker(FP16_TOL, per_output={"alpha": {"atol": 0.0, "rtol": 0.0, "min_cosine": 1.0}})
    rounded = reference.astype(np.float16).astype(np.float32)
    features = check("features", rounded, reference)
    assert features and features.name == "features" and features.atol == 0.05
    alpha = check("alpha", rounded, reference)
    assert not alpha and alpha.name == "alpha" and alpha.atol == 0.0
    assert check.tolerance_for("alpha") == Tolerance(0, 0, 1.0)
    assert check.tolerance_for("anything") == Tolerance(**FP16_TOL) == check.default
    # collecting every result, never stopping at the first failure
    results = [check(n, rounded, reference) for n in ("features", "alpha", "h")]
    assert [bool(r) for r in results] == [True, False, True]


def test_tolerance_checker_strict_dtype_option():
    ref = np.ones(3, np.float32)
    assert not tolerance_checker(FP16_TOL)("x", ref.astype(np.float16), ref)
    assert tolerance_checker(FP16_TOL, strict_dtype=False)("x", ref.astype(np.float16), ref)


# -- task level ----------------------------------------------------------------------------------

def test_caption_agreement_identical():
    caps = [[4, 5, 6], [7], [], [4, 5, 6, 7, 8]]
    result = caption_agreement(caps, [list(c) for c in caps])
    assert result.exact_match_rate == 1.0 and result.exact_matches == 4 and result.count == 4
    assert result.mismatches == [] and result.bleu == 100.0 and result.bleu_drop == 0.0


def test_caption_agreement_mismatch():
    refs = [["a", "red", "circle", "left", "of", "a", "blue", "square"]] * 3 + [["a", "small", "green", "circle"]]
    cands = [list(r) for r in refs]
    cands[1] = ["a", "red", "circle", "left", "of", "a", "blue", "circle"]
    result = caption_agreement(cands, refs)
    assert result.exact_matches == 3 and result.exact_match_rate == 0.75 and result.mismatches == [1]
    assert 0.0 < result.bleu_drop < 100.0
    assert result.bleu_drop == pytest.approx(100.0 - result.bleu)


def test_caption_agreement_accepts_numpy_and_tuples():
    a = [np.array([1, 2, 3]), (4, 5)]
    b = [[1, 2, 3], [4, 5]]
    assert caption_agreement(a, b).exact_match_rate == 1.0


def test_caption_agreement_with_ground_truth():
    gt = [[["a", "red", "circle"], ["one", "red", "circle"]], [["a", "blue", "square"]]]
    refs = [["a", "red", "circle"], ["a", "blue", "square"]]
    cands = [["a", "red", "circle"], ["a", "blue", "circle"]]
    result = caption_agreement(cands, refs, ground_truth=gt)
    assert result.reference_bleu == 100.0
    assert result.candidate_bleu < 100.0
    assert result.bleu_drop == pytest.approx(result.reference_bleu - result.candidate_bleu)
    # a backend may also score better than PyTorch: a negative drop
    better = caption_agreement(refs, cands, ground_truth=gt)
    assert better.bleu_drop < 0


@pytest.mark.parametrize("cands,refs", [([[1]], [[1], [2]]), ([], []), (["a b"], [["a", "b"]])])
def test_caption_agreement_bad_input(cands, refs):
    with pytest.raises(UsageError):
        caption_agreement(cands, refs)


def test_label_agreement_probs():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]])
    cand = ref.copy()
    cand[2] = [0.45, 0.2, 0.35]
    result = label_agreement(cand, ref)
    assert result.count == 3 and result.top1_matches == 2
    assert result.top1_agreement == pytest.approx(2 / 3.0)
    assert result.mismatches == [2]
    assert result.max_prob_diff == pytest.approx(0.15)
    assert result.worst_index == 2 and result.nonfinite_rows == 0


def test_label_agreement_from_logits_matches_softmax():
    rng = np.random.RandomState(2)
    logits = rng.randn(6, 5).astype(np.float32)
    cand = logits + 0.01
    result = label_agreement(cand, logits, from_logits=True)
    assert result.top1_agreement == 1.0 and result.max_prob_diff < 1e-6  # a constant shift: same probs
    p = softmax(logits)
    assert np.allclose(p.sum(axis=1), 1.0) and p.dtype == np.float64
    assert np.allclose(softmax(np.array([[1000.0, 1000.0]])), 0.5)  # no overflow


def test_label_agreement_nan_row_counts_as_mismatch():
    ref = np.array([[0.9, 0.1], [0.2, 0.8]])
    cand = ref.copy()
    cand[1, 0] = np.nan
    result = label_agreement(cand, ref)
    assert result.mismatches == [1] and result.nonfinite_rows == 1
    assert math.isnan(result.max_prob_diff) and result.worst_index == 1


@pytest.mark.parametrize("cand,ref", [(np.ones(3), np.ones(3)), (np.ones((2, 3)), np.ones((2, 4))),
                                      (np.ones((0, 3)), np.ones((0, 3)))])
def test_label_agreement_bad_shapes(cand, ref):
    with pytest.raises(UsageError):
        label_agreement(cand, ref)


def test_validate_imports_without_torch_or_onnx():
    code = ("import sys, jetcap.validate, jetcap.validate.report; "
            "bad = [m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.check_call([sys.executable, "-c", code])


def test_validate_package_is_python36_syntax():
    import jetcap.validate
    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    if not os.path.isfile(vermin):
        pytest.skip("vermin is not installed beside this interpreter")
    package_dir = os.path.dirname(jetcap.validate.__file__)
    proc = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.6-", package_dir],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True)
    assert proc.returncode == 0, proc.stdout
