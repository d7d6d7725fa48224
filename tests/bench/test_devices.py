"""``jetcap bench --device``: where each configuration runs, decided from what the machine has (plain
functions, tested here without a GPU), and the GPU run itself where there is one (marked ``gpu``)."""
import json

import pytest
from click.testing import CliRunner

from jetcap.bench import devices, runs
from jetcap.cli import cli
from jetcap.errors import JetcapError, UsageError
from jetcap.runtime.manifest import Manifest

GPU = {"cuda": True, "gpu": "a GPU"}
NO_GPU = {"cuda": False, "why": "torch 2.x sees no GPU"}
WITH_CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_onnxruntime_providers_per_device():
    assert devices.onnxruntime_providers("cpu", WITH_CUDA, (1, 32)) == (["CPUExecutionProvider"], None)
    assert devices.onnxruntime_providers("cuda", WITH_CUDA, (1, 17, 3)) == (WITH_CUDA, None)
    providers, _ = devices.onnxruntime_providers("cuda", WITH_CUDA, (1, 18))
    assert providers == [["CUDAExecutionProvider", {"use_tf32": "0"}], "CPUExecutionProvider"]
    providers, why = devices.onnxruntime_providers("cuda", ["CPUExecutionProvider"])
    assert providers is None and "no CUDAExecutionProvider" in why and "onnxruntime-gpu" in why


