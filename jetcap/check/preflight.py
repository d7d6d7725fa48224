"""``preflight_bundle``: will this bundle parse, build and run with the TensorRT of its device?

It reads every ONNX file of every variant listed in ``manifest.json`` and checks it against the operator
table of that TensorRT release (:mod:`jetcap.check.rules`), checks that every dynamic axis has a min/opt/max
profile, states the precision facts of the device (via :func:`jetcap.runtime.backends.trt_api.build_plan`)
and, for a device, plans its memory (:mod:`jetcap.check.memory`).  No TensorRT is needed.
"""
import collections
import os

from jetcap.check import memory as memory_plan
from jetcap.check.graph import GraphFacts, load_onnx
from jetcap.check.report import ERROR, INFO, WARNING, Report, finding
from jetcap.check.rules import check_graph
from jetcap.check.tables import load_table
from jetcap.check.targets import describe, resolve_target
from jetcap.errors import BundleError, UsageError
from jetcap.runtime.backends import trt_api
from jetcap.runtime.backends.base import io_mismatches
from jetcap.runtime.manifest import CPU_PRECISIONS, Manifest
from jetcap.runtime.platform import precision_support

MAX_PER_RULE = 3  # findings of one rule in one graph shown node by node; the rest are counted


def preflight_bundle(bundle_dir, tensorrt=None, target=None, precisions=None, workspace_mb=None,
                     os_reserve_mb=None, ram_mb=None, tactic_libraries=None):
    """Check ``bundle_dir`` against a TensorRT release (and device) without TensorRT (CPU variants, int8-cpu,
    are skipped with an info finding: they are not for TensorRT).

    Args:
        bundle_dir: the bundle directory (with ``manifest.json``).
        tensorrt: TensorRT version to check against (``"8.2"``; default: the target device's).
        target: ``"nano"``, ``"xavier-nx"``, ``"xavier"``, ``"orin-nano"``, ``"orin"`` or a version; with
            neither argument, ``"nano"``.
        precisions: precisions to check and plan builds for (default: every variant in the bundle); the ONNX
            files read are those variants' plus the ones their builds parse (FP16 before TensorRT 11 parses
            the fp32 file).  A precision named here that the device refuses (INT8 on the Nano) is an error;
            unnamed, a warning.
        workspace_mb: builder workspace of the memory plan (default: ``jetcap build``'s, 256).
        os_reserve_mb, ram_mb: override the device's OS reserve / RAM in the memory plan.
        tactic_libraries: count cuBLAS + cuDNN in the context (None: the release's default).
    Returns:
        a :class:`jetcap.check.report.Report` (falsy when it found an error).
    Raises:
        BundleError: not a readable bundle; UsageError: unknown target/version or precision;
        MissingDependencyError: the ``onnx`` package is not installed.
    """
    resolved = resolve_target(tensorrt, target)
    table = load_table(resolved.tensorrt)
    manifest = Manifest.load(bundle_dir)
    onnx = load_onnx()
    explicit = precisions is not None
    wanted = list(precisions) if explicit else manifest.precisions
    for precision in wanted:
        if precision not in manifest.precisions:
            raise UsageError("bundle has no {} variant (has: {})".format(precision, ", ".join(manifest.precisions)))
    workspace_mb = workspace_mb if workspace_mb is not None else trt_api.DEFAULT_WORKSPACE_MB
    # CPU variants (int8-cpu) are for ONNX Runtime on a CPU: nothing for TensorRT to parse or plan
    cpu_findings = [finding(INFO, "precision.cpu_variant", "CPU variant, not for TensorRT: skipped (ONNX Runtime "
                            "dynamic INT8; jetcap build refuses it)", precision=p)
                    for p in wanted if p in CPU_PRECISIONS]
    wanted = [p for p in wanted if p not in CPU_PRECISIONS]

    plans, precision_findings = build_plans(resolved, manifest, wanted, explicit)
    variants = set(wanted) | set(plan.onnx_variant for plan in plans.values())
    findings, checked, models, unread = [], [], {}, []
    for precision in [p for p in manifest.precisions if p in variants]:
        for graph in manifest.graph_names:
            path = manifest.graph_path(precision, graph)
            where = {"graph": graph, "precision": precision}
            try:
                manifest.verify_file(precision, graph)
            except BundleError as exc:  # damaged or replaced: no plan is made for a file that is not the bundle's
                findings.append(finding(ERROR, "file.sha256", str(exc), **where))
                unread.append(os.path.basename(path))
                continue
            try:
                model = onnx.load(path)
            except Exception as exc:
                raise BundleError("cannot read {}: {}".format(path, exc))
            problems = graph_problems(model, manifest.graph(graph))
            if problems:  # empty, or another graph than the manifest's (swapped, another model's)
                findings.append(finding(ERROR, "graph.io", "{} is not the graph the manifest describes: {}".format(
                    os.path.basename(path), "; ".join(problems)), **where))
                unread.append(os.path.basename(path))
                continue
            models[(precision, graph)] = model
            facts = GraphFacts(model)
            findings.extend(_capped(check_graph(facts, table, where)))
            findings.extend(check_profiles(manifest, graph, facts, where))
            checked.append((precision, graph, os.path.basename(path), len(model.graph.node)))

    findings.extend(precision_findings + cpu_findings)
    memory = None
    if unread:  # a plan over graphs that are not the bundle's would be a plan for nothing
        findings.append(finding(INFO, "memory.skipped", "no memory plan: {} not the bundle's graph(s)".format(
            ", ".join(unread))))
    elif resolved.device is not None and plans:
        memory = _memory(onnx, manifest, resolved, plans, models, workspace_mb, os_reserve_mb, ram_mb,
                         tactic_libraries)
        findings.extend(_memory_findings(memory))
    table_info = {"tensorrt": table.name, "source": table.source,
                  "opset": {"min": table.opset_min, "max": table.opset_max}}
    return Report(describe(resolved), table_info, findings, memory, checked)


