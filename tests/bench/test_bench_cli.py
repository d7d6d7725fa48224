"""``jetcap bench`` end to end on real bundles, with tiny repetition counts (real child processes)."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from jetcap.cli import cli

FAST = ["--repeat", "2", "--warmup", "0", "--matmul-size", "64"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bench(*args):
    return CliRunner().invoke(cli, ["bench"] + [str(a) for a in args])


def test_help_is_listed_and_describes_the_options():
    result = _bench("--help")
    assert result.exit_code == 0, result.output
    for option in ("--checkpoint", "--repeat", "--warmup", "--json", "--plot", "--only"):
        assert option in result.output
    assert "bench" in CliRunner().invoke(cli, ["--help"]).output


def test_classifier_onnxruntime_json(classifier_bundle):
    result = _bench(classifier_bundle, "--precision", "fp32", "--cold-runs", "1", "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["family"] == "classifier"
    assert [c["name"] for c in report["configurations"]] == ["onnxruntime-fp32"]
    entry = report["configurations"][0]
    opt = report["opt_T"]
    assert entry["figures"]["latency_ms_T{}".format(opt)] > 0
    assert entry["figures"]["sequences_per_s_max"] > 0
    assert 10 < entry["figures"]["peak_rss_mb"] < 4096
    assert entry["figures"]["cold_start_s"] > 0
    assert entry["vs_pytorch"]["cold_start_s"] is None  # no PyTorch configuration to compare with
    for length in report["lengths"]:
        assert report["flops"]["model@1,T={}".format(length)]["flops"] > 0
        assert report["flops"]["model@1,T={}".format(length)]["uncounted"] == []
    assert report["limit"]["peak_gflops"] > 0
    assert entry["limit"]["model b1 T={}".format(opt)]["x_floor"] > 0
    assert "tensorrt: not installed" in report["notes"]
    assert any("no --checkpoint" in note for note in report["notes"])


def test_captioner_table_and_plot(captioner_bundle, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    plot = tmp_path / "bench.png"
    result = _bench(captioner_bundle, "--only", "onnxruntime-fp32", "--cold-runs", "1", "--plot", plot, *FAST)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    for expected in ("ONNX Runtime FP32", "batch 1 (p50 unless noted)", "distance to the limit", "decoder step b1",
                     "matmul limit", "tensorrt: not installed", "not measured"):
        assert expected in text
    with Image.open(str(plot)) as image:
        assert image.format == "PNG" and image.size[0] == 960


def test_without_torch_the_onnxruntime_configurations_still_run(captioner_bundle):
    """torch made unimportable in the parent (``sys.modules['torch'] = None``): PyTorch is skipped with a
    note, ONNX Runtime is measured, and nothing in the parent tried to import torch."""
    from jetcap import samples

    code = ("import sys; sys.modules['torch'] = None\n"
            "from jetcap.cli import main\n"
            "main(sys.argv[1:])")
    args = ["bench", str(captioner_bundle), "--checkpoint", str(samples.captioner_checkpoint()), "--precision", "fp32",
            "--cold-runs", "0", "--json"] + FAST
    proc = subprocess.run([sys.executable, "-c", code] + args, cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [c["name"] for c in report["configurations"]] == ["onnxruntime-fp32"]
    assert report["configurations"][0]["figures"]["caption_p50_ms_1"] > 0
    assert report["baseline"] is None
    assert "pytorch: torch is not installed; PyTorch configurations skipped" in report["notes"]


def test_bad_input_is_reported_with_exit_code_2(tmp_path):
    from runtime.tiny_bundle import make_linear_bundle

    result = _bench(tmp_path / "absent")
    assert result.exit_code == 2 and "bundle directory not found" in result.output
    bundle, _ = make_linear_bundle(str(tmp_path / "linear"))
    result = _bench(bundle, "--only", "nonsense")
    assert result.exit_code == 2 and "unknown configuration nonsense" in result.output
    result = _bench(bundle, "--checkpoint", tmp_path / "absent.pt", "--only", "onnxruntime-fp32")
    assert result.exit_code == 2 and "checkpoint not found" in result.output
    from jetcap.runtime.backends.trt_api import tensorrt_available

    if not tensorrt_available():
        result = _bench(bundle, "--only", "tensorrt-fp16")
        assert result.exit_code == 2 and "none of tensorrt-fp16 can run here: tensorrt: not installed" in result.output


@pytest.mark.slow
def test_pytorch_side_by_side_same_captions_and_targets(captioner_bundle):
    from jetcap import samples

    result = _bench(captioner_bundle, "--checkpoint", samples.captioner_checkpoint(), "--only", "pytorch",
                    "--only", "pytorch-reproject", "--only", "onnxruntime-fp32", "--cold-runs", "1", "--json", *FAST)
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    names = [c["name"] for c in report["configurations"]]
    assert names == ["pytorch-reproject", "pytorch", "onnxruntime-fp32"]
    for entry in report["configurations"]:
        assert "error" not in entry
        if entry["name"] != "pytorch":
            # the same greedy search, preprocessing and weights: the same captions on every sample image
            assert entry["agreement"]["same"] == entry["agreement"]["of"] == 8, entry["name"]
    torch_entry = report["configurations"][1]
    assert torch_entry["measure"]["versions"]["torch"]
    assert len(report["targets"]) == 6
    assert all(t["value"] is not None for t in report["targets"])
    ort = report["configurations"][2]
    assert ort["vs_pytorch"]["caption_p50_ms_1"] > 0 and ort["vs_reproject"]["caption_p50_ms_1"] > 0


@pytest.mark.parametrize("rehash", [False, True])
def test_a_damaged_graph_is_one_line_before_anything_is_measured(classifier_bundle, tmp_path, rehash):
    import shutil

    from jetcap.util.fsio import sha256_file

    bundle = tmp_path / "damaged"
    shutil.copytree(str(classifier_bundle), str(bundle))
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = manifest["variants"]["fp32"]["files"]["model"]
    (bundle / entry["path"]).write_bytes(b"\x08\x07garbage, not a protobuf")
    if rehash:  # rewritten with a matching checksum: it must still fail in one line, not a traceback
        entry["sha256"] = sha256_file(bundle / entry["path"])
        (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = _bench(bundle, "--only", "onnxruntime-fp32", "--repeat", "1", "--warmup", "0", "--cold-runs", "0")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert ("sha256" in result.output or "checksum" in result.output) if not rehash else \
        ("is not a readable ONNX graph" in result.output or "is not the model graph" in result.output)
