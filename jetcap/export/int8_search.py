"""Accuracy-aware INT8 (Q/DQ): keep in float the layers whose quantization does the most harm.

When the graph with every candidate layer quantized misses its error target on the calibration feeds,
each candidate is quantized **alone** (the rest float) and its error measured against the FP32 graph
on the same feeds; the layers are ranked by that error, and the smallest prefix of the ranking kept in
float that brings the whole graph within the target is found (doubling, then bisection), within a
bound on the share of the candidates' multiply-accumulates left in float.

The error of a graph is one number, the share of the family's INT8 tolerance it uses: the largest over
outputs and feeds of ``(1 - cosine) / (1 - min_cosine)`` and ``max |a - r| / (atol + rtol |r|)``;
<= 1 is what the export gate passes.  Integer outputs (token ids) are left out: they follow the float
scores, which are measured, and near-ties among them would make every layer look harmful.  The Q/DQ form is :func:`jetcap.export.int8.write_qdq`'s
(symmetric, zero points 0, per-channel weights, float biases: what TensorRT 8.2 reads).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from jetcap.export.calibration import ActivationProbe, ActivationRanges
from jetcap.export.int8 import Int8Plan, int8_plan, write_qdq
from jetcap.util.lazy import require

MAX_EVAL_FEEDS = 16


@dataclass
class SearchOptions:
    """Settings of the accuracy search.

    Attributes:
        enabled: run it (else every candidate is quantized, as the plain recipe does).
        max_float_fraction: at most this share of the candidate layers' MACs may be kept float (0..1).
        error_budget: the target, as a share of the family's INT8 tolerance (1.0: the gate itself;
            0.5 leaves half of it as margin for other data).
        max_feeds: evaluate on at most this many calibration feeds.
    """

    enabled: bool = True
    max_float_fraction: float = 0.25
    error_budget: float = 1.0
    max_feeds: int = MAX_EVAL_FEEDS


@dataclass
class SearchResult:
    """What the search decided for one graph (``manifest_entry`` is what the manifest records)."""

    float_nodes: List[str]
    entry: Dict[str, Any]
    passed: bool


class GraphErrorMeter:
    """The error (share of the tolerance used) of candidate INT8 graphs of one FP32 graph on fixed feeds."""

    def __init__(self, fp32_path: Path, feeds: Sequence[Dict[str, np.ndarray]], tolerance):
        ort = require("onnxruntime")
        self.ort = ort
        self.feeds = list(feeds)
        self.tolerance = tolerance
        session = self._session(fp32_path)
        self.outputs = [o.name for o in session.get_outputs()]
        self.reference = [dict(zip(self.outputs, session.run(None, feed))) for feed in self.feeds]

    def _session(self, path: Path):
        return self.ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def measure(self, path: Path) -> Dict[str, Any]:
        """``{"error": share of the tolerance, "worst": output, "cosine": {output: lowest}}`` of ``path``."""
        from jetcap.validate.metrics import compare_arrays

        tol = self.tolerance
        session = self._session(path)
        worst, worst_output = 0.0, None
        cosines: Dict[str, float] = {}
        for feed, reference in zip(self.feeds, self.reference):
            actual = dict(zip(self.outputs, session.run(None, feed)))
            for name in self.outputs:
                result = compare_arrays(actual[name], reference[name], atol=tol.atol, rtol=tol.rtol,
                                        min_cosine=tol.min_cosine)
                if result.exact:  # token ids (top-k): they follow the float outputs, which are measured
                    continue
                if result.nonfinite or result.cosine is None:
                    error = float("inf")
                else:
                    error = max((1.0 - result.cosine) / max(1.0 - tol.min_cosine, 1e-12),
                                result.max_tolerance_ratio or 0.0)
                if result.cosine is not None:
                    cosines[name] = min(cosines.get(name, 1.0), float(result.cosine))
                if worst_output is None or error > worst:
                    worst, worst_output = error, name
        return {"error": float(worst), "worst": worst_output, "cosine": {k: round(v, 6) for k, v in cosines.items()}}


def layer_macs(fp32_path: Path, nodes: Sequence[str], feed: Dict[str, np.ndarray]) -> Dict[str, float]:
    """Multiply-accumulates of each of ``nodes`` (Conv/Gemm/MatMul with a weight) on ``feed``, per feed:
    output elements x (weight elements / output channels)."""
    onnx = require("onnx")
    model = onnx.load(str(fp32_path))
    weights = {t.name: t for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    outputs = {name: by_name[name].output[0] for name in nodes}
    values = ActivationProbe(fp32_path, list(outputs.values())).run(feed)
    macs = {}
    for name in nodes:
        node = by_name[name]
        weight = next((weights[i] for i in node.input[1:2] if i in weights), None)
        if weight is None:
            weight = next((weights[i] for i in node.input if i in weights), None)
        out = values[outputs[name]]
        if weight is None or out.size == 0:
            macs[name] = 0.0
            continue
        size = float(np.prod(weight.dims))
        if node.op_type == "Conv":
            channels = out.shape[1]
        else:
            channels = out.shape[-1]
        macs[name] = float(out.size) * size / max(channels, 1)
    return macs


def search_float_layers(fp32_path: Path, feeds: Sequence[Dict[str, np.ndarray]], ranges: ActivationRanges,
                        plan: Int8Plan, tolerance, options: SearchOptions,
                        log: Callable[[str], None] = lambda message: None) -> SearchResult:
    """Which of ``plan.candidates`` to keep float so that the INT8 graph of ``fp32_path`` meets
    ``options.error_budget`` of ``tolerance`` on ``feeds`` (see the module docstring).

    Args:
        fp32_path: the FP32 graph.
        feeds: calibration feeds (the first ``options.max_feeds`` are the evaluation set).
        ranges: its activation ranges (one calibration for every trial graph).
        plan: the INT8 candidates and the nodes float by rule.
        tolerance: the family's INT8 tolerance (``atol``, ``rtol``, ``min_cosine``).
        options: the search's bound and target.
        log: progress lines.
    Returns:
        the float nodes chosen, whether the target was met, and the manifest entry (target, error with
        every candidate quantized, the ranking's top entries, what stayed float and why, MAC shares).
    """
    started = time.monotonic()
    feeds = list(feeds)[:max(1, options.max_feeds)]
    meter = GraphErrorMeter(fp32_path, feeds, tolerance)
    forced = sorted(plan.forced_float)
    target = float(options.error_budget)
    evaluations = 0
    name = Path(fp32_path).stem

    with tempfile.TemporaryDirectory(prefix="jetcap-int8-search-") as tmp:
        trial = Path(tmp) / "trial.onnx"

        def error_with(float_nodes: Sequence[str]) -> Dict[str, Any]:
            nonlocal evaluations
            keep = set(float_nodes)
            write_qdq(fp32_path, trial, ranges, [n for n in plan.candidates if n not in keep],
                      forced + sorted(keep), feeds=feeds[:1])
            evaluations += 1
            return meter.measure(trial)

        full = error_with([])
        entry: Dict[str, Any] = {
            "target_error": target, "error_all_int8": _r(full["error"]), "worst_output_all_int8": full["worst"],
            "candidates": len(plan.candidates), "eval_feeds": len(feeds),
            "max_float_fraction": options.max_float_fraction,
            "forced_float": [{"node": n, "reason": plan.forced_float[n]} for n in forced],
        }
        if full["error"] <= target or not options.enabled or not plan.candidates:
            entry.update(searched=False, kept_float=[], float_mac_fraction=0.0, error=_r(full["error"]),
                         evaluations=evaluations, seconds=round(time.monotonic() - started, 2))
            return SearchResult(float_nodes=[], entry=entry, passed=full["error"] <= target)

        log("int8 search {}: every candidate quantized uses {:.2f} of the tolerance ({}); ranking {} layers".format(
            name, full["error"], full["worst"], len(plan.candidates)))
        macs = layer_macs(fp32_path, plan.candidates, feeds[0])
        total = sum(macs.values()) or 1.0
        alone = {}
        for node in plan.candidates:
            alone[node] = error_with([n for n in plan.candidates if n != node])
        ranking = sorted(plan.candidates, key=lambda n: -alone[n]["error"])
        # the longest prefix of the ranking within the MAC bound
        limit, share = 0, 0.0
        for node in ranking:
            if share + macs[node] / total > options.max_float_fraction + 1e-12:
                break
            share += macs[node] / total
            limit += 1
        tried: Dict[int, Dict[str, Any]] = {0: full}

        def at(k: int) -> Dict[str, Any]:
            if k not in tried:
                tried[k] = error_with(ranking[:k])
            return tried[k]

        best_k = None
        k, low = 1, 0
        while k <= limit:  # doubling: the first prefix length that meets the target
            if at(k)["error"] <= target:
                best_k = k
                break
            low = k
            k *= 2
        if best_k is None and limit and low < limit and at(limit)["error"] <= target:
            best_k = limit
        if best_k is not None:  # bisection between the last miss and the first hit
            high = best_k
            while high - low > 1:
                mid = (low + high) // 2
                if at(mid)["error"] <= target:
                    high = mid
                else:
                    low = mid
            best_k = high
        chosen_k = best_k if best_k is not None else limit
        final = at(chosen_k) if chosen_k else full
        chosen = ranking[:chosen_k]
        rank = {n: i + 1 for i, n in enumerate(ranking)}
        entry.update(
            searched=True, passed=best_k is not None, error=_r(final["error"]), worst_output=final["worst"],
            cosine=final["cosine"],
            kept_float=[{"node": n, "mac_fraction": _r(macs[n] / total), "error_quantized_alone": _r(alone[n]["error"]),
                         "worst_output_alone": alone[n]["worst"], "rank": rank[n],
                         "reason": "quantized alone it used {:.3g} of the tolerance ({}), rank {} of {}".format(
                             alone[n]["error"], alone[n]["worst"], rank[n], len(ranking))} for n in chosen],
            float_mac_fraction=_r(sum(macs[n] for n in chosen) / total),
            ranking=[{"node": n, "error_quantized_alone": _r(alone[n]["error"])} for n in ranking[:10]],
            evaluations=evaluations, seconds=round(time.monotonic() - started, 2))
        if best_k is None:
            entry["note"] = ("no prefix of the ranking within {:.0%} of the MACs meets the target; the most it "
                             "allows ({} layers) gives {:.3g}".format(options.max_float_fraction, limit,
                                                                      final["error"]))
        log("int8 search {}: {} layer(s) kept float ({:.1%} of the MACs), error {:.2f} of the tolerance{} "
            "({} graphs, {:.1f} s)".format(name, len(chosen), entry["float_mac_fraction"], final["error"],
                                           "" if best_k is not None else " - target NOT met", evaluations,
                                           entry["seconds"]))
        return SearchResult(float_nodes=chosen, entry=entry, passed=best_k is not None)


def _r(value: float) -> Optional[float]:
    if value is None or not np.isfinite(value):
        return None
    return round(float(value), 6)


def plan_for(fp32_path: Path, keep_float_patterns: Sequence[str]) -> Int8Plan:
    """:func:`jetcap.export.int8.int8_plan` of the file ``fp32_path``."""
    onnx = require("onnx")
    return int8_plan(onnx.load(str(fp32_path)), keep_float_patterns)


def int8_variant(fp32_files: Dict[str, Path], graph_names: Sequence[str], calibration: Dict[str, List[Dict]],
                 keep_float_patterns: Sequence[str], tolerance, opts, out_dir: Path,
                 log: Callable[[str], None] = lambda message: None):
    """The INT8 (Q/DQ) files of every graph and the manifest's record of how they were made.

    Per graph: calibrate by ``opts.calibration_method`` on its calibration feeds, run the accuracy
    search (``opts.int8_search``, bounded by ``opts.int8_max_float_fraction``, target
    ``opts.int8_error_budget`` of ``tolerance``), write ``<graph>.int8.onnx`` into ``out_dir``.

    Returns:
        ``(files, details)``: ``{graph: path}`` and the variant's ``notes``/``calibration``/``quantization``.
    """
    from jetcap.export.calibration import calibrate
    from jetcap.export.int8 import QUANTIZED_OPS, write_qdq

    search = SearchOptions(enabled=opts.int8_search, max_float_fraction=opts.int8_max_float_fraction,
                           error_budget=opts.int8_error_budget)
    files: Dict[str, Path] = {}
    notes: List[str] = []
    calibrated: Dict[str, Any] = {}
    searched: Dict[str, Any] = {}
    for name in graph_names:
        src = fp32_files[name]
        feeds = list(calibration[name])
        if not feeds:
            from jetcap.export.onnx_graph import ExportError

            raise ExportError("no calibration data for {}".format(src.name))
        t0 = time.monotonic()
        ranges = calibrate(src, feeds, opts.calibration_method, op_types=QUANTIZED_OPS)
        calibrated[name] = dict(ranges.summary(), seconds=round(time.monotonic() - t0, 2))
        plan = plan_for(src, keep_float_patterns)
        result = search_float_layers(src, feeds, ranges, plan, tolerance, search, log=log)
        searched[name] = result.entry
        dst = Path(out_dir) / "{}.int8.onnx".format(name)
        keep = sorted(plan.forced_float) + list(result.float_nodes)
        write_qdq(src, dst, ranges, [n for n in plan.candidates if n not in keep], keep, feeds=feeds[:1])
        files[name] = dst
        notes.append("int8 {}: Q/DQ symmetric per-channel, {} calibration over {} feeds, {} of {} candidate "
                     "layers quantized, {} float by rule, {} kept float by the accuracy search".format(
                         name, ranges.method.value, ranges.feeds, len(plan.candidates) - len(result.float_nodes),
                         len(plan.candidates), len(plan.forced_float), len(result.float_nodes)))
    data = str(opts.calibration_data) if opts.calibration_data else "built-in samples"
    details = {
        "notes": notes,
        "calibration": {"method": opts.calibration_method.value, "samples": opts.calibration_samples,
                        "data": data, "real_data": opts.calibration_data is not None, "graphs": calibrated},
        "quantization": {"format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric per-channel",
                         "biases": "float", "ops": list(QUANTIZED_OPS), "kept_float": list(keep_float_patterns),
                         "search": {"enabled": search.enabled, "max_float_fraction": search.max_float_fraction,
                                    "error_budget": search.error_budget, "graphs": searched},
                         "float_layers": {n: [k["node"] for k in searched[n].get("kept_float", [])]
                                          for n in graph_names}},
    }
    return files, details
