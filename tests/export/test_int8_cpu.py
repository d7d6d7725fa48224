"""The CPU INT8 variant (int8-cpu): exports, passes its gate, captions/predicts through the CLI, is labelled a
CPU variant in the manifest, and TensorRT build / pre-flight refuse or skip it (real ONNX Runtime)."""
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from jetcap.cli import cli


@pytest.fixture(scope="module")
def cpu8_bundles(tmp_path_factory):
    from jetcap import samples
    from jetcap.export import ExportOptions, export_bundle

    out = {}
    for name, ckpt in (("captioner", samples.captioner_checkpoint()), ("classifier", samples.classifier_checkpoint())):
        out[name] = tmp_path_factory.mktemp("cpu8") / name
        export_bundle(ExportOptions(checkpoint=Path(ckpt), out_dir=out[name], precisions=("int8-cpu",)))
    return out


def test_manifest_labels_cpu_variant_and_gate_passed(cpu8_bundles):
    for name, bundle in cpu8_bundles.items():
        manifest = json.loads((bundle / "manifest.json").read_text())
        variant = manifest["variants"]["int8-cpu"]
        assert variant["target"] == "cpu" and variant["backend"] == "onnxruntime"
        assert variant["checked_on"]["machine"] and isinstance(variant["checked_on"]["int8_instructions"], list)
        assert manifest["validation"]["int8-cpu"]["passed"]
        assert "int8-cpu" in manifest["tolerances"] and "int8-cpu" in manifest["task_thresholds"]
        for graph in variant["quantization"]["graphs"].values():
            assert graph["weight_bytes"]["int8-cpu"] <= graph["weight_bytes"]["fp32"]
    step = json.loads((cpu8_bundles["captioner"] / "manifest.json").read_text())["variants"]["int8-cpu"]
    assert step["quantization"]["graphs"]["decoder_step"]["quantized"]  # LSTMCell GEMMs and fc included


def test_validate_caption_predict_cli(cpu8_bundles):
    from jetcap import samples

    runner = CliRunner()
    result = runner.invoke(cli, ["validate", str(cpu8_bundles["captioner"]), "--precision", "int8-cpu",
                                 "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    image = sorted(Path(samples.__file__).parent.joinpath("data", "images").glob("*.png"))[0]
    result = runner.invoke(cli, ["caption", str(cpu8_bundles["captioner"]), str(image), str(image),
                                 "--precision", "int8-cpu"])
    assert result.exit_code == 0, result.output
    assert "2 image(s) in batches of up to 1," in result.stderr, result.stderr  # what it runs, not the manifest's max batch
    seq = sorted(Path(samples.__file__).parent.joinpath("data", "sequences").glob("*.npy"))[0]
    result = runner.invoke(cli, ["predict", str(cpu8_bundles["classifier"]), str(seq), "--precision", "int8-cpu"])
    assert result.exit_code == 0, result.output


def test_tensorrt_build_refuses_and_check_skips(cpu8_bundles):
    from jetcap.check import preflight_bundle
    from jetcap.errors import UsageError
    from jetcap.runtime.engine import build_engines

    with pytest.raises(UsageError) as info:
        build_engines(str(cpu8_bundles["captioner"]), precision="int8-cpu")
    assert "CPU variant" in info.value.message and "not a TensorRT form" in info.value.message
    assert "\n" not in info.value.message
    report = preflight_bundle(cpu8_bundles["captioner"], target="nano")
    assert any(f.rule == "precision.cpu_variant" for f in report.findings)


def test_an_images_caption_never_depends_on_its_neighbours(cpu8_bundles):
    """int8-cpu quantises each call's activations with one scale over its rows: images are captioned one per
    call, alone or many at once (serve-engine: test_serve_engine_never_batches_int8_cpu_requests_together)."""
    from jetcap.runtime.manifest import Manifest
    from jetcap.runtime.session import open_bundle
    from jetcap.util.npz import load_npz

    images = load_npz(Manifest.load(cpu8_bundles["captioner"]).reference_path())["task/images"]
    with open_bundle(cpu8_bundles["captioner"], backend="onnxruntime", precision="int8-cpu") as session:
        pipeline = session.caption_pipeline()
        assert pipeline.image_batch == 1 and pipeline.max_batch > 1
        alone = [pipeline.caption(images[i:i + 1])[0] for i in range(len(images))]
        together = pipeline.caption(images)
        assert [(h.tokens, h.score) for h in together] == [(h.tokens, h.score) for h in alone]


def test_triton_repository_of_int8_cpu_never_merges_requests(cpu8_bundles, tmp_path):
    from jetcap.triton.repository import RepositoryOptions, write_repository

    for backend in ("onnxruntime", "python"):
        repo = tmp_path / backend
        write_repository(cpu8_bundles["captioner"], repo, RepositoryOptions(backend=backend, precision="int8-cpu"))
        configs = list(repo.glob("*/config.pbtxt"))
        assert configs and not any("dynamic_batching" in c.read_text() for c in configs), backend


def test_serve_engine_never_batches_int8_cpu_requests_together(cpu8_bundles, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from jetcap import samples
    from tests.runtime.test_server import Server

    server = Server(cpu8_bundles["captioner"], ["--precision", "int8-cpu", "--threads", "1"], tmp_path / "s.log")
    try:
        server.wait_listening()
        assert server.wait_loaded() == "ready"
        images = [p.read_bytes() for p in samples.sample_images()][:8]
        alone = [server.request("POST", "/caption", image)[2] for image in images]
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(lambda image: server.request("POST", "/caption", image)[2], images * 3))
        assert [(r["tokens"], r["score"]) for r in together] == [(r["tokens"], r["score"]) for r in alone] * 3
        assert any(r.get("event") == "batching" and r.get("enabled") is False for r in server.log_records())
    finally:
        server.kill()
