"""checkpoint -> bundle: graphs, precision variants, reference data, manifest, export-time validation.

Everything is written into a temporary directory that replaces the bundle only when every step and
every check passed, so a failed export never leaves a bundle that looks usable.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from jetcap import __version__
from jetcap.errors import JetcapError, UsageError, ValidationFailed
from jetcap.export.fp16 import convert_fp16
from jetcap.export.int8_cpu import int8_cpu_variant
from jetcap.export.int8_search import int8_variant
from jetcap.export.onnx_graph import ExportError, export_graph, graph_io, tidy_graph
from jetcap.export.options import JETPACK46_MAX_OPSET, ExportOptions, source_options
from jetcap.export.sweep import case_name, compare_outputs, torch_outputs
from jetcap.export.task_gate import TaskGate
from jetcap.export.tasks import family_export
from jetcap.runtime import bundle_schema
from jetcap.runtime.backends.onnxruntime import OnnxRuntimeRunner, variant_options
from jetcap.runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST_NAME
from jetcap.util.fsio import atomic_directory, sha256_file, write_json_atomic
from jetcap.util.isolate import probe_onnx_session
from jetcap.util.lazy import require
from jetcap.util.npz import save_npz
from jetcap.validate.gate import tolerance_gates
from jetcap.validate.metrics import Tolerance

REFERENCE_NAME = "reference.npz"
VARIANT_SUFFIX = {"fp32": "", "fp16": ".fp16", "int8": ".int8", "int8-cpu": ".int8-cpu"}


TASK_OUTPUT = {"captioner": "caption", "classifier": "label"}  # what the task checks compare

def export_bundle(opts: ExportOptions, log: Callable[[str], None] = lambda message: None,
                  source: Optional[Any] = None) -> Dict[str, Any]:
    """Export the model of ``opts`` (or the given model ``source``) to the bundle ``opts.out_dir``;
    returns the summary (also in the manifest).

    Args:
        opts: the export options.
        log: progress lines (stderr in the CLI).
        source: a :class:`jetcap.models.sources.ModelSource` (the Python API); default: resolved from
            ``opts`` (user code, trusted pickled modules or a built-in family).

    Raises:
        UsageError / CheckpointError (exit 2) for bad input, ExportError when a graph cannot be exported,
        ValidationFailed (exit 1) when a variant does not match PyTorch within tolerance.
    """
    for package in ("torch", "torchvision", "onnx", "onnxruntime"):
        require(package)  # MissingDependencyError naming the extra to install, before anything else
    from jetcap.export.subject import BuiltinSubject, is_builtin, make_subject
    from jetcap.models.sources import resolve_source

    opts.check()
    started = time.monotonic()
    if source is None:
        if opts.checkpoint is None:
            raise UsageError("no checkpoint given")
        log("loading {}".format(opts.checkpoint))
        source = resolve_source(source_options(opts))
    log("model source: {}: {}".format(source.kind, source.description))
    if is_builtin(source):
        if opts.output is not None:  # a choice the rebuilt family has not: say so rather than ignore it
            raise UsageError("--output picks one output of your model's forward (with --model or --trust-pickle); "
                             "the built-in {} family exports its own logits".format(source.family))
        task = family_export(source.family)
        config = dict(source.builtin.config)
        given = {k: "--" + k.replace("_", "-") for k in opts.hints}
        if opts.image_size:
            config["image_size"] = int(opts.image_size)
            given["image_size"] = "--image-size"
        if opts.caption_max_len and source.family == "captioner":  # the checkpoint's is only the default
            config["max_len"] = int(opts.caption_max_len)
            given["max_len"] = "--max-len"
        subject = BuiltinSubject(source, task.configure(config, opts), given)
    else:
        subject = make_subject(source, opts)
        task = family_export(subject.family)
    family = subject.family_spec
    config = subject.config
    axes = task.axes(config, opts)
    graphs = subject.graphs
    extras = dict(task.manifest_extras(subject, config), **subject.manifest_extras())
    for warning in subject.warnings:
        log("warning: " + warning)
    for note in source.notes:  # how the checkpoint was read: its warnings are the user's to see
        if note.startswith("warning: "):
            log(note)
    for check in subject.checks:
        log("check: {} - {}: {}".format(check["check"], check["status"], check["detail"]))
    timings: Dict[str, float] = {}

    with atomic_directory(opts.out_dir, force=opts.force) as tmp_dir:
        tmp = Path(tmp_dir)
        notes: List[str] = list(source.notes)
        files: Dict[str, Dict[str, Path]] = {"fp32": {}}
        for spec in graphs:
            t0 = time.monotonic()
            path = tmp / "{}.onnx".format(spec.name)
            example_axes = {a: (max(2, r["opt"]) if a == "batch" else r["opt"]) for a, r in axes.items()}
            example = subject.dummy_inputs(spec.name, example_axes, seed=opts.seed)
            with subject.export_context(spec.name):
                export_graph(subject.graph_module(spec.name), spec, example, path, opts.opset, opts.exporter, axes)
            notes += tidy_graph(path, spec, simplify=opts.simplify)
            _check_dynamic_axes(path, spec, axes)
            files["fp32"][spec.name] = path
            timings["export_" + spec.name] = time.monotonic() - t0
            log("exported {} in {:.1f} s".format(path.name, timings["export_" + spec.name]))

        log("computing PyTorch reference outputs over the dynamic ranges")
        shown = len(subject.warnings)
        calibration = task.calibration_feeds(subject, config, opts)
        pool = task.real_pool(calibration, graphs)
        reference: Dict[str, np.ndarray] = {}
        cases: Dict[str, List[Dict[str, Any]]] = {}
        for spec in graphs:
            module = subject.graph_module(spec.name)  # unpatched: the reference is the model as written
            cases[spec.name] = []
            for i, case in _graph_cases(task.sweep(axes), spec):
                for kind in ("random", "real"):
                    if kind == "random":
                        feed = subject.dummy_inputs(spec.name, case, seed=opts.seed + 17 * i + 1)
                    else:
                        feed = task.real_feed(pool[spec.name], spec, case)
                    name = case_name(kind, case)
                    cases[spec.name].append({"name": name, "kind": kind, "axes": case})
                    for key, value in feed.items():
                        reference["sweep/{}/{}/in/{}".format(spec.name, name, key)] = value
                    for key, value in torch_outputs(module, spec, feed).items():
                        if key not in subject.derived_outputs:
                            reference["sweep/{}/{}/out/{}".format(spec.name, name, key)] = value
        reference.update(task.task_reference(subject, config, opts))
        search_reference = task.search_reference(subject, config, opts) if "int8" in opts.precisions else None
        for warning in subject.warnings[shown:]:  # found reading the task inputs (clips left out ...)
            log("warning: " + warning)
        if opts.calibration_data is not None:
            log("task checks on {} inputs of {} ({})".format(
                int(reference["task/count"]), opts.calibration_data,
                "held out from calibration" if bool(reference["task/held_out"]) else
                "shared with calibration: the folder has too few files to hold {} out".format(int(reference["task/count"]))))
        if search_reference is not None:
            log("int8 search aims at {}; the verdict is on the held-out inputs".format(search_reference["task/source"]))
        manifest = dict(extras, **{
            "format": FORMAT, "format_version": FORMAT_VERSION, "family": family.name,
            "created_by": _library_versions(),
            "source": source.manifest_entry(),
            "export": {"opset": opts.opset, "exporter": opts.exporter.value, "simplified": opts.simplify,
                       "notes": notes},
            "config": _jsonable(config),
            "graphs": {spec.name: spec.manifest_entry() for spec in graphs},
            "graph_order": [spec.name for spec in graphs],  # JSON objects are written key-sorted
            "axes": axes,
            "tolerances": {p: Tolerance.manifest_entry(vars(t)) for p, t in family.tolerances.items()},
            "task_thresholds": {p: vars(t) for p, t in family.task_thresholds.items()},
            "task_data": {"source": str(reference["task/source"]), "count": int(reference["task/count"]),
                          "held_out_from_calibration": bool(reference["task/held_out"])},
        })
        task_gate = TaskGate(manifest, tmp, reference, files["fp32"])
        search_gate = task_gate
        if "int8" in opts.precisions:  # the search's own inputs: what it is fitted to is not what judges it
            searched = search_reference if search_reference is not None else reference
            manifest["task_data"]["int8_search"] = {"source": str(searched["task/source"]),
                                                    "count": int(searched["task/count"]),
                                                    "held_out_from_verdict": search_reference is not None}
            if search_reference is not None:
                search_gate = TaskGate(manifest, tmp, search_reference, files["fp32"])

        validation: Dict[str, Any] = {}
        variants: Dict[str, Any] = {}
        stability = None  # the model's own captions under tiny input noise: what a variant's figures mean
        for precision in opts.precisions:
            t0 = time.monotonic()
            details: Dict[str, Any] = {}
            if precision == "fp16":
                files["fp16"] = {}
                for spec in graphs:
                    dst = tmp / "{}.fp16.onnx".format(spec.name)
                    details.setdefault("notes", []).extend(convert_fp16(files["fp32"][spec.name], dst))
                    files["fp16"][spec.name] = dst
                details["converter"] = "onnxruntime.transformers.float16 (keep_io_types)"
            elif precision == "int8":
                files["int8"], details = int8_variant(files["fp32"], [g.name for g in graphs], calibration,
                                                      subject.int8_keep_float, family.tolerances["int8"], opts,
                                                      tmp, log, task_check=lambda fs: search_gate.run("int8", fs))
            elif precision == "int8-cpu":  # CPU variant: ONNX Runtime dynamic weight quantisation
                files["int8-cpu"], details = int8_cpu_variant(files["fp32"], [g.name for g in graphs], tmp, log)
            log("checking {} against PyTorch".format(precision))
            validation[precision] = _validate_variant(files[precision], graphs, cases, reference,
                                                      family.tolerances[precision], precision)
            if validation[precision]["passed"]:  # what it says, as `jetcap validate` checks it
                log("checking {} {}s against PyTorch's".format(precision, TASK_OUTPUT[family.name]))
                _task_check(task_gate, precision, files[precision], validation[precision])
                if precision == "fp32" and validation["fp32"]["passed"] and len(opts.precisions) > 1:
                    stability = task_gate.stability(files["fp32"])
                    if stability is not None:
                        manifest["task_data"]["fp32_stability"] = stability.to_dict()
                        log("model stability: " + stability.summary())
            timings["variant_" + precision] = time.monotonic() - t0
            variants[precision] = dict(details, files={
                name: {"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                for name, p in files[precision].items()})
            log("{}: {} ({:.1f} s)".format(precision, "PASS" if validation[precision]["passed"] else "FAIL",
                                           timings["variant_" + precision]))

        for key, value in task.stored_task(reference).items():  # the verdict may have used more inputs
            if value is None:
                reference.pop(key, None)
            else:
                reference[key] = value
        manifest["task_data"]["stored"] = int(reference["task/count"])
        # what the reference's results mean (words, class names, preprocessing, tolerances ...): validate
        # fails a manifest edited afterwards
        # digested as validate will read them: after a JSON round trip (tuples, int keys, numpy floats)
        written = json.loads(json.dumps(dict(manifest, cases=cases)))
        reference[bundle_schema.ENTRIES_KEY] = np.asarray(json.dumps(
            bundle_schema.entry_digests(written, written.pop("cases")), sort_keys=True))
        save_npz(tmp / REFERENCE_NAME, reference)
        timings["total"] = time.monotonic() - started
        manifest.update({
            "variants": variants,
            "reference": {"path": REFERENCE_NAME, "sha256": sha256_file(tmp / REFERENCE_NAME), "cases": cases},
            "validation": validation,
        })
        write_json_atomic(tmp / MANIFEST_NAME, manifest)
        failed = [p for p, v in validation.items() if not v["passed"]]
        worst = [f for p in failed for f in validation[p]["failures"]][:3]
        scale = _stability_hint(validation, failed, stability, manifest["task_thresholds"])
        partial = bool(failed) and opts.keep_passing and "fp32" not in failed
        if failed and not partial:
            raise ValidationFailed("export validation failed for {}: {}".format(", ".join(failed), "; ".join(worst)),
                                   hint="no bundle was written" + ("" if opts.keep_passing or len(opts.precisions) < 2
                                                                  else " (--keep-passing keeps the variants that passed)")
                                   + scale)
        if partial:  # --keep-passing: the failed variants' files go, the manifest says which and why
            for precision in failed:
                for path in files[precision].values():
                    path.unlink()
            manifest["failed_variants"] = {p: dict({k: v for k, v in variants.pop(p).items() if k != "files"},
                                                   failures=validation[p]["failures"][:20]) for p in failed}
            write_json_atomic(tmp / MANIFEST_NAME, manifest)
            log("kept the variants that passed ({}); left out: {}".format(
                ", ".join(variants), ", ".join(failed)))
        preflight = None
        if opts.preflight:
            # an opset past what the Nano's TensorRT 8.2 reads is meant for a newer Jetson (Orin, TensorRT 10)
            preflight = _preflight(tmp, opts.target or ("nano" if opts.opset <= JETPACK46_MAX_OPSET else "orin"), log)
            manifest["preflight"] = preflight
            write_json_atomic(tmp / MANIFEST_NAME, manifest)
    summary = {"bundle": str(opts.out_dir), "family": family.name, "source": source.kind,
               "warnings": list(subject.warnings), "precisions": list(opts.precisions),
               "graphs": [g.name for g in graphs], "seconds": {k: round(v, 2) for k, v in timings.items()},
               "validation": {p: v["passed"] for p, v in validation.items()}, "notes": notes,
               "preflight": preflight}
    if failed:
        summary["failed_variants"] = failed
        raise PartialBundle("bundle {} written with {} only: {} failed the check: {}".format(
            opts.out_dir, ", ".join(variants), ", ".join(failed), "; ".join(worst)), summary=summary,
            hint="the manifest's failed_variants lists every failure" + scale)
    if preflight is not None and not preflight["ok"]:
        raise PreflightFailed("bundle {} written, but the TensorRT pre-flight for {} found {} error(s); first: {}".format(
            opts.out_dir, preflight["target"], len(preflight["errors"]), preflight["errors"][0]),
            hint="it will not build there as it is: see `jetcap check {}`; --target names another device".format(
                opts.out_dir))
    return summary


class PartialBundle(ValidationFailed):
    """``--keep-passing``: the bundle was written without the variants that failed (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, summary: Dict[str, Any], hint: Optional[str] = None):
        super().__init__(message, hint=hint)
        self.summary = summary


