"""The benchmark report: key figures, ratios against PyTorch eager, the distance to the limit, the
targets, and the text table (Python 3.6).

Every ratio reads "times better than PyTorch eager (same algorithm)": above 1 is better, whether the
figure is a latency, a throughput, a peak RSS or a cold start.
"""
import collections
import re

Metric = collections.namedtuple("Metric", ["key", "label", "unit", "better", "path"])
Metric.__doc__ = """One figure of a configuration: ``path`` into its results, ``better`` "lower" or "higher"."""

BASELINE = "pytorch"
REPROJECT = "pytorch-reproject"


def _get(data, path):
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def process_metrics():
    """Figures of fresh processes: peak RSS and cold start (with its import and load phases) of one that
    loads the model and produces one result, and the peak RSS of the process that ran every measurement."""
    return [
        Metric("peak_rss_mb", "peak RSS MB", "MB", "lower", ("cold", "peak_rss_mb")),
        Metric("cold_start_s", "cold start s", "s", "lower", ("cold", "cold_start_s")),
        Metric("cold_imports_s", "imports s", "s", "lower", ("cold", "imports_s")),
        Metric("cold_load_s", "load s", "s", "lower", ("cold", "load_s")),
        Metric("bench_peak_rss_mb", "peak RSS MB, all batches", "MB", "lower", ("measure", "peak_rss_mb")),
    ]


def captioner_metrics(max_batch):
    """The captioner's figures, at batch 1 and at the bundle's largest batch ``max_batch``."""
    b = str(max_batch)
    return [
        Metric("encoder_ms_1", "encoder ms", "ms", "lower", ("measure", "encoder", "1", "p50_ms")),
        Metric("step_ms_1", "step ms", "ms", "lower", ("measure", "decoder_step", "1", "p50_ms")),
        Metric("caption_p50_ms_1", "caption p50 ms", "ms", "lower", ("measure", "caption", "1", "p50_ms")),
        Metric("caption_p95_ms_1", "caption p95 ms", "ms", "lower", ("measure", "caption", "1", "p95_ms")),
        Metric("captions_per_s_1", "captions/s", "1/s", "higher", ("measure", "caption", "1", "captions_per_s")),
        Metric("encoder_ms_max", "encoder ms", "ms", "lower", ("measure", "encoder", b, "p50_ms")),
        Metric("step_ms_max", "step ms", "ms", "lower", ("measure", "decoder_step", b, "p50_ms")),
        Metric("caption_ms_max", "ms/caption", "ms", "lower", ("measure", "caption", b, "ms_per_caption")),
        Metric("captions_per_s_max", "captions/s", "1/s", "higher", ("measure", "caption", b, "captions_per_s")),
    ] + process_metrics()


def classifier_metrics(lengths, opt):
    """The classifier's figures: batch-1 latency per T, the largest batch at the typical T, process."""
    metrics = [Metric("latency_ms_T{}".format(t), "T={} ms".format(t), "ms", "lower",
                      ("measure", "batch1", str(t), "p50_ms")) for t in lengths]
    metrics += [
        Metric("latency_p95_ms_opt", "T={} p95 ms".format(opt), "ms", "lower",
               ("measure", "batch1", str(opt), "p95_ms")),
        Metric("batch_ms_max", "batch ms", "ms", "lower", ("measure", "max_batch", "stats", "p50_ms")),
        Metric("sequences_per_s_max", "seq/s", "1/s", "higher", ("measure", "max_batch", "stats", "sequences_per_s")),
    ]
    return metrics + process_metrics()


def metrics_of(run):
    """The metric list for the run's family."""
    if run["family"] == "captioner":
        return captioner_metrics(run["max_batch"])
    return classifier_metrics(run["lengths"], run["opt_T"])


def ratio(metric, value, base):
    """How many times better ``value`` is than ``base`` (None when either is missing or zero)."""
    if value is None or base is None or value <= 0 or base <= 0:
        return None
    return base / value if metric.better == "lower" else value / base


def _find(configs, name):
    for entry in configs:
        if entry["name"] == name and "error" not in entry:
            return entry
    return None


# -- distance to the limit -------------------------------------------------------------------------------
def _limit_points(run):
    """``[(label, flops key, result path)]`` of the timings compared with the FLOP floor."""
    b = str(run["max_batch"])
    if run["family"] == "captioner":
        return [("decoder step b1", "decoder_step@1", ("measure", "decoder_step", "1", "p50_ms")),
                ("decoder step b" + b, "decoder_step@" + b, ("measure", "decoder_step", b, "p50_ms")),
                ("encoder b1", "encoder@1", ("measure", "encoder", "1", "p50_ms")),
                ("encoder b" + b, "encoder@" + b, ("measure", "encoder", b, "p50_ms"))]
    opt = run["opt_T"]
    return [("model b1 T={}".format(opt), "model@1,T={}".format(opt), ("measure", "batch1", str(opt), "p50_ms")),
            ("model b{} T={}".format(b, opt), "model@{},T={}".format(b, opt),
             ("measure", "max_batch", "stats", "p50_ms"))]


