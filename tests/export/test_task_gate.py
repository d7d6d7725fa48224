"""The export's task-level gate (captions / labels as PyTorch's), on real bundles and real ONNX Runtime."""
import json

import numpy as np
import onnx
from onnx import numpy_helper

from jetcap.export.task_gate import TaskGate
from jetcap.export.tasks import search_paths, task_paths
from jetcap.runtime.manifest import Manifest
from jetcap.util.npz import load_npz


def _gate(bundle):
    manifest = Manifest.load(bundle)
    fp32 = {g: bundle / manifest.data["variants"]["fp32"]["files"][g]["path"] for g in manifest.graph_names}
    return TaskGate(manifest.data, bundle, load_npz(bundle / "reference.npz"), fp32), fp32


def _damaged(src, dst):
    """``src`` with its last weight-bearing Gemm/MatMul (the output layer) negated: argmax becomes argmin."""
    model = onnx.load(str(src))
    weights = {t.name: t for t in model.graph.initializer}
    last = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and any(i in weights for i in n.input)][-1]
    for name in last.input:
        if name in weights:
            weights[name].CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(weights[name]), name))
    onnx.save(model, str(dst))
    return dst


def test_fp32_graphs_pass_and_a_damaged_step_fails(captioner_bundle, tmp_path):
    gate, fp32 = _gate(captioner_bundle)
    clean = gate.run("fp32", fp32)
    assert clean.passed and clean.score == 0 and "16/16" in clean.summary
    damaged = dict(fp32, decoder_step=_damaged(fp32["decoder_step"], tmp_path / "step.onnx"))
    outcome = gate.run("fp32", damaged)
    assert not outcome.passed and outcome.score > 0
    assert any(f.startswith("caption") for f in outcome.failures)


def test_classifier_labels_are_gated(classifier_bundle, tmp_path):
    gate, fp32 = _gate(classifier_bundle)
    assert gate.run("fp32", fp32).passed
    damaged = {"model": _damaged(fp32["model"], tmp_path / "model.onnx")}
    outcome = gate.run("fp32", damaged)
    assert not outcome.passed and "top-1" in outcome.summary


def test_export_records_the_task_check_of_every_variant(captioner_bundle):
    manifest = json.loads((captioner_bundle / "manifest.json").read_text())
    for precision, result in manifest["validation"].items():
        assert result["task"]["passed"], precision
        assert "captions identical to PyTorch" in result["task"]["summary"]
    search = manifest["variants"]["int8"]["quantization"]["search"]
    assert search["task"]["passed"]


def test_task_inputs_are_held_out_from_calibration_when_the_folder_allows(tmp_path):
    for i in range(40):
        (tmp_path / "img_{:02d}.png".format(i)).write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    paths, held_out = task_paths(str(tmp_path), (".png",), 16, 16)
    assert held_out and [p.rsplit("_", 1)[1] for p in paths] == ["{:02d}.png".format(i) for i in range(16, 32)]
    paths, held_out = task_paths(str(tmp_path), (".png",), 16, 32)  # 8 left after calibration: shared
    assert not held_out and len(paths) == 16 and paths[0].endswith("img_00.png")
    paths, held_out = task_paths(str(tmp_path), (".png",), 16, 16, most=200)  # as many as the folder offers
    assert held_out and len(paths) == 24 and paths[-1].endswith("img_39.png")
    paths, held_out = task_paths(str(tmp_path), (".png",), 16, 16, most=4)  # never fewer than the family's count
    assert held_out and len(paths) == 16


def test_int8_search_aims_at_calibration_inputs_when_the_verdict_is_held_out(tmp_path):
    for i in range(40):
        (tmp_path / "img_{:02d}.png".format(i)).write_bytes(b"")
    def numbers(paths):
        return [int(p.rsplit("_", 1)[1][:2]) for p in paths]

    # verdict on 16..31: the search on the calibration inputs 0..15, then on 32..39, never on 16..31
    assert numbers(search_paths(str(tmp_path), (".png",), 16, 16, 100)) == list(range(16)) + list(range(32, 40))
    assert numbers(search_paths(str(tmp_path), (".png",), 16, 16, 10)) == list(range(10))
    assert numbers(search_paths(str(tmp_path), (".png",), 16, 8, 12)) == list(range(8)) + list(range(24, 28))
    assert search_paths(str(tmp_path), (".png",), 16, 32, 100) is None  # verdict shared: the search uses it too
    # a verdict on 16..35: the search on 0..15 and 36..39
    assert numbers(search_paths(str(tmp_path), (".png",), 16, 16, 100, most=20)) == list(range(16)) + list(range(36, 40))


