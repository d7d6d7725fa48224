"""``jetcap validate``: run a bundle's variants on each backend and compare with PyTorch (Python 3.6).

The reference is what PyTorch computed at export time and stored in the bundle (``reference.npz``),
so a device without torch can validate; with ``checkpoint`` the PyTorch outputs are recomputed live.
Every check is collected before reporting (see :mod:`jetcap.validate.report`).
"""
import os
import zipfile

import numpy as np

from jetcap.errors import BundleError, JetcapError, MissingDependencyError, UsageError
from jetcap.runtime import bundle_schema
from jetcap.runtime.backends.base import io_mismatches
from jetcap.runtime.manifest import Manifest, tensorrt_refusal
from jetcap.runtime.pipeline import CaptionPipeline, ClassifierPipeline, open_onnxruntime
from jetcap.util.isolate import probe_onnx_session
from jetcap.util.lazy import available, require
from jetcap.util.npz import load_npz
from jetcap.validate.metrics import Tolerance, caption_agreement, label_agreement, tolerance_checker
from jetcap.validate.report import TASK, Check, ValidationReport, caption_checks, label_checks, tensor_checks

BACKENDS = ("onnxruntime", "tensorrt")
# INT8 on random inputs: ranges were calibrated on real data, so only NaN/Inf/shape checks gate there.
UNGATED = Tolerance(float("inf"), 0.0, -1.0)


def tolerance_gates(precision, case_kind):
    """Whether the precision's tolerance applies to a sweep case of ``case_kind`` ("random"/"real");
    where it does not (INT8 on random inputs), only NaN/Inf, shape and dtype can fail.  ``int8-cpu`` is gated
    on random inputs too: its activation ranges are computed per call, not calibrated."""
    return not (precision == "int8" and case_kind == "random")


class ValidateOptions(object):
    """Options of one validation run.

    Args:
        bundle: bundle directory.
        backends: ``"all"`` (every available backend) or a list of backend names.
        precisions: ``"all"`` or a list of precisions.
        checkpoint: PyTorch checkpoint to compute the reference live (else the bundle's stored one).
        data: folder of real images/sequences for the task-level checks (else the bundle's samples).
        samples: at most this many task inputs (None: all).
        tolerances: ``{output_name: {atol, rtol, min_cosine}}`` overrides for every precision.
        engine_cache: TensorRT engine cache directory.
        seed: with ``checkpoint``, also draw fresh random inputs with this seed (see ``live_reference``).
        checkpoint_options: how to find the user's model (models, model_args, adapter, trust_pickle,
            code_path, word_map; see ``jetcap.models.sources``).
        target: device / TensorRT version of the pre-flight (default: the one the bundle was exported for).
        preflight: run the TensorRT pre-flight (``jetcap check``) as part of the gate.
    """

    def __init__(self, bundle, backends="all", precisions="all", checkpoint=None, data=None, samples=None,
                 tolerances=None, engine_cache=None, checkpoint_options=None, seed=None, target=None, preflight=True):
        self.bundle = bundle
        self.backends = backends
        self.precisions = precisions
        self.checkpoint = checkpoint
        self.data = data
        self.samples = samples
        self.tolerances = tolerances or {}
        self.engine_cache = engine_cache
        self.checkpoint_options = checkpoint_options or {}
        self.seed = seed
        self.target = target
        self.preflight = preflight


def backend_available(name):
    """True when backend ``name`` can run here (a stubs-only ``tensorrt`` does not count)."""
    if name == "tensorrt":
        from jetcap.runtime.backends.trt_api import tensorrt_available

        return tensorrt_available()
    return available(name)


def resolve_backends(requested):
    """Backend names to run; a requested backend that is not installed is an exit-2 error."""
    if requested == "all" or requested == ["all"]:
        found = [b for b in BACKENDS if backend_available(b)]
        if not found:
            raise MissingDependencyError("no inference backend is installed", hint="pip install onnxruntime")
        return found
    names = list(requested)
    for name in names:
        if name not in BACKENDS:
            raise UsageError("unknown backend {!r} (choose from {})".format(name, ", ".join(BACKENDS)))
        if name == "tensorrt":
            from jetcap.runtime.backends.trt_api import load_tensorrt

            load_tensorrt()  # raises MissingDependencyError with what to install
        elif not available(name):
            require(name)
    return names


