"""Checks, the validation report and its renderings (jetcap.validate.report)."""
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from jetcap.errors import UsageError, ValidationFailed
from jetcap.validate import (
    TASK,
    Check,
    ValidationReport,
    caption_agreement,
    caption_checks,
    compare_arrays,
    label_agreement,
    label_checks,
    tensor_checks,
    tolerance_checker,
)
from jetcap.validate.report import _format_pair, compare_value

FP16 = {"atol": 5e-2, "rtol": 5e-2, "min_cosine": 0.999}


# -- Check ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,sense,threshold,expected", [
    (0.5, "<=", 1.0, True), (1.0, "<=", 1.0, True), (1.5, "<=", 1.0, False),
    (0.9995, ">=", 0.999, True), (0.998, ">=", 0.999, False),
    (0, "==", 0, True), (1, "==", 0, False),
    (float("nan"), "<=", 1.0, False), (float("nan"), ">=", 0.0, False), (None, "<=", 1.0, False),
])
def test_check_verdict(value, sense, threshold, expected):
    assert compare_value(value, sense, threshold) is expected
    check = Check("onnxruntime", "fp16", "step", "x", value, threshold, sense)
    assert check.passed is expected and check.failed is (not expected)
    assert check.status == ("PASS" if expected else "FAIL")


def test_check_numpy_scalars_and_explicit_verdict():
    check = Check("ort", "fp32", "encoder", "c", np.float32(0.9999), np.float64(0.999), ">=")
    assert check.passed and type(check.value) is float and type(check.threshold) is float
    assert type(Check("ort", "fp32", "g", "n", np.int64(3), 0).value) is int
    forced = Check("ort", "fp32", "g", "n", 0, 0, "<=", passed=False, detail="dtype float16 != float32")
    assert forced.failed


def test_check_skipped_neither_passes_nor_fails():
    check = Check("tensorrt", "int8", "encoder", "features.allclose", None, 0, skipped=True,
                  detail="tensorrt is not installed")
    assert check.skipped and not check.passed and not check.failed and check.status == "SKIP"


def test_check_bad_sense():
    with pytest.raises(UsageError, match="sense"):
        Check("a", "b", "c", "d", 1, 1, "<")


def test_check_label_and_roundtrip():
    check = Check("ort", "fp16", "step", "alpha.cosine", float("nan"), 0.999, ">=", detail="d", worst_input="b=4")
    assert check.label == "ort/fp16/step/alpha.cosine"
    data = check.to_dict()
    assert data["value"] is None  # JSON has no NaN
    json.dumps(data, allow_nan=False)
    again = Check.from_dict(data)
    assert again.failed and again.worst_input == "b=4" and again.detail == "d"


# -- report verdict ------------------------------------------------------------------------------

def _mixed_report():
    report = ValidationReport(meta={"bundle": "out/captioner", "jetcap": "0.1.0"})
    report.add(Check("onnxruntime", "fp32", "encoder", "features.allclose", 0, 0, "<=", detail="max_abs 1e-4"))
    report.add(Check("onnxruntime", "fp16", "step", "log_probs.cosine", 0.9989, 0.999, ">=",
                     detail="cos 0.9989 < 0.999 <&> \x01", worst_input="batch=4,num_pixels=100"))
    report.add(Check("onnxruntime", "fp16", TASK, "caption.exact_match", 0.97, 0.99, ">=", worst_input="img_003.png"))
    report.add(Check("tensorrt", "fp16", "encoder", "features.allclose", None, 0, skipped=True,
                     detail="tensorrt is not installed"))
    report.add(Check("onnxruntime", "fp16", TASK, "caption.bleu_drop", 0.4, 1.0, "<="))
    return report


def test_report_collects_every_failure_in_order():
    report = _mixed_report()
    assert not report.passed
    assert [c.name for c in report.failures()] == ["log_probs.cosine", "caption.exact_match"]
    assert [c.backend for c in report.skipped()] == ["tensorrt"]
    assert report.ran == 4
    assert report.exit_code() == 1 == ValidationFailed.exit_code
    assert report.summary() == "FAILED: 2 of 4 checks failed (1 skipped)"
    with pytest.raises(ValidationFailed, match="onnxruntime/fp16/step/log_probs.cosine") as info:
        report.raise_for_failures()
    assert info.value.exit_code == 1