def test_provider_entries_survive_json_and_say_their_float32_math():
    entries = json.loads(json.dumps(devices.onnxruntime_providers("cuda", WITH_CUDA, (1, 20))[0]))
    assert devices.session_providers(entries) == [("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"]
    assert [devices.provider_name(p) for p in entries] == WITH_CUDA
    assert devices.session_providers(None) is None
    assert devices.float32_math("cpu", entries) is None
    assert devices.float32_math("cuda", entries) == devices.STRICT_FP32
    assert devices.float32_math("cuda", None) == devices.STRICT_FP32  # PyTorch alone
    assert "before 1.18" in devices.float32_math("cuda", WITH_CUDA)


def test_which_bundles_are_builtin():
    assert devices.is_builtin_bundle("built-in family") and devices.is_builtin_bundle(None)
    for kind in ("user code", "pickled modules", "python api"):
        assert not devices.is_builtin_bundle(kind)
    assert not devices.is_builtin_bundle("built-in family", {"trust_pickle": True})
    assert not devices.is_builtin_bundle(None, {"models": {"model": "mine.Captioner"}})


def test_torch_and_precision_reasons():
    assert devices.torch_reason("cpu", {}, user_code=True) is None
    assert devices.torch_reason("cuda", GPU, user_code=False) is None
    assert "sees no GPU" in devices.torch_reason("cuda", NO_GPU, user_code=False)
    assert "built-in families" in devices.torch_reason("cuda", GPU, user_code=True)
    assert devices.precision_reason("cuda", "int8-cpu") and devices.precision_reason("cpu", "int8-cpu") is None
    assert devices.precision_reason("cuda", "fp16") is None
    assert devices.label_words("cpu") == "" and devices.label_words("cuda") == " CUDA"


def _options(bundle, device, **extra):
    return runs.BenchOptions(bundle, checkpoint="model.pt", device=device, **extra)


def test_cpu_keeps_onnxruntime_on_the_cpu_even_with_a_cuda_provider(captioner_bundle):
    """onnxruntime-gpu installed must not put one side of a CPU comparison on the GPU."""
    manifest = Manifest.load(captioner_bundle)
    configs, _ = runs.plan(manifest, _options(captioner_bundle, "cpu"), providers=WITH_CUDA, ort_version=(1, 32),
                           torch_probe=lambda options: pytest.fail("no probe on the CPU"))
    ort = [c for c in configs if c["kind"] == "onnxruntime"]
    assert ort and all(c["providers"] == ["CPUExecutionProvider"] and c["device"] == "cpu" for c in ort)
    assert [c["label"] for c in configs][:3] == ["PyTorch eager, re-projecting every step",
                                                 "PyTorch eager, same algorithm", "ONNX Runtime FP32"]


def test_cuda_plan_with_a_gpu(captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    configs, skipped = runs.plan(manifest, _options(captioner_bundle, "cuda"), providers=WITH_CUDA,
                                 ort_version=(1, 17), torch_probe=lambda options: GPU)
    by_name = dict((c["name"], c) for c in configs)
    assert by_name["pytorch"]["device"] == "cuda" and by_name["pytorch"]["label"] == "PyTorch eager CUDA, same algorithm"
    assert by_name["onnxruntime-fp32"]["providers"] == WITH_CUDA
    assert by_name["onnxruntime-fp16"]["label"] == "ONNX Runtime CUDA FP16"
    assert any("INT8 speed-up belongs to TensorRT" in n for n in by_name["onnxruntime-int8"]["notes"])
    assert not any("fidelity simulation" in n for c in configs for n in c["notes"])  # a CPU-only note


def test_cuda_plan_without_torch_cuda_or_for_user_code(captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    configs, skipped = runs.plan(manifest, _options(captioner_bundle, "cuda"), providers=WITH_CUDA,
                                 ort_version=(1, 17), torch_probe=lambda options: NO_GPU)
    assert [c["kind"] for c in configs] == ["onnxruntime"] * 3
    assert [s["name"] for s in skipped][:2] == ["pytorch-reproject", "pytorch"]
    for kind in ("user code", "pickled modules"):
        manifest.data["source"] = {"kind": kind, "model": "mine.Captioner"}
        configs, skipped = runs.plan(manifest, _options(captioner_bundle, "cuda"), providers=WITH_CUDA,
                                     ort_version=(1, 17), torch_probe=lambda options: pytest.fail("never probed"))
        assert "pytorch" not in [c["name"] for c in configs]
        assert any(s["name"] == "pytorch" and "built-in families" in s["reason"] for s in skipped)
        # on the CPU the user's model is timed as written, never re-projected by jetcap's decoder
        configs, skipped = runs.plan(manifest, _options(captioner_bundle, "cpu"), providers=WITH_CUDA)
        assert [c["name"] for c in configs][0] == "pytorch"
        assert any(s["name"] == "pytorch-reproject" for s in skipped)


def test_only_onnxruntime_on_cuda_does_not_probe_torch(captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    configs, _ = runs.plan(manifest, _options(captioner_bundle, "cuda", only=["onnxruntime-fp32"]),
                           providers=WITH_CUDA, ort_version=(1, 32), torch_probe=lambda options: pytest.fail("not wanted"))
    assert [c["name"] for c in configs] == ["onnxruntime-fp32"]
    assert configs[0]["providers"][0] == ["CUDAExecutionProvider", {"use_tf32": "0"}]


def test_nothing_on_the_device_is_one_line_naming_each_reason_once(captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    with pytest.raises(UsageError) as info:
        runs.plan(manifest, _options(captioner_bundle, "cuda"), providers=["CPUExecutionProvider"],
                  torch_probe=lambda options: NO_GPU)
    message = info.value.message
    assert message.startswith("nothing to benchmark on cuda: pytorch-reproject, pytorch: torch cannot use a CUDA GPU")
    assert message.count("no CUDAExecutionProvider") == 1 and "onnxruntime-fp32, onnxruntime-fp16" in message
    with pytest.raises(UsageError):
        runs.BenchOptions(str(captioner_bundle), device="tpu")


def test_unknown_machine_answers_the_cli_in_one_line(captioner_bundle):
    """On this machine, whatever it has: a GPU run, or one line and exit 2 (never a traceback)."""
    from jetcap import samples

    result = CliRunner().invoke(cli, ["bench", str(captioner_bundle), "--checkpoint", str(samples.captioner_checkpoint()),
                                      "--device", "cuda", "--precision", "fp32", "--repeat", "2", "--warmup", "0",
                                      "--cold-runs", "0", "--matmul-size", "64", "--json"])
    if result.exit_code == 2:
        assert "nothing to benchmark on cuda" in result.output and "Traceback" not in result.output
    else:
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["device"] == "cuda"


def test_a_cuda_provider_that_fell_back_to_the_cpu_is_refused(captioner_bundle):
    """onnxruntime-gpu whose CUDA libraries do not load runs on the CPU with only a warning: the benchmark
    says so instead of reporting CPU figures as the GPU's (a real CPU session stands for that fallback)."""
    from jetcap.bench.subjects import check_providers, ran_on
    from jetcap.runtime.session import open_bundle

    with open_bundle(captioner_bundle, backend="onnxruntime", providers=["CPUExecutionProvider"]) as session:
        assert ran_on(session) == {"encoder": ["CPUExecutionProvider"], "decoder_step": ["CPUExecutionProvider"]}
        check_providers(session, ["CPUExecutionProvider"])
        with pytest.raises(JetcapError) as info:
            check_providers(session, WITH_CUDA)
        assert "did not put encoder on the GPU" in info.value.message


def test_torch_gemm_rate_on_the_cpu_and_the_gpu_limit_without_one():
    torch = pytest.importorskip("torch")
    from jetcap.bench import matmul

    rate = matmul.torch_gemm(16, 32, 8, "cpu", repeat=3)
    assert rate["gflops"] > 0 and rate["shape"] == [16, 32, 8] and rate["n"] == 3
    if not torch.cuda.is_available():
        limit = matmul.measure_matmul(device="cuda")
        assert "peak_gflops" not in limit and "no CUDA GPU" in limit["error"]
        assert runs.best_limit([limit, limit]) == limit


@pytest.mark.gpu
def test_pytorch_and_onnxruntime_on_the_gpu(captioner_bundle):
    """Where a CUDA GPU is: PyTorch eager on it in strict FP32, and ONNX Runtime on it when onnxruntime-gpu
    is installed, with the same captions as PyTorch there."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    from jetcap import samples

    result = CliRunner().invoke(cli, ["bench", str(captioner_bundle), "--checkpoint", str(samples.captioner_checkpoint()),
                                      "--device", "cuda", "--precision", "fp32", "--repeat", "3", "--warmup", "1",
                                      "--cold-runs", "1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    pytorch = [c for c in report["configurations"] if c["name"] == "pytorch"][0]
    assert pytorch["measure"]["ran_on"]["model"][0].startswith("torch cuda")
    assert pytorch["measure"]["gpu_peak_mb"] > 0
    assert report["limit"]["peak_gflops"] > 0 and report["float32_math"].startswith(devices.STRICT_FP32)
    for entry in report["configurations"]:
        assert "error" not in entry, entry
        if entry["kind"] == "onnxruntime":
            assert all("CUDAExecutionProvider" in used for used in entry["measure"]["ran_on"].values())
            assert entry["agreement"]["same"] == entry["agreement"]["of"]
