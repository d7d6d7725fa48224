"""The small parts of the benchmark: timing statistics, the matmul rate, /proc parsing, ratios, tables."""
import numpy as np
import pytest

from jetcap.bench import child, matmul, report, timing


def test_percentile_matches_numpy():
    values = [0.5, 3.0, 1.0, 7.5, 2.25, 9.0, 4.0]
    for q in (0, 5, 50, 95, 100):
        assert timing.percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_summarize_and_time_calls():
    calls = []
    durations = timing.time_calls(lambda i: calls.append(i), 4, warmup=2, before=lambda i: calls.append(("b", i)))
    assert len(durations) == 4
    assert calls == [("b", -1), -1, ("b", -2), -2, ("b", 0), 0, ("b", 1), 1, ("b", 2), 2, ("b", 3), 3]
    stats = timing.summarize([0.001, 0.002, 0.003])
    assert stats["n"] == 3 and stats["p50_ms"] == pytest.approx(2.0) and stats["total_s"] == pytest.approx(0.006)
    with pytest.raises(ValueError):
        timing.time_calls(lambda i: None, 0)


def test_matmul_rates_are_measured():
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    onnx.checker.check_model(matmul.matmul_model(8, 4))
    result = matmul.measure_matmul(threads=1, shapes=[(1, 32, 16)], peak_size=64, repeat=3, shape_repeat=5)
    assert result["numpy_peak"]["gflops"] > 0 and result["numpy_peak"]["shape"] == [64, 64, 64]
    assert result["onnxruntime_peak"]["gflops"] > 0
    assert result["peak_gflops"] == max(result["numpy_peak"]["gflops"], result["onnxruntime_peak"]["gflops"])
    assert result["shapes"][0]["shape"] == [1, 32, 16] and result["shapes"][0]["n"] == 5


def test_read_status_parses_vm_lines(tmp_path):
    path = tmp_path / "status"
    path.write_text("Name:\tpython\nVmPeak:\t  300000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\nThreads:\t3\n")
    assert child.read_status(str(path)) == {"VmPeak": 300000, "VmHWM": 123456, "VmRSS": 100000}
    assert child.read_status(str(tmp_path / "absent")) == {}
    assert child.read_status()["VmHWM"] > 0  # this process, on Linux


def test_ratio_reads_times_better_whatever_the_direction():
    lower = report.Metric("ms", "ms", "ms", "lower", ())
    higher = report.Metric("per_s", "per s", "1/s", "higher", ())
    assert report.ratio(lower, 2.0, 10.0) == pytest.approx(5.0)
    assert report.ratio(higher, 50.0, 10.0) == pytest.approx(5.0)
    assert report.ratio(lower, None, 10.0) is None
    assert report.ratio(lower, 2.0, 0.0) is None


def test_distance_to_the_floor():
    # 2 MFLOP in 0.1 ms = 20 GFLOP/s; at a 40 GFLOP/s peak the floor is 0.05 ms, so 2x the floor
    point = report.distance(2e6, 0.1, 40.0, shape_gflops=10.0)
    assert point["gflops"] == pytest.approx(20.0)
    assert point["fraction_of_peak"] == pytest.approx(0.5)
    assert point["floor_ms"] == pytest.approx(0.05)
    assert point["x_floor"] == pytest.approx(2.0)
    assert point["shape_floor_ms"] == pytest.approx(0.2)
    assert point["x_shape_floor"] == pytest.approx(0.5)


def test_format_table_aligns_columns():
    text = report.format_table(["configuration", "ms"], [["a", "1.5"], ["longer name", "12.25"]])
    lines = text.splitlines()
    assert lines[0] == "configuration     ms"
    assert lines[2] == "a                1.5"
    assert lines[3] == "longer name    12.25"


def test_bench_package_needs_at_most_python_36():
    """jetcap bench also runs on a JetPack 4.6 device (Python 3.6), where TensorRT can be measured."""
    import os
    import shutil
    import subprocess
    import sys

    vermin = os.path.join(os.path.dirname(sys.executable), "vermin")
    vermin = vermin if os.path.isfile(vermin) else shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed (pip install 'jetcap[dev]')")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.6-", "jetcap/bench", "jetcap/commands/bench.py"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout


def test_best_of_rounds_takes_each_timing_from_its_best_round():
    from jetcap.bench.runs import best_of_rounds, best_limit, combine_cold

    rounds = [{"encoder": {"1": {"p50_ms": 5.0, "n": 3}}, "step": {"p50_ms": 1.0}, "captions": [[1, 2]], "load_s": 1.0},
              {"encoder": {"1": {"p50_ms": 4.0, "n": 3}}, "step": {"p50_ms": 2.0}, "captions": [[1, 2]], "load_s": 2.0}]
    best = best_of_rounds(rounds)
    assert best["encoder"]["1"]["p50_ms"] == 4.0 and best["encoder"]["1"]["round_p50_ms"] == [5.0, 4.0]
    assert best["step"]["p50_ms"] == 1.0
    assert best["captions"] == [[1, 2]] and best["load_s"] == 1.0
    colds = [{"cold_start_s": c, "peak_rss_mb": m} for c, m in ((3.0, 90.0), (1.0, 80.0), (2.0, 85.0))]
    cold = combine_cold(colds)
    assert cold["cold_start_s"] == 2.0 and cold["peak_rss_mb"] == 85.0 and cold["runs"] == [3.0, 1.0, 2.0]
    limits = [{"numpy_peak": {"gflops": 10.0}, "onnxruntime_peak": {"gflops": 30.0}, "peak_gflops": 30.0,
               "shapes": [{"gflops": 5.0}]},
              {"numpy_peak": {"gflops": 20.0}, "onnxruntime_peak": {"gflops": 25.0}, "peak_gflops": 25.0,
               "shapes": [{"gflops": 6.0}]}]
    limit = best_limit(limits)
    assert limit["peak_gflops"] == 30.0 and limit["numpy_peak"]["gflops"] == 20.0
    assert limit["shapes"] == [{"gflops": 6.0}] and limit["rounds"] == 2