def validate_bundle(opts, log=lambda message: None):
    """Validate ``opts.bundle``; returns the :class:`ValidationReport` (never raises for numeric failures)."""
    manifest = Manifest.load(opts.bundle)
    bundle_schema.require_entries(manifest, "validate")  # one-line BundleError, not a KeyError mid-run
    backends = resolve_backends(opts.backends)
    precisions = manifest.precisions if opts.precisions in ("all", ["all"]) else list(opts.precisions)
    for precision in precisions:
        manifest.variant(precision)  # BundleError for a variant the bundle lacks
    outputs = sorted(set(t["name"] for graph in manifest.graph_names for t in manifest.graph(graph)["outputs"]))
    unknown = sorted(name for name in opts.tolerances if name not in outputs)
    if unknown:  # a typo would otherwise leave the output at its default, silently
        raise UsageError("--tolerance names {} not among the bundle's outputs ({})".format(
            ", ".join(unknown), ", ".join(outputs)))
    reference = _load_reference(manifest)
    entries = _entries_check(manifest, reference)  # before --seed adds its cases to the manifest in memory
    if opts.seed is not None and not opts.checkpoint:
        raise UsageError("--seed draws new random inputs, whose PyTorch reference needs --checkpoint")
    if opts.checkpoint:
        from jetcap.validate.live import live_reference

        log("recomputing the PyTorch reference from {}".format(opts.checkpoint))
        reference = live_reference(manifest, reference, opts.checkpoint, opts.checkpoint_options, seed=opts.seed)
    task = task_inputs(manifest, reference, opts)
    report = ValidationReport(meta={"bundle": os.path.abspath(str(opts.bundle)), "family": manifest.family,
                                    "reference": "live PyTorch" if opts.checkpoint else "stored PyTorch outputs",
                                    "task_inputs": task["source"]})
    report.add(entries)
    for backend in backends:
        for precision in precisions:
            if backend == "tensorrt" and tensorrt_refusal(precision):  # int8-cpu: a CPU variant
                log("skipping {} {}: CPU variant, not for TensorRT".format(backend, precision))
                report.add(Check(backend, precision, "-", "backend.skipped", 0, 0, "==",
                                 detail="CPU variant, not for TensorRT (validated on onnxruntime)"))
                continue
            log("validating {} {}".format(backend, precision))
            _validate_one(manifest, reference, task, backend, precision, opts, report)
    if opts.preflight:
        _preflight_checks(manifest, precisions, opts, report, log)
    return report


def _preflight_checks(manifest, precisions, opts, report, log):
    """The TensorRT pre-flight (``jetcap check``) for the bundle's target as checks of the report: one
    failing check per error, one passing check when there is none.  Needs onnx (skipped, and said so,
    on a device without it: there the real TensorRT build is the check)."""
    if not available("onnx"):
        log("pre-flight skipped: onnx is not installed here")
        return
    from jetcap.check import preflight_bundle

    recorded = manifest.data.get("preflight")
    target = opts.target or (recorded.get("requested") if isinstance(recorded, dict) else None) or "nano"
    try:
        checked = preflight_bundle(manifest.bundle_dir, target=target)
    except UsageError:
        raise  # a --target it does not know: the user's to fix (exit 2)
    except JetcapError as exc:  # e.g. a graph file that does not parse: a failed check, reported with the rest
        report.add(Check("tensorrt-preflight", "-", "-", "preflight.run", None, None, "==", passed=False,
                         detail=str(exc)))
        return
    errors = [f for f in checked.errors() if f.precision in (None,) + tuple(precisions)]
    for f in errors:
        report.add(Check("tensorrt-preflight", f.precision or "-", f.graph or "-", "preflight." + f.rule, None, None,
                         "==", passed=False, detail="{} ({})".format(f.message, checked.target)))
    if not errors:
        report.add(Check("tensorrt-preflight", "-", "-", "preflight.errors", 0, 0, "==",
                         detail="{}: no parser, precision or memory errors ({} warnings; jetcap check lists them)".format(
                             checked.target, len(checked.warnings()))))


def _entries_check(manifest, reference):
    """Whether the manifest still has the entries the reference was made with (words, class names,
    preprocessing, default search, tolerances, thresholds, reference cases): the reference feeds tensors
    already preprocessed and compares token ids and class indices, so an edit of those entries changes
    every answer a user sees and would pass every other check."""
    recorded = reference.get(bundle_schema.ENTRIES_KEY)
    if recorded is None:
        return Check("bundle", "-", "manifest", "entries.unchanged", 0, 0, "==",
                     detail="not recorded by the jetcap that exported this bundle: not checked (re-export to check)")
    changed, unchecked = bundle_schema.changed_entries(manifest.data, recorded)
    detail = ("changed since export: {} (the stored reference was not made with these: re-export)".format(
        ", ".join(changed)) if changed else "labels, vocabulary, preprocessing, decoding, tolerances, thresholds as "
              "exported")
    if unchecked:  # recorded by another jetcap version, or unknown to the one that exported
        detail += "; not checked (known to one jetcap version only): {}".format(", ".join(unchecked))
    return Check("bundle", "-", "manifest", "entries.unchanged", len(changed), 0, "==", detail=detail)