def test_export_int8_search_and_verdict_use_different_inputs(tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from jetcap import samples
    from jetcap.cli import cli
    from jetcap.samples import shapes

    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(shapes.generate(40, 5)[0]):
        Image.fromarray(image).save(str(folder / "shape_{:02d}.png".format(i)))
    out = tmp_path / "bundle"
    result = CliRunner().invoke(cli, ["export", str(samples.captioner_checkpoint()), "-o", str(out), "--precision",
                                      "int8", "--calibration-data", str(folder), "--calibration-samples", "8",
                                      "--task-samples", "24"])
    assert result.exit_code == 0, result.output
    # 40 files: the verdict on 8..31, the search on the 8 calibration inputs and 32..39
    source = "16 inputs of {} (the calibration ones first), none of the verdict's".format(folder)
    assert "int8 search aims at " + source in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task_data"]["held_out_from_calibration"] and manifest["task_data"]["count"] == 24
    assert manifest["task_data"]["stored"] == 16  # the bundle keeps the family's 16 for `jetcap validate`
    assert manifest["task_data"]["int8_search"] == {"source": source, "count": 16, "held_out_from_verdict": True}
    assert "/16 captions" in manifest["variants"]["int8"]["quantization"]["search"]["task"]["result"]
    assert "24/24" in manifest["validation"]["int8"]["task"]["summary"]
    assert "24/24" in manifest["validation"]["fp32"]["task"]["summary"]
    validated = CliRunner().invoke(cli, ["validate", str(out), "--backend", "onnxruntime"])
    assert validated.exit_code == 0, validated.output
    with np.load(str(out / "reference.npz")) as stored:
        assert int(stored["task/count"]) == 16 and stored["task/images"].shape[0] == 16
        assert stored["task/greedy_tokens"].shape[0] == 16 and stored["task/names"].shape == (16,)


def test_the_bundle_keeps_the_family_count_of_a_larger_verdict():
    from jetcap.export.tasks import TASK_SEQUENCES, ClassifierExport

    reference = {"task/count": np.asarray(20)}
    for i in range(20):
        reference["task/seq_{:03d}".format(i)] = np.zeros((5, 3), np.float32)
        reference["task/probs_{:03d}".format(i)] = np.zeros(4, np.float32)
    stored = ClassifierExport().stored_task(reference)
    assert int(stored["task/count"]) == TASK_SEQUENCES == 12
    assert sorted(k for k, v in stored.items() if v is None) == sorted(
        "task/{}_{:03d}".format(kind, i) for i in range(12, 20) for kind in ("seq", "probs"))
    small = ClassifierExport().stored_task({"task/count": np.asarray(5)})
    assert int(small["task/count"]) == 5 and len(small) == 1


def test_export_records_the_models_own_stability(captioner_bundle, classifier_bundle):
    stability = json.loads((captioner_bundle / "manifest.json").read_text())["task_data"]["fp32_stability"]
    assert stability["pixel_noise"] == 0.001 and stability["count"] == 16
    assert 0 <= stability["greedy_unchanged"] <= 16
    assert "fp32_stability" not in json.loads((classifier_bundle / "manifest.json").read_text())["task_data"]
    gate, fp32 = _gate(classifier_bundle)
    assert gate.stability(fp32) is None


def test_a_caption_refusal_gives_the_models_own_stability_for_scale():
    from jetcap.export.bundle import _stability_hint
    from jetcap.validate.stability import CaptionStability

    thresholds = {"int8": {"min_exact_match": 0.97}, "fp16": {"min_exact_match": 0.99}}
    task_failed = {"int8": {"passed": False, "task": {"passed": False}}}
    tensor_failed = {"int8": {"passed": False}}  # the task checks never ran
    fragile, stable = CaptionStability(0.001, 190, 200), CaptionStability(0.001, 199, 200)
    hint = _stability_hint(task_failed, ["int8"], fragile, thresholds)
    assert "190/200" in hint and "near-ties" in hint and "97%" in hint
    hint = _stability_hint(task_failed, ["int8"], stable, thresholds)
    assert "199/200" in hint and "near-ties" not in hint
    assert "near-ties" in _stability_hint({"fp16": task_failed["int8"]}, ["fp16"], CaptionStability(0.001, 197, 200),
                                          thresholds)  # 98.5 % is under fp16's 99 %
    both = {"fp16": task_failed["int8"], "int8": task_failed["int8"]}
    hint = _stability_hint(both, ["fp16", "int8"], CaptionStability(0.001, 196, 200), thresholds)
    assert "fp16 (99%)" in hint and "int8 (97%)" not in hint  # 98 %: out of fp16's reach, not int8's
    assert _stability_hint(tensor_failed, ["int8"], fragile, thresholds) == ""
    assert _stability_hint(task_failed, ["int8"], None, thresholds) == ""