def distance(flops, p50_ms, peak_gflops, shape_gflops=None):
    """Achieved throughput of ``flops`` in ``p50_ms`` against the measured rates.

    Returns ``{flops, p50_ms, gflops, fraction_of_peak, floor_ms, x_floor}`` and, with
    ``shape_gflops``, ``shape_floor_ms`` and ``x_shape_floor``; ``x_floor`` is how many times its
    FLOP floor (``flops`` at the peak matmul rate) the measured latency is.
    """
    gflops = flops / (p50_ms * 1e-3) / 1e9
    floor_ms = flops / (peak_gflops * 1e9) * 1e3
    out = {"flops": flops, "p50_ms": p50_ms, "gflops": gflops, "fraction_of_peak": gflops / peak_gflops,
           "floor_ms": floor_ms, "x_floor": p50_ms / floor_ms}
    if shape_gflops:
        out["shape_floor_ms"] = flops / (shape_gflops * 1e9) * 1e3
        out["x_shape_floor"] = p50_ms / out["shape_floor_ms"]
    return out


def _shape_rate(run):
    shapes = (run.get("limit") or {}).get("shapes") or []
    return shapes[0]["gflops"] if shapes and "gflops" in shapes[0] else None


def limits_of(entry, run):
    """``{label: distance}`` of one configuration (graphs without a FLOP count are left out)."""
    peak = (run.get("limit") or {}).get("peak_gflops")
    if not peak:
        return {}
    shape_rate = _shape_rate(run)
    out = collections.OrderedDict()
    for index, (label, key, path) in enumerate(_limit_points(run)):
        count = run["flops"].get(key)
        p50 = _get(entry, path)
        if count is None or p50 is None:
            continue
        out[label] = distance(count["flops"], p50, peak, shape_rate if index == 0 else None)
    return out


# -- targets -----------------------------------------------------------------------------------------------
def _target(text, value, threshold, reached, unit="x"):
    return {"target": text, "value": value, "threshold": threshold, "unit": unit,
            "reached": None if value is None else bool(reached)}


def targets_of(run):
    """The captioner targets (batch 1, ONNX Runtime FP32 against PyTorch eager), measured, never asserted."""
    configs = run["configurations"]
    ort = _find(configs, "onnxruntime-fp32")
    if run["family"] != "captioner" or ort is None:
        return []
    torch = _find(configs, BASELINE)
    naive = _find(configs, REPROJECT)
    out = []
    caption = lambda e: _get(e, ("measure", "caption", "1", "p50_ms")) if e else None  # noqa: E731
    rss = lambda e: _get(e, ("cold", "peak_rss_mb")) if e else None  # noqa: E731
    cold = lambda e: _get(e, ("cold", "cold_start_s")) if e else None  # noqa: E731

    def times(base, value):
        return base / value if base and value else None

    value = times(caption(torch), caption(ort))
    out.append(_target("per caption >= 3x faster than PyTorch eager (same algorithm)", value, 3.0,
                       value is not None and value >= 3.0))
    value = times(caption(naive), caption(ort))
    out.append(_target("per caption >= 5x faster than PyTorch eager (re-projecting)", value, 5.0,
                       value is not None and value >= 5.0))
    value = rss(ort) / rss(torch) if rss(ort) and rss(torch) else None
    out.append(_target("peak RSS <= 1/4 of the PyTorch process", value, 0.25, value is not None and value <= 0.25,
                       unit="fraction"))
    value = times(cold(torch), cold(ort))
    out.append(_target("cold start >= 5x faster than PyTorch", value, 5.0, value is not None and value >= 5.0))
    step = (ort.get("limit") or {}).get("decoder step b1")
    value = step["x_floor"] if step else None
    out.append(_target("decoder step (b1) within 2x of its FLOP floor at the peak matmul rate", value, 2.0,
                       value is not None and value <= 2.0, unit="x floor"))
    value = step.get("x_shape_floor") if step else None
    out.append(_target("decoder step (b1) within 2x of one matmul as big as the step", value, 2.0,
                       value is not None and value <= 2.0, unit="x floor"))
    return out