def _load_reference(manifest):
    path = manifest.reference_path()
    if path is None or not os.path.isfile(path):
        raise UsageError("bundle has no reference data (reference.npz)", hint="re-export the bundle")
    try:
        if not zipfile.is_zipfile(path):
            raise BundleError("the bundle's reference data {} is not an npz (zip) file".format(path),
                              hint="re-export the bundle")
        return load_npz(path)
    except (IOError, OSError, ValueError, zipfile.BadZipFile) as exc:  # object arrays: ValueError, never unpickled
        raise BundleError("cannot read the bundle's reference data {}: {}".format(
            path, getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]), hint="re-export the bundle")


def task_inputs(manifest, reference, opts):
    """The task-level inputs and their PyTorch results (stored, live, or from ``opts.data``); ``opts``
    needs ``data`` and ``samples`` (see :class:`ValidateOptions`)."""
    if opts.data:
        from jetcap.validate.data import task_from_folder

        return task_from_folder(manifest, opts)
    try:
        return _stored_task(manifest, reference, opts.samples)
    except KeyError as exc:
        raise BundleError("the bundle's reference data lacks {} (the task-level inputs)".format(exc),
                          hint="re-export the bundle")


def _stored_task(manifest, reference, limit):
    """The task inputs and PyTorch's results the reference stores; BundleError when its arrays do not agree
    on how many there are (a reference that lost some must not pass by checking fewer)."""
    if manifest.family == "captioner":
        names = [str(n) for n in reference["task/names"]]
        lengths = dict((key, len(reference[key]) if np.ndim(reference[key]) else -1)  # -1: not an array of rows
                       for key in ("task/images", "task/greedy_tokens", "task/beam_tokens"))
        if any(length != len(names) for length in lengths.values()):
            raise BundleError("reference.npz task arrays disagree on their count: task/names {}, {}".format(
                len(names), ", ".join("{} {}".format(k, v) for k, v in sorted(lengths.items()))))
        count = len(names) if limit is None else min(limit, len(names))
        return {"source": "bundle samples", "names": names[:count], "images": reference["task/images"][:count],
                "greedy": [_unpad(r) for r in reference["task/greedy_tokens"][:count]],
                "beam": [_unpad(r) for r in reference["task/beam_tokens"][:count]],
                "beam_size": int(reference["task/beam_size"])}
    stored = int(reference["task/count"])
    present = sum(1 for key in reference if key.startswith("task/seq_"))
    if stored != present or any("task/{}_{:03d}".format(kind, i) not in reference
                                for i in range(present) for kind in ("seq", "probs")):
        raise BundleError("reference.npz says task/count {} but holds {} task sequences (with their "
                          "probabilities)".format(stored, present))
    count = stored if limit is None else min(limit, stored)
    return {"source": "bundle samples", "names": ["seq_{:03d}".format(i) for i in range(count)],
            "sequences": [reference["task/seq_{:03d}".format(i)] for i in range(count)],
            "probs": [reference["task/probs_{:03d}".format(i)] for i in range(count)]}


def _unpad(row):
    return [int(t) for t in row if t >= 0]


def _open_runners(manifest, backend, precision, opts):
    if backend == "onnxruntime":
        return open_onnxruntime(manifest, precision)
    from jetcap.runtime.engine import open_tensorrt_runners

    return open_tensorrt_runners(manifest, precision, cache_dir=opts.engine_cache)


def _validate_one(manifest, reference, task, backend, precision, opts, report):
    # integrity first: a modified graph file is a failure, not something to run
    for graph in manifest.graph_names:
        try:
            manifest.verify_file(precision, graph)
        except JetcapError as exc:
            report.add(Check(backend, precision, graph, "file.sha256", None, None, "==", passed=False, detail=str(exc)))
            return
    if backend == "onnxruntime":
        for graph in manifest.graph_names:
            crash = probe_onnx_session(manifest.graph_path(precision, graph))
            if crash:
                report.add(Check(backend, precision, graph, "session", None, None, "==", passed=False, detail=crash))
                return
    runners = _open_runners(manifest, backend, precision, opts)
    tolerance = manifest.data["tolerances"][precision]
    try:
        for runner in runners.values():
            runner.activate()
        for graph, runner in runners.items():
            _check_io(manifest, graph, runner, backend, precision, report)
            _tensor_level(manifest, reference, graph, runner, backend, precision, tolerance, opts, report)
        task_level(manifest, task, runners, backend, precision, report)
    finally:
        for runner in runners.values():
            runner.deactivate()