class PreflightFailed(JetcapError):
    """The bundle was written, but TensorRT on the target would refuse it (exit 1, like a failed check)."""

    exit_code = 1


def _preflight(bundle: Path, target: Optional[str], log: Callable[[str], None]) -> Dict[str, Any]:
    """``jetcap check`` of the new bundle for ``target`` (default: the Nano): the manifest's summary."""
    from jetcap.check import preflight_bundle

    report = preflight_bundle(bundle, target=target or "nano")
    lines = report.to_text().splitlines()
    log("pre-flight: " + lines[0])
    for finding in report.errors() + report.warnings():
        where = "/".join(part for part in (finding.precision, finding.graph) if part)
        log("pre-flight: {} [{}] {}: {}".format(finding.severity.upper(), finding.rule, where, finding.message))
    log("pre-flight: " + lines[-1] + " (jetcap check BUNDLE for the memory plan)")
    return {"target": report.target, "requested": target or "nano", "ok": bool(report),
            "errors": ["[{}] {}: {}".format(f.rule, "/".join(p for p in (f.precision, f.graph) if p), f.message)
                       for f in report.errors()],
            "warnings": len(report.warnings())}


def _validate_variant(files: Dict[str, Path], graphs, cases, reference, tolerance, precision: str) -> Dict[str, Any]:
    """ONNX Runtime vs the stored PyTorch outputs over every sweep case; first session in a child."""
    results: Dict[str, Any] = {"passed": True, "failures": [], "graphs": {}}
    for spec in graphs:
        path = files[spec.name]
        first = cases[spec.name][0]["name"]
        probe_feed = {k.rsplit("/", 1)[1]: v for k, v in reference.items()
                      if k.startswith("sweep/{}/{}/in/".format(spec.name, first))}
        crash = probe_onnx_session(path, probe_feed)
        if crash:
            results["passed"] = False
            results["failures"].append(crash)
            results["graphs"][spec.name] = {"error": crash}
            continue
        io = {"inputs": [_tensor_entry(t) for t in spec.inputs], "outputs": [_tensor_entry(t) for t in spec.outputs]}
        records = []
        with OnnxRuntimeRunner(path, io, name="{}[{}]".format(spec.name, precision),
                               **variant_options(precision)) as runner:  # as the runtime runs it
            for case in cases[spec.name]:
                prefix = "sweep/{}/{}/".format(spec.name, case["name"])
                feed = {k[len(prefix) + 3:]: v for k, v in reference.items() if k.startswith(prefix + "in/")}
                expected = {k[len(prefix) + 4:]: v for k, v in reference.items() if k.startswith(prefix + "out/")}
                gate = tolerance_gates(precision, case["kind"])
                for record in compare_outputs(runner.infer(feed), expected, tolerance, gate=gate):
                    record["case"] = case["name"]
                    record["gated"] = gate
                    records.append(record)
                    if not record["passed"]:
                        results["passed"] = False
                        results["failures"].append("{} {} {}: {}".format(spec.name, case["name"], record["output"],
                                                                           record["reason"]))
        results["graphs"][spec.name] = {
            "worst_max_abs": max(r["max_abs"] for r in records if r["gated"]),
            "min_cosine": min(r["cosine"] for r in records if r["gated"]),
            "checks": len(records),
        }
    return results