# -- assembling ----------------------------------------------------------------------------------------------
def _agreement(run, entry, reference):
    if reference is None or "measure" not in entry or entry is reference:
        return None
    if run["family"] == "captioner":
        mine, theirs = entry["measure"].get("captions"), reference["measure"].get("captions")
    else:
        mine, theirs = entry["measure"].get("labels"), reference["measure"].get("labels")
        mine, theirs = [mine[k] for k in sorted(mine)], [theirs[k] for k in sorted(theirs)]
    if not mine or not theirs:
        return None
    return {"same": sum(1 for a, b in zip(mine, theirs) if a == b), "of": len(theirs), "reference": reference["name"]}


def finish(run):
    """Add figures, ratios, limits, agreement and targets to the raw ``run`` (returned, JSON-ready)."""
    metrics = metrics_of(run)
    configs = run["configurations"]
    base = _find(configs, BASELINE)
    naive = _find(configs, REPROJECT)
    reference = base or _find(configs, "onnxruntime-fp32")
    for entry in configs:
        entry["figures"] = collections.OrderedDict((m.key, _get(entry, m.path)) for m in metrics)
        entry["vs_pytorch"] = collections.OrderedDict(
            (m.key, ratio(m, entry["figures"][m.key], _get(base, m.path)) if base else None) for m in metrics)
        if naive is not None:
            entry["vs_reproject"] = collections.OrderedDict(
                (m.key, ratio(m, entry["figures"][m.key], _get(naive, m.path))) for m in metrics)
        entry["limit"] = limits_of(entry, run) if "measure" in entry else {}
        entry["agreement"] = _agreement(run, entry, reference)
    run["baseline"] = BASELINE if base else None
    run["targets"] = targets_of(run)
    notes = list(run.get("notes", []))
    for entry in configs:
        for note in entry.get("notes", []):
            notes.append("{}: {}".format(entry["name"], note))
    notes += [s["reason"] if s["name"] == "tensorrt" else "{}: {}".format(s["name"], s["reason"])
              for s in run.get("skipped", [])]
    run["notes"] = notes
    return run


# -- text -------------------------------------------------------------------------------------------------------
def _number(value):
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return "{:.0f}".format(value)
    if magnitude >= 10:
        return "{:.1f}".format(value)
    if magnitude >= 1:
        return "{:.2f}".format(value)
    return "{:.3f}".format(value)


def _cell(value, times):
    if value is None:
        return "-"
    if times is None:
        return _number(value)
    return "{} (x{:.1f})".format(_number(value), times) if times < 100 else "{} (x{:.0f})".format(_number(value), times)


def format_table(header, rows):
    """Columns separated by two spaces; the first left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]

    def line(row):
        cells = [str(row[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(row[1:], widths[1:])]
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _figure_table(run, metrics, title):
    rows = []
    for entry in run["configurations"]:
        if "error" in entry:
            rows.append([entry["label"]] + ["-"] * (len(metrics) - 1) + ["FAILED"])
            continue
        rows.append([entry["label"]] + [_cell(entry["figures"][m.key], entry["vs_pytorch"].get(m.key)
                                              if entry["name"] != BASELINE else None) for m in metrics])
    return title + "\n" + format_table(["configuration"] + [m.label for m in metrics], rows)


def _limit_table(run):
    points = [(label, key) for label, key, _ in _limit_points(run) if key in run["flops"]]
    if not points or not (run.get("limit") or {}).get("peak_gflops"):
        return ""
    first = points[0][0]
    with_shape = any("x_shape_floor" in (e.get("limit") or {}).get(first, {}) for e in run["configurations"])
    rows = []
    for entry in run["configurations"]:
        if not entry.get("limit"):
            continue
        row = [entry["label"]]
        for label, _ in points:
            point = entry["limit"].get(label)
            row.append("-" if point is None else "{} GF/s {:.0%} x{:.1f}".format(
                _number(point["gflops"]), point["fraction_of_peak"], point["x_floor"]))
        if with_shape:
            point = entry["limit"].get(first, {})
            row.append("x{:.1f}".format(point["x_shape_floor"]) if "x_shape_floor" in point else "-")
        rows.append(row)
    header = ["configuration"] + [label for label, _ in points]
    if with_shape:
        header.append("{} / one matmul".format(first))
    return ("distance to the limit: achieved GFLOP/s, fraction of the peak matmul rate, latency / FLOP floor at that "
            "rate;\nlast column: latency / time of one matmul with as many multiply-adds\n" +
            format_table(header, rows))


def _header(run):
    machine = run["machine"]
    versions = dict(machine["versions"])
    for entry in run["configurations"]:
        versions.update(_get(entry, ("measure", "versions")) or {})
    lines = [
        "jetcap bench {} ({}): {} threads, medians of {} repetitions after {} warm-up, best of {} round(s), "
        "{} cold start(s) per round".format(run["bundle"], run["family"], run["threads"], run["repeat"], run["warmup"],
                                            run.get("rounds", 1), run["cold_runs"]),
        "machine: {}, {} CPUs, {:.1f} GiB; {}".format(
            machine["cpu"], machine["cpus"], machine["memory_total_mb"] / 1024.0,
            ", ".join("{} {}".format(k, versions[k]) for k in sorted(versions))),
    ]
    limit = run.get("limit") or {}
    if run.get("device", "cpu") != "cpu":
        there = [label for kind, label in (("pytorch", "PyTorch"), ("onnxruntime", "ONNX Runtime"), ("tensorrt",
                 "TensorRT")) if any(c["kind"].startswith(kind) for c in run["configurations"])]
        lines.append("device: {}{}: {} ran there, float32 math {}; the matmul limit is the GPU's".format(
            run["device"], " ({})".format(limit["gpu"]) if limit.get("gpu") else "", " and ".join(there),
            run.get("float32_math") or "-"))
    if limit.get("peak_gflops"):
        parts = ["peak {} GFLOP/s".format(_number(limit["peak_gflops"]))]
        for name in ("numpy_peak", "onnxruntime_peak", "torch_peak"):
            if "gflops" in limit.get(name, {}):
                parts.append("{} {} GFLOP/s at {}".format(name.split("_")[0], _number(limit[name]["gflops"]),
                                                          "x".join(str(d) for d in limit[name]["shape"])))
        by = "torch" if limit.get("device") == "cuda" else "onnxruntime"
        for shape in limit.get("shapes", []):
            parts.append("{} {} GFLOP/s at {} (one matmul as big as the graph at batch 1)".format(
                by, _number(shape["gflops"]), "x".join(str(d) for d in shape["shape"])))
        lines.append("matmul limit: " + "; ".join(parts))
    elif limit.get("error"):
        lines.append("matmul limit: not measured: " + limit["error"])
    if run["flops"]:
        lines.append("FLOPs (FP32 graphs): " + ", ".join(
            "{} {}".format(key, _flop_text(run["flops"][key])) for key in sorted(run["flops"], key=_natural)))
    return "\n".join(lines)


def _flop_text(count):
    from jetcap.bench.flops import format_flops

    return format_flops(count["flops"])


def _natural(key):
    """Sort key putting ``model@1,T=20`` before ``model@1,T=128`` (numbers compared as numbers)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", key)]