def _check_io(manifest, graph, runner, backend, precision, report):
    """The graph's I/O as the backend sees it must match the manifest, dynamic axes included."""
    describe = getattr(runner, "describe_io", None)
    if describe is None:
        session = getattr(runner, "session", None)
        if session is None:
            return
        actual = {"inputs": [(t.name, t.shape) for t in session.get_inputs()],
                  "outputs": [(t.name, t.shape) for t in session.get_outputs()]}
    else:
        actual = describe()
    problems = io_mismatches(manifest.graph(graph), actual["inputs"], actual["outputs"], exact=True)
    report.add(Check(backend, precision, graph, "io.names_shapes", len(problems), 0, "<=",
                     detail="; ".join(problems) if problems else "names and dynamic axes as in the manifest"))


def _tensor_level(manifest, reference, graph, runner, backend, precision, tolerance, opts, report):
    base = Tolerance.from_any(tolerance)
    # an override's fields left out: the precision's min_cosine, and no outlier allowance
    overrides = dict((name, dict({"min_cosine": base.min_cosine}, **spec)) for name, spec in opts.tolerances.items())
    gated = tolerance_checker(tolerance, per_output=overrides)
    ungated = tolerance_checker(UNGATED)
    results = {}
    # the step's own top-k is checked against its log_probs (the reference stores the distribution only)
    topk = (manifest.data.get("decoder") or {}).get("topk") or {}
    derived = set(topk.get(key) for key in ("log_probs", "ids"))
    for case in manifest.data["reference"]["cases"][graph]:
        prefix = "sweep/{}/{}/".format(graph, case["name"])
        feed = dict((k[len(prefix) + 3:], v) for k, v in reference.items() if k.startswith(prefix + "in/"))
        expected = dict((k[len(prefix) + 4:], v) for k, v in reference.items() if k.startswith(prefix + "out/"))
        check = gated if tolerance_gates(precision, case["kind"]) else ungated
        spec = manifest.graph(graph)
        missing = ([t["name"] for t in spec["inputs"] if t["name"] not in feed]
                   + [t["name"] for t in spec["outputs"] if t["name"] not in expected and t["name"] not in derived])
        if missing:  # a reference that lost arrays must not pass by checking less
            report.add(Check(backend, precision, graph, "reference.complete", len(missing), 0, "<=",
                             detail="{}: reference.npz has no {}".format(case["name"], ", ".join(missing)),
                             worst_input=case["name"]))
            continue
        try:
            outputs = runner.infer(feed)
        except Exception as exc:  # a backend error on one case is a failed check, reported with the rest
            report.add(Check(backend, precision, graph, "run", None, None, "==", passed=False,
                             detail="{} failed: {}".format(case["name"], _first_line(exc)), worst_input=case["name"]))
            continue
        unknown = sorted(set(expected) - set(outputs))
        if unknown:  # arrays of outputs the graph does not have: not this graph's reference
            report.add(Check(backend, precision, graph, "reference.outputs", len(unknown), 0, "<=",
                             detail="{}: reference.npz has outputs the graph does not: {}".format(
                                 case["name"], ", ".join(unknown)[:200]), worst_input=case["name"]))
            continue
        for name, ref in expected.items():
            results.setdefault(name, []).append((case["name"], check(name, outputs[name], ref)))
    for name, pairs in results.items():
        report.extend(tensor_checks(backend, precision, graph, name, pairs))


def task_level(manifest, task, runners, backend, precision, report):
    """Add the task-level checks of ``runners`` (activated) on ``task`` (see :func:`task_inputs`) to
    ``report``; returns the agreements measured (:class:`CaptionAgreement` greedy then beam, or one
    :class:`LabelAgreement`; empty when decoding failed, which is a failed ``task.run`` check)."""
    thresholds = manifest.data["task_thresholds"][precision]
    agreements = []
    try:
        if manifest.family == "captioner":
            pipeline = CaptionPipeline(manifest, runners, precision)
            greedy = [h.tokens for h in pipeline.caption(task["images"])]
            agreements.append(caption_agreement(greedy, task["greedy"]))
            report.extend(caption_checks(backend, precision, agreements[-1], thresholds, labels=task["names"]))
            beam = [h.tokens for h in pipeline.caption(task["images"], beam_size=task["beam_size"])]
            agreements.append(caption_agreement(beam, task["beam"]))
            for check in caption_checks(backend, precision, agreements[-1], thresholds, labels=task["names"]):
                check.name = check.name.replace("caption.", "caption_beam{}.".format(task["beam_size"]))
                report.add(check)
        else:
            pipeline = ClassifierPipeline(manifest, runners)
            probs = [pipeline.run_probabilities(np.asarray(s, dtype=np.float32)[None])[0] for s in task["sequences"]]
            agreements.append(label_agreement(np.stack(probs), np.stack(task["probs"])))
            report.extend(label_checks(backend, precision, agreements[-1], thresholds, labels=task["names"]))
    except Exception as exc:  # a crash in decoding is a task failure to report, not to hide
        report.add(Check(backend, precision, TASK, "task.run", None, None, "==", passed=False, detail=_first_line(exc)))
        return []
    return agreements


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