def test_passing_and_empty_reports():
    report = ValidationReport()
    assert not report.passed and report.exit_code() == 2 and "NOTHING VALIDATED" in report.summary()
    report.add(Check("ort", "fp32", "g", "skipped", None, 0, skipped=True))
    assert report.exit_code() == 2
    report.add(Check("ort", "fp32", "g", "ok", 0, 0))
    assert report.passed and report.exit_code() == 0 and report.failures() == []
    assert report.summary() == "PASSED: all 1 checks passed (1 skipped)"
    report.raise_for_failures()  # nothing to raise
    with pytest.raises(TypeError):
        report.add("not a check")


# -- renderings ----------------------------------------------------------------------------------

def test_table_is_fixed_width_and_names_failures():
    report = _mixed_report()
    text = report.to_table()
    lines = text.splitlines()
    assert lines[0] == "bundle: out/captioner"
    header = next(line for line in lines if line.startswith("BACKEND"))
    result_col = header.index("RESULT")
    start = lines.index(header)
    rows = lines[start + 2:start + 2 + len(report.checks)]
    assert [row[result_col:result_col + 4] for row in rows] == ["PASS", "FAIL", "FAIL", "SKIP", "PASS"]
    assert "0.9989  >= 0.999" in text
    assert "batch=4,num_pixels=100" in rows[1]
    assert "FAILED: 2 of 4 checks failed (1 skipped)" in text
    failures = text.split("Failures:")[1]
    assert "onnxruntime/fp16/step/log_probs.cosine (worst input: batch=4,num_pixels=100): cos 0.9989" in failures
    assert "onnxruntime/fp16/task/caption.exact_match (worst input: img_003.png)" in failures
    assert "tensorrt/fp16/encoder/features.allclose: tensorrt is not installed" in text.split("Skipped:")[1]


@pytest.mark.parametrize("value,threshold,sense,shown", [
    (0.9999891, 0.99999, ">=", ("0.999989", "0.99999")),  # not "1 >= 0.99999" for a failure
    (0.10000001, 0.1, "<=", ("0.10000001", "0.1")),
    (0.1, 0.1, "<=", ("0.1", "0.1")),
    (None, 0.99999, ">=", ("-", "0.99999")),
    (float("nan"), 0.5, "<=", ("nan", "0.5")),
    (3, 0, "<=", ("3", "0")),
    (1.388e-17, 0.1, "<=", ("1.388e-17", "0.1")),
])
def test_value_formatting_keeps_the_verdict_readable(value, threshold, sense, shown):
    assert _format_pair(value, threshold, sense) == shown


def test_json_is_strict_and_roundtrips():
    report = _mixed_report()
    report.add(Check("ort", "int8", "step", "h_new.cosine", float("nan"), 0.99, ">="))
    data = report.to_json()
    text = json.dumps(data, allow_nan=False)
    data = json.loads(text)
    assert data["passed"] is False and data["exit_code"] == 1
    assert data["summary"]["failed"] == 3 and data["summary"]["skipped"] == 1 and data["summary"]["checks"] == 6
    assert data["meta"]["bundle"] == "out/captioner"
    assert data["checks"][-1]["value"] is None and data["checks"][-1]["passed"] is False
    again = ValidationReport.from_json(data)
    assert again.to_json() == data
    with pytest.raises(UsageError):
        ValidationReport.from_json({"nope": 1})