def format_report(run):
    """The human-readable report: header, figure tables with ratios, limit table, targets, notes."""
    metrics = metrics_of(run)
    parts = [_header(run), "ratios (xN): times better than PyTorch eager, same algorithm (above 1 is better)"
             if run.get("baseline") else "no PyTorch eager configuration ran: no ratios"]
    if run["family"] == "captioner":
        b = run["max_batch"]
        parts.append(_figure_table(run, metrics[:5], "batch 1 (p50 unless noted)"))
        parts.append(_figure_table(run, metrics[5:9], "batch {} (the bundle's largest)".format(b)))
        parts.append(_figure_table(run, metrics[9:], "fresh process: start, import, load and caption one image "
                                                     "(last column: the process that ran every measurement)"))
    else:
        count = len(run["lengths"]) + 1
        parts.append(_figure_table(run, metrics[:count], "batch 1, latency p50 by sequence length T"))
        parts.append(_figure_table(run, metrics[count:count + 3], "batch {} at T={}".format(
            run["max_batch"], run["opt_T"])))
        parts.append(_figure_table(run, metrics[count + 3:], "fresh process: start, import, load and classify one "
                                                             "sequence (last column: the process that ran every "
                                                             "measurement)"))
    limit_table = _limit_table(run)
    if limit_table:
        parts.append(limit_table)
    agreement = [(e["label"], e["agreement"]) for e in run["configurations"] if e.get("agreement")]
    if agreement:
        what = "captions" if run["family"] == "captioner" else "labels"
        parts.append("same {} as {}: ".format(what, agreement[0][1]["reference"]) + "; ".join(
            "{} {}/{}".format(label, a["same"], a["of"]) for label, a in agreement))
    if run["targets"]:
        lines = ["targets (batch 1, ONNX Runtime FP32):"]
        for target in run["targets"]:
            state = "not measured" if target["reached"] is None else ("reached" if target["reached"] else "MISSED")
            value = "-" if target["value"] is None else ("{:.2f}".format(target["value"]) + (
                "x" if target["unit"] == "x" else (" of PyTorch" if target["unit"] == "fraction" else "x floor")))
            lines.append("  {:<78} {:>16}  {}".format(target["target"], value, state))
        parts.append("\n".join(lines))
    failed = [e for e in run["configurations"] if "error" in e]
    notes = ["{} FAILED: {}".format(e["name"], e["error"]) for e in failed] + run["notes"]
    if notes:
        parts.append("notes:\n" + "\n".join("  - " + n for n in notes))
    return "\n\n".join(parts)