def graph_problems(model, io_spec):
    """Why the ONNX ``model`` is not the graph ``io_spec`` (the manifest's ``{inputs, outputs}``) describes:
    no nodes, or a manifest input/output it lacks or has with another rank or fixed size (empty when it is).
    Inputs the manifest does not declare are the rules' business (``profile.missing``), not this check's."""
    if not len(model.graph.node):
        return ["it has no nodes"]
    declared = set(t["name"] for t in io_spec["inputs"])

    def described(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = None  # a value without a shape (custom ops, other exporters): nothing to compare
            if value.type.HasField("tensor_type") and tensor.HasField("shape"):
                shape = [d.dim_param or (int(d.dim_value) if d.HasField("dim_value") else None) for d in tensor.shape.dim]
            out.append((value.name, shape))
        return out

    every = described(model.graph.input)
    if not declared <= set(name for name, _ in every):  # another graph: say what it takes
        return ["inputs are {}, the manifest says {}".format([name for name, _ in every],
                                                             [t["name"] for t in io_spec["inputs"]])]
    inputs = [(name, shape) for name, shape in every if name in declared]
    return io_mismatches(io_spec, inputs, described(model.graph.output), exact=False)


def verify_graph(manifest, precision, graph):
    """BundleError unless the graph file is the bundle's: its checksum, and -- where onnx is installed --
    that it parses and is the graph the manifest describes (a rewrite may come with a recomputed checksum)."""
    import importlib.util

    manifest.verify_file(precision, graph)
    if importlib.util.find_spec("onnx") is None:
        return  # ONNX Runtime or Triton, loading it, then says what is wrong
    path = manifest.graph_path(precision, graph)
    try:
        model = load_onnx().load(path, load_external_data=False)
    except Exception as exc:  # noqa: BLE001 -- protobuf's DecodeError and friends: one line
        raise BundleError("{} is not a readable ONNX graph: {}".format(path, type(exc).__name__)) from None
    problems = graph_problems(model, manifest.graph(graph))
    if problems:
        raise BundleError("{} is not the {} graph the manifest describes: {}".format(path, graph, "; ".join(problems)))


def _capped(findings):
    """At most MAX_PER_RULE findings per (rule, graph, precision, severity), plus one that counts the rest."""
    groups = collections.OrderedDict()
    for item in findings:
        groups.setdefault((item.rule, item.graph, item.precision, item.severity), []).append(item)
    out = []
    for (rule, graph, precision, severity), items in groups.items():
        out.extend(items[:MAX_PER_RULE])
        if len(items) > MAX_PER_RULE:
            out.append(finding(severity, rule, "... and {} more node(s) like these".format(
                len(items) - MAX_PER_RULE), graph=graph, precision=precision))
    return out


def check_profiles(manifest, graph, facts, where):
    """Every dynamic dim of every graph input has an axis with min <= opt <= max in the manifest."""
    findings = []
    declared = dict((t["name"], t["shape"]) for t in manifest.graph(graph)["inputs"])
    axes = manifest.axes
    for name in facts.input_names:
        shape = facts.shape(name) or []
        manifest_shape = declared.get(name)
        for index, dim in enumerate(shape):
            if isinstance(dim, int) and dim > 0:
                continue
            axis = None
            if manifest_shape is not None and index < len(manifest_shape):
                axis = manifest_shape[index]
            elif isinstance(dim, str):
                axis = dim
            if isinstance(axis, int):
                continue
            label = axis if axis is not None else "dim {}".format(index)
            rng = axes.get(axis) if axis is not None else None
            if not isinstance(rng, dict) or not all(isinstance(rng.get(k), int) for k in ("min", "opt", "max")):
                findings.append(finding(
                    ERROR, "profile.missing", "dynamic axis {!r} of input {!r} has no min/opt/max profile in "
                    "manifest.json 'axes'".format(label, name),
                    hint="re-export so the manifest records the axis range (TensorRT needs an optimization profile)",
                    **where))
            elif not 1 <= rng["min"] <= rng["opt"] <= rng["max"]:
                findings.append(finding(ERROR, "profile.invalid", "axis {!r} profile {} is not 1 <= min <= opt <= "
                                        "max".format(label, rng), **where))
    return findings


def build_plans(resolved, manifest, wanted, explicit):
    """``({precision: BuildPlan}, findings)`` for the precisions ``wanted`` on the resolved target."""
    generation = trt_api.api_generation(resolved.tensorrt)
    fast_fp16 = fast_int8 = None
    device = resolved.device
    if device is not None:
        fast_fp16, fast_int8 = precision_support(device.compute_capability)
    plans, findings = {}, []
    for precision in wanted:
        try:
            plan = trt_api.build_plan(generation, precision, fast_fp16=fast_fp16, fast_int8=fast_int8)
        except UsageError as exc:
            findings.append(finding(
                ERROR if explicit else WARNING, "precision.refused",
                "{} refused on {}: {}".format(precision, device.title if device else "this GPU", exc.message),
                precision=precision, hint=exc.hint if explicit else "the {} variant will not be built there; "
                "jetcap build --precision {} refuses it".format(precision, precision)))
            continue
        for text in plan.warnings:
            findings.append(finding(WARNING, "precision.slow", text, precision=precision))
        if plan.onnx_variant not in manifest.precisions:
            findings.append(finding(ERROR, "precision.variant", "TensorRT {} builds {} from the {} ONNX, which the "
                                    "bundle lacks".format(trt_api.format_version(resolved.tensorrt), precision,
                                                          plan.onnx_variant),
                                    precision=precision, hint="re-export with --precision {}".format(plan.onnx_variant)))
            continue
        findings.append(finding(INFO, "precision.plan", "parses the {} ONNX{}".format(
            plan.onnx_variant, " with builder flags {}".format("+".join(plan.flags)) if plan.flags else
            (" strongly typed" if plan.strongly_typed else "")), precision=precision))
        plans[precision] = plan
    return plans, findings


def _memory(onnx, manifest, resolved, plans, models, workspace_mb, os_reserve_mb, ram_mb, tactic_libraries):
    max_axes = dict((name, rng["max"]) for name, rng in manifest.axes.items() if isinstance(rng, dict) and "max" in rng)
    per_precision, parsed = {}, {}
    for precision, plan in plans.items():
        half = "FP16" in plan.flags and plan.onnx_variant == "fp32"
        graphs, sizes = [], []
        for graph in manifest.graph_names:
            model = models[(plan.onnx_variant, graph)]
            graphs.append(memory_plan.graph_memory(onnx, model, max_axes, half_floats=half))
            sizes.append(memory_plan.graph_memory(onnx, model, {}, half_floats=False).weights)
        per_precision[precision] = graphs
        parsed[precision] = sizes
    return memory_plan.plan_memory(resolved.device, resolved.tensorrt, per_precision, workspace_mb, max_axes,
                                   parsed, tactic_libraries=tactic_libraries, os_reserve_mb=os_reserve_mb,
                                   ram_mb=ram_mb)


def _memory_findings(memory):
    findings = []
    for entry in memory["precisions"]:
        hint = "; ".join(entry["advice"]) or None
        if not entry["fits_build"]:
            findings.append(finding(ERROR, "memory.build", "building needs about {:.0f} MB of the {} MB left on {}".format(
                entry["build_peak_mb"], memory["budget_mb"], memory["device"]), precision=entry["precision"],
                hint=hint))
        if not entry["fits_runtime"]:
            findings.append(finding(ERROR, "memory.runtime", "running needs about {:.0f} MB of the {} MB left on "
                                    "{}".format(entry["runtime_mb"], memory["budget_mb"], memory["device"]),
                                    precision=entry["precision"], hint=hint))
        elif entry["advice"]:
            findings.append(finding(WARNING, "memory.tight", "uses over 85% of the {} MB left on {}".format(
                memory["budget_mb"], memory["device"]), precision=entry["precision"], hint=hint))
        if entry["unknown_tensors"]:
            findings.append(finding(INFO, "memory.unknown", "{} intermediate tensor(s) of unknown size at the max "
                                    "profile were not counted".format(entry["unknown_tensors"]),
                                    precision=entry["precision"]))
    return findings