def test_junit_xml_is_well_formed_with_right_counts():
    report = _mixed_report()
    xml = report.to_junit_xml()
    assert xml.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(xml.encode("utf-8"))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors"), root.get("skipped")) == ("5", "2", "0", "1")
    suites = root.findall("testsuite")
    assert [s.get("name") for s in suites] == ["jetcap.validate.onnxruntime.fp32", "jetcap.validate.onnxruntime.fp16",
                                               "jetcap.validate.tensorrt.fp16"]
    assert sum(int(s.get("tests")) for s in suites) == 5
    assert sum(int(s.get("failures")) for s in suites) == 2
    for suite in suites:
        cases = suite.findall("testcase")
        assert int(suite.get("tests")) == len(cases)
        assert int(suite.get("failures")) == len([c for c in cases if c.find("failure") is not None])
        assert int(suite.get("skipped")) == len([c for c in cases if c.find("skipped") is not None])
        props = dict((p.get("name"), p.get("value")) for p in suite.find("properties"))
        assert props["bundle"] == "out/captioner"
    fp16 = suites[1]
    failure = fp16.find("testcase[@name='log_probs.cosine']/failure")
    assert failure.get("type") == "ValidationFailed"
    assert failure.get("message") == "0.9989 >= 0.999 is false (worst input: batch=4,num_pixels=100)"
    assert "<&>" in failure.text and "\x01" not in failure.text  # escaped, control char removed
    assert fp16.find("testcase[@name='log_probs.cosine']").get("classname") == "onnxruntime.fp16.step"
    skipped = suites[2].find("testcase/skipped")
    assert skipped.get("message") == "tensorrt is not installed"
    passing = suites[0].find("testcase")
    assert passing.find("failure") is None and passing.find("system-out").text.startswith("0 <= 0")


def test_junit_xml_of_empty_report_parses():
    root = ET.fromstring(ValidationReport().to_junit_xml().encode("utf-8"))
    assert root.get("tests") == "0" and root.findall("testsuite") == []


# -- builders ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep():
    """A decoder-step output over three dynamic-axis settings; FP16-rounded outputs."""
    rng = np.random.RandomState(0)
    refs = dict(("batch={}".format(b), rng.randn(b, 50).astype(np.float32)) for b in (1, 4, 8))
    outs = dict((k, v.astype(np.float16).astype(np.float32)) for k, v in refs.items())
    return refs, outs


def test_tensor_checks_over_a_sweep_pass_with_fp16_tolerance(sweep):
    refs, outs = sweep
    check = tolerance_checker(FP16)
    checks = tensor_checks("onnxruntime", "fp16", "step", "log_probs",
                           [(k, check("log_probs", outs[k], refs[k])) for k in refs])
    assert [c.name for c in checks] == ["log_probs.allclose", "log_probs.cosine"]
    assert all(c.passed for c in checks)
    assert checks[0].value == 0 and checks[0].threshold == 0
    assert checks[1].threshold == 0.999 and checks[1].value > 0.9999
    assert checks[0].worst_input in refs and "0 of 3 inputs failed" in checks[0].detail


def test_tensor_checks_fail_with_tight_tolerance_and_name_worst_input(sweep):
    refs, outs = sweep
    bad = dict(outs)
    bad["batch=4"] = outs["batch=4"].copy()
    bad["batch=4"][2, 7] += 3.0
    check = tolerance_checker(FP16)
    checks = tensor_checks("onnxruntime", "fp16", "step", "log_probs",
                           dict((k, check("log_probs", bad[k], refs[k])) for k in refs))
    allclose = checks[0]
    assert allclose.failed and allclose.value == 1 and allclose.worst_input == "batch=4"
    assert "1 of 3 inputs failed" in allclose.detail and "worst [2, 7]" in allclose.detail

    strict = tolerance_checker({"atol": 1e-5, "rtol": 1e-5, "min_cosine": 0.99999})
    checks = tensor_checks("onnxruntime", "fp16", "step", "log_probs",
                           dict((k, strict("log_probs", outs[k], refs[k])) for k in refs))
    assert checks[0].failed and checks[0].value > 0 and "3 of 3 inputs failed" in checks[0].detail
    assert checks[1].passed  # FP16 rounding keeps the cosine


def test_tensor_checks_shape_mismatch_and_nan():
    ref = np.ones((2, 3), np.float32)
    checks = tensor_checks("tensorrt", "fp16", "encoder", "features",
                           {"batch=2": compare_arrays(np.ones((3, 3), np.float32), ref, 0.1, 0.1, 0.99),
                            "batch=1": compare_arrays(ref[:1], ref[:1], 0.1, 0.1, 0.99)})
    assert [c.passed for c in checks] == [False, False]
    assert checks[0].value is None and checks[0].worst_input == "batch=2"
    assert "shape (3, 3) != reference (2, 3)" in checks[0].detail
    assert checks[1].detail.startswith("not compared: shape")
    nan = ref.copy()
    nan[0, 1] = np.nan
    checks = tensor_checks("ort", "fp32", "encoder", "features", compare_arrays(nan, ref, 1.0, 1.0))
    assert checks[0].failed and "NaN/Inf" in checks[0].detail and checks[0].worst_input is None