def _task_check(gate: TaskGate, precision: str, files: Dict[str, Path], result: Dict[str, Any]) -> None:
    """The task-level checks of a variant (see :mod:`jetcap.export.task_gate`), into its ``result``."""
    outcome = gate.run(precision, files)
    result["task"] = {"passed": outcome.passed, "summary": outcome.summary, "failures": outcome.failures}
    if not outcome.passed:
        result["passed"] = False
        result["failures"].extend("task {}".format(f) for f in outcome.failures)


def _stability_hint(validation: Dict[str, Any], failed: List[str], stability,
                    thresholds: Dict[str, Dict[str, float]]) -> str:
    """A hint's tail when a variant failed its caption checks: how many captions the FP32 model itself keeps
    under :data:`jetcap.validate.stability.PIXEL_NOISE`, for scale, and when that is below the variant's
    bar, that the bar is out of reach of any perturbation as large; else ''."""
    if stability is None:
        return ""
    bars = {p: thresholds[p]["min_exact_match"] for p in failed
            if p in thresholds and not validation[p].get("task", {}).get("passed", True)}
    if not bars:
        return ""
    text = "; for scale, the model itself: {} ({:.1%})".format(stability.summary(), stability.fraction)
    above = [p for p in failed if p in bars and stability.fraction < bars[p]]
    if above:
        text += (", under the bar of {}: its captions sit on near-ties, and a variant that perturbs it as much "
                 "is not expected to reach the bar (docs/VALIDATION.md)".format(
                     ", ".join("{} ({:.0%})".format(p, bars[p]) for p in above)))
    return text