def test_tensor_checks_integer_output_has_no_cosine_check():
    ids = np.array([1, 2, 3])
    checks = tensor_checks("ort", "int8", "decode", "tokens", [compare_arrays(ids, ids, 0, 0)])
    assert [c.name for c in checks] == ["tokens.allclose"] and checks[0].passed


def test_tensor_checks_needs_results():
    with pytest.raises(UsageError):
        tensor_checks("ort", "fp32", "g", "o", [])


def test_caption_checks_against_registry_like_thresholds():
    refs = [[1, 2, 3, 4, 5]] * 99 + [[1, 2, 3, 9, 5]]
    cands = [list(r) for r in refs]
    thresholds = {"min_exact_match": 0.99, "max_bleu_drop": 1.0, "max_prob_diff": 1.0}
    ok = caption_checks("onnxruntime", "fp16", caption_agreement(cands, refs), thresholds)
    assert [c.name for c in ok] == ["caption.exact_match", "caption.bleu_drop"]
    assert all(c.passed for c in ok) and ok[0].graph == TASK and ok[0].detail.endswith("all identical")
    cands[0] = [1, 2, 3, 4, 6]
    cands[99] = [1, 2, 3, 4, 5]
    labels = ["img_{:03d}.png".format(i) for i in range(100)]
    checks = caption_checks("onnxruntime", "fp16", caption_agreement(cands, refs), thresholds, labels=labels)
    exact, bleu = checks
    assert exact.failed and exact.value == pytest.approx(0.98)
    assert exact.worst_input == "img_000.png" and "differing: img_000.png, img_099.png" in exact.detail
    assert bleu.passed is (bleu.value <= 1.0)


def test_label_checks():
    ref = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    cand = np.array([[0.69, 0.31], [0.41, 0.59], [0.5, 0.5]])
    checks = label_checks("onnxruntime", "int8", label_agreement(cand, ref),
                          {"min_exact_match": 0.99, "max_prob_diff": 0.1}, labels=["a", "b", "c"])
    top1, prob = checks
    assert top1.passed and top1.value == 1.0 and top1.worst_input is None
    assert prob.passed and prob.value == pytest.approx(0.01) and prob.worst_input in ("a", "b")
    cand[1] = [0.9, 0.1]
    top1, prob = label_checks("onnxruntime", "int8", label_agreement(cand, ref),
                              {"min_exact_match": 0.99, "max_prob_diff": 0.1})
    assert top1.failed and top1.worst_input == "#1" and prob.failed and prob.worst_input == "#1"


def test_end_to_end_report_for_ci():
    """The orchestration's shape: every backend x precision collected, rendered three ways."""
    rng = np.random.RandomState(5)
    ref = rng.randn(2, 10).astype(np.float32)
    report = ValidationReport(meta={"family": "classifier"})
    for precision, tol, out in (("fp32", {"atol": 1e-3, "rtol": 1e-3, "min_cosine": 0.99999}, ref + 1e-6),
                                ("fp16", FP16, ref.astype(np.float16).astype(np.float32)),
                                ("int8", {"atol": 0.5, "rtol": 0.5, "min_cosine": 0.99}, ref * -1.0)):
        check = tolerance_checker(tol)
        report.extend(tensor_checks("onnxruntime", precision, "model", "logits", check("logits", out, ref)))
        report.extend(label_checks("onnxruntime", precision, label_agreement(out, ref, from_logits=True),
                                   {"min_exact_match": 0.99, "max_prob_diff": 0.1}))
    assert report.exit_code() == 1
    failed = set(c.precision for c in report.failures())
    assert failed == {"int8"}
    root = ET.fromstring(report.to_junit_xml().encode("utf-8"))
    assert int(root.get("failures")) == len(report.failures())
    assert "onnxruntime/int8/model/logits.cosine" in report.to_table()