def _graph_cases(sweep: List[Dict[str, int]], spec) -> List[Tuple[int, Dict[str, int]]]:
    """``(index, case)`` of the sweep cases restricted to the axes of ``spec``'s inputs (an axis only
    applies to the graphs that have it), duplicates dropped; ``index`` is the case's sweep position."""
    names = {a for t in spec.inputs for a in t.dynamic_axes.values()}
    out: List[Tuple[int, Dict[str, int]]] = []
    for i, case in enumerate(sweep):
        own = {a: v for a, v in case.items() if a in names}
        if own not in [c for _, c in out]:
            out.append((i, own))
    return out


def _check_dynamic_axes(path: Path, spec, axes: Optional[Mapping[str, Mapping[str, int]]] = None) -> None:
    """ExportError when an axis the spec declares dynamic was frozen to a number in the file (with
    ``axes``, the message tells a model of one window length, min = max, from an exporter's freeze)."""
    actual = graph_io(path)
    for side, tensors in (("inputs", spec.inputs), ("outputs", spec.outputs)):
        for tensor, entry in zip(tensors, actual[side]):
            for axis, name in tensor.dynamic_axes.items():
                only = (axes or {}).get(name) or {}
                if only and only.get("min") == only.get("max") == entry["shape"][axis]:
                    raise ExportError("the model runs one {} of {} only (--min-len = --max-len): jetcap's bundles "
                                      "keep {} dynamic, and a graph of one window is not supported".format(
                                          name, entry["shape"][axis], name),
                                      hint="export a forward that accepts other lengths (pad or crop clips to the "
                                           "window in your pipeline before it)")
                if isinstance(entry["shape"][axis], int) and entry["shape"][axis] > 0:
                    raise ExportError("the exporter froze dynamic axis {!r} of {} to {}".format(
                        name, tensor.name, entry["shape"][axis]), hint="export with batch >= 2 / another exporter")


def _tensor_entry(tensor) -> Dict[str, Any]:
    return {"name": tensor.name, "dtype": tensor.dtype, "shape": list(tensor.shape)}


def _jsonable(config: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in config.items():
        if isinstance(value, tuple):
            value = list(value)
        out[key] = value
    return out


def _library_versions() -> Dict[str, str]:
    versions = {"jetcap": __version__, "python": platform.python_version()}
    for name in ("torch", "onnx", "onnxruntime", "onnxslim", "numpy"):
        versions[name] = getattr(require(name), "__version__", "unknown")
    return versions
