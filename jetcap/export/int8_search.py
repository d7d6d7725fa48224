"""Accuracy-aware INT8 (Q/DQ): keep in float the layers whose quantization does the most harm.

When the graph with every candidate layer quantized misses its error target on the calibration feeds,
each candidate is quantized **alone** (the rest float) and its error measured against the FP32 graph
on the same feeds; the layers are ranked by that error, and the smallest prefix of the ranking kept in
float that brings the whole graph within the target is found (doubling, then bisection), within a
bound on the share of the candidates' multiply-accumulates left in float.  When no prefix within the
bound does, the layers are ranked again by error per multiply-accumulate (the cheap harmful layers
first: more of them fit in the bound) and the prefix search is repeated; the ranking used is recorded.

The error of a graph is one number, the share of the family's INT8 tolerance it uses: the largest over
outputs and feeds of ``(1 - cosine) / (1 - min_cosine)`` and of the element rule's share
(``TensorComparison.tolerance_used``: ``max |a - r| / (atol + rtol |r|)`` past the elements the
tolerance lets out); <= 1 is what the export gate passes.  Integer outputs (token ids) are left out: they follow the float
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
from jetcap.runtime.backends.onnxruntime import make_session, variant_options
from jetcap.util.lazy import require

MAX_EVAL_FEEDS = 16
HARM = "harm"                  # ranking orders (GraphQuantizer.ranking)
HARM_PER_MAC = "harm per MAC"


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
        # as the int8 variant is validated and run (Q/DQ unfused, see onnxruntime.fuses_qdq)
        return make_session(path, providers=["CPUExecutionProvider"], **variant_options("int8"))

    def measure(self, path: Path) -> Dict[str, Any]:
        """``{"error": share of the tolerance, "worst": output, "cosine": {output: lowest}}`` of ``path``."""
        from jetcap.validate.metrics import compare_with

        tol = self.tolerance
        session = self._session(path)
        worst, worst_output = 0.0, None
        cosines: Dict[str, float] = {}
        for feed, reference in zip(self.feeds, self.reference):
            actual = dict(zip(self.outputs, session.run(None, feed)))
            for name in self.outputs:
                result = compare_with(actual[name], reference[name], tol)
                if result.exact:  # token ids (top-k): they follow the float outputs, which are measured
                    continue
                if result.nonfinite or result.cosine is None:
                    error = float("inf")
                else:
                    error = max((1.0 - result.cosine) / max(1.0 - tol.min_cosine, 1e-12),
                                result.tolerance_used or 0.0)
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


class GraphQuantizer:
    """One FP32 graph's INT8 trial graphs: writes them with chosen layers float, measures their error,
    ranks the candidate layers by the harm each does quantized alone (computed once, on first use)."""

    def __init__(self, fp32_path: Path, feeds: Sequence[Dict[str, np.ndarray]], ranges: ActivationRanges,
                 plan: Int8Plan, tolerance, options: SearchOptions, workdir: Path):
        self.fp32_path = Path(fp32_path)
        self.name = self.fp32_path.stem
        self.feeds = list(feeds)[:max(1, options.max_feeds)]
        self.ranges = ranges
        self.plan = plan
        self.options = options
        self.meter = GraphErrorMeter(fp32_path, self.feeds, tolerance)
        self.forced = sorted(plan.forced_float)
        self.trial = Path(workdir) / "{}.trial.onnx".format(self.name)
        self.evaluations = 0
        self.alone: Optional[Dict[str, Dict[str, Any]]] = None
        self.macs: Dict[str, float] = {}
        self.order = HARM  # how :meth:`ranking` orders the candidates (the search may switch it)

    def write(self, float_nodes: Sequence[str], dst: Path) -> Path:
        """The Q/DQ graph with ``float_nodes`` (and the plan's float-by-rule nodes) left float, at ``dst``."""
        keep = set(float_nodes)
        write_qdq(self.fp32_path, dst, self.ranges, [n for n in self.plan.candidates if n not in keep],
                  self.forced + sorted(keep), feeds=self.feeds[:1])
        return dst

    def error(self, float_nodes: Sequence[str]) -> Dict[str, Any]:
        """:meth:`GraphErrorMeter.measure` of the graph with ``float_nodes`` float."""
        self.evaluations += 1
        return self.meter.measure(self.write(float_nodes, self.trial))

    def ranking(self) -> List[str]:
        """The candidates in :attr:`order`: most harmful quantized alone first
        (``HARM``), or most harm per multiply-accumulate first (``HARM_PER_MAC``: the cheap harmful
        layers before the expensive ones, a knapsack's greedy order).  Fills ``alone`` and ``macs``."""
        candidates = self.plan.candidates
        if self.alone is None:
            self.macs = layer_macs(self.fp32_path, candidates, self.feeds[0])
            self.alone = {node: self.error([n for n in candidates if n != node]) for node in candidates}
        if self.order == HARM_PER_MAC:
            return sorted(candidates, key=lambda n: -self.alone[n]["error"] / max(self.macs.get(n, 0.0), 1.0))
        return sorted(candidates, key=lambda n: -self.alone[n]["error"])

    def mac_fraction(self, nodes: Sequence[str]) -> float:
        total = sum(self.macs.values()) or 1.0
        return sum(self.macs[n] for n in nodes) / total

    def limit(self) -> int:
        """The longest prefix of :meth:`ranking` within the bound on the MACs kept float."""
        limit, share = 0, 0.0
        for node in self.ranking():
            share_node = self.mac_fraction([node])
            if share + share_node > self.options.max_float_fraction + 1e-12:
                break
            share += share_node
            limit += 1
        return limit

    def kept_entry(self, node: str, why: str = "") -> Dict[str, Any]:
        """The manifest's record of a layer kept float (after :meth:`ranking`)."""
        ranking = self.ranking()
        rank = ranking.index(node) + 1
        alone = self.alone[node]
        reason = "quantized alone it used {:.3g} of the tolerance ({}), rank {} of {} by {}".format(
            alone["error"], alone["worst"], rank, len(ranking), self.order)
        return {"node": node, "mac_fraction": _r(self.mac_fraction([node])), "error_quantized_alone": _r(alone["error"]),
                "worst_output_alone": alone["worst"], "rank": rank, "reason": why + reason}


def search_float_layers(fp32_path: Path, feeds: Sequence[Dict[str, np.ndarray]], ranges: ActivationRanges,
                        plan: Int8Plan, tolerance, options: SearchOptions,
                        log: Callable[[str], None] = lambda message: None,
                        quantizer: Optional[GraphQuantizer] = None) -> SearchResult:
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
        quantizer: the :class:`GraphQuantizer` to use (and keep, with its ranking, for a later search
            step); default a new one in a temporary folder.
    Returns:
        the float nodes chosen (a prefix of the ranking), whether the target was met, and the manifest
        entry (target, error with every candidate quantized, the ranking's top entries, what stayed float
        and why, MAC shares).
    """
    if quantizer is None:
        with tempfile.TemporaryDirectory(prefix="jetcap-int8-search-") as tmp:
            return search_float_layers(fp32_path, feeds, ranges, plan, tolerance, options, log,
                                       GraphQuantizer(fp32_path, feeds, ranges, plan, tolerance, options, Path(tmp)))
    started = time.monotonic()
    q = quantizer
    target = float(options.error_budget)
    full = q.error([])
    entry: Dict[str, Any] = {
        "target_error": target, "error_all_int8": _r(full["error"]), "worst_output_all_int8": full["worst"],
        "candidates": len(plan.candidates), "eval_feeds": len(q.feeds),
        "max_float_fraction": options.max_float_fraction,
        "forced_float": [{"node": n, "reason": plan.forced_float[n]} for n in q.forced],
    }
    if full["error"] <= target or not options.enabled or not plan.candidates:
        entry.update(searched=False, kept_float=[], float_mac_fraction=0.0, error=_r(full["error"]),
                     evaluations=q.evaluations, seconds=round(time.monotonic() - started, 2))
        return SearchResult(float_nodes=[], entry=entry, passed=full["error"] <= target)

    log("int8 search {}: every candidate quantized uses {:.2f} of the tolerance ({}); ranking {} layers".format(
        q.name, full["error"], full["worst"], len(plan.candidates)))
    tried: Dict[Any, Dict[str, Any]] = {(): full}

    def at(nodes: Sequence[str]) -> Dict[str, Any]:
        key = tuple(sorted(nodes))
        if key not in tried:
            tried[key] = q.error(list(nodes))
        return tried[key]

    attempts = []
    for order in (HARM, HARM_PER_MAC):
        q.order = order
        ranking, limit = q.ranking(), q.limit()
        best_k = shortest_prefix(lambda k: at(ranking[:k])["error"] <= target, limit)
        chosen_k = best_k if best_k is not None else limit
        attempts.append((best_k is not None, order, ranking[:chosen_k]))
        log("int8 search {}: by {}, {} layer(s) float ({:.1%} of the MACs){}".format(
            q.name, order, chosen_k, q.mac_fraction(ranking[:chosen_k]),
            "" if best_k is not None else ", target not met within the bound"))
        if best_k is not None:
            break  # the second order is tried only when the first misses within the bound
    passing = [a for a in attempts if a[0]]
    passed, order, chosen = passing[0] if passing else min(attempts, key=lambda a: at(a[2])["error"])
    q.order = order
    final = at(chosen)
    entry.update(
        searched=True, passed=passed, ranking_order=order, orders_tried=[a[1] for a in attempts],
        error=_r(final["error"]), worst_output=final["worst"],
        cosine=final["cosine"], kept_float=[q.kept_entry(n) for n in chosen],
        float_mac_fraction=_r(q.mac_fraction(chosen)),
        ranking=[{"node": n, "error_quantized_alone": _r(q.alone[n]["error"]), "mac_fraction": _r(q.mac_fraction([n]))}
                 for n in q.ranking()[:10]],
        evaluations=q.evaluations, seconds=round(time.monotonic() - started, 2))
    if not passed:
        entry["note"] = ("no prefix of either ranking within {:.0%} of the MACs meets the target; the best "
                         "at the bound ({} layers by {}) gives {:.3g}".format(options.max_float_fraction, len(chosen),
                                                                         order, final["error"]))
    log("int8 search {}: {} layer(s) kept float ({:.1%} of the MACs), error {:.2f} of the tolerance{} "
        "({} graphs, {:.1f} s)".format(q.name, len(chosen), entry["float_mac_fraction"], final["error"],
                                       "" if passed else " - target NOT met", q.evaluations,
                                       entry["seconds"]))
    return SearchResult(float_nodes=chosen, entry=entry, passed=passed)


def shortest_prefix(passes: Callable[[int], bool], limit: int) -> Optional[int]:
    """The smallest ``k`` in ``1..limit`` with ``passes(k)``, assuming longer prefixes pass once one does:
    doubling (1, 2, 4, ...; then ``limit``), then bisection between the last miss and the first hit.
    None when ``passes(limit)`` is false (or ``limit`` is 0)."""
    best, low, k = None, 0, 1
    while k <= limit:
        if passes(k):
            best = k
            break
        low, k = k, k * 2
    if best is None:
        if not limit or low >= limit or not passes(limit):
            return None
        best = limit
    high = best
    while high - low > 1:
        mid = (low + high) // 2
        if passes(mid):
            high = mid
        else:
            low = mid
    return high


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
                 log: Callable[[str], None] = lambda message: None,
                 task_check: Optional[Callable[[Dict[str, Path]], Any]] = None):
    """The INT8 (Q/DQ) files of every graph and the manifest's record of how they were made.

    Per graph: calibrate by ``opts.calibration_method`` on its calibration feeds, run the accuracy
    search (``opts.int8_search``, bounded by ``opts.int8_max_float_fraction``, target
    ``opts.int8_error_budget`` of ``tolerance``), write ``<graph>.int8.onnx`` into ``out_dir``.  Then,
    given ``task_check`` (``{graph: file} -> TaskOutcome``, see :mod:`jetcap.export.task_gate`), the
    search goes on until the variant also passes the family's task checks (same captions / labels as
    PyTorch): see :func:`jetcap.export.int8_task.extend_for_task`.

    Returns:
        ``(files, details)``: ``{graph: path}`` and the variant's ``notes``/``calibration``/``quantization``.
    """
    from jetcap.export.calibration import calibrate
    from jetcap.export.int8 import QUANTIZED_OPS
    from jetcap.export.int8_task import extend_for_task

    search = SearchOptions(enabled=opts.int8_search, max_float_fraction=opts.int8_max_float_fraction,
                           error_budget=opts.int8_error_budget)
    files: Dict[str, Path] = {}
    calibrated: Dict[str, Any] = {}
    searched: Dict[str, Any] = {}
    quantizers: Dict[str, GraphQuantizer] = {}
    float_nodes: Dict[str, List[str]] = {}
    task_entry = None
    with tempfile.TemporaryDirectory(prefix="jetcap-int8-search-") as workdir:
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
            quantizers[name] = GraphQuantizer(src, feeds, ranges, plan, tolerance, search, Path(workdir))
            result = search_float_layers(src, feeds, ranges, plan, tolerance, search, log=log,
                                         quantizer=quantizers[name])
            searched[name] = result.entry
            float_nodes[name] = list(result.float_nodes)
            files[name] = quantizers[name].write(float_nodes[name], Path(out_dir) / "{}.int8.onnx".format(name))
        if task_check is not None:
            task_entry = extend_for_task(quantizers, float_nodes, files, fp32_files, task_check, search, log)
            for name, q in quantizers.items():  # the task step's additions, with their reasons
                added = [n for n in float_nodes[name] if n not in {k["node"] for k in searched[name].get("kept_float", [])}]
                if added:
                    searched[name]["kept_float"] = list(searched[name].get("kept_float", [])) + [
                        q.kept_entry(n, why="kept float for the task checks; ") for n in added]
                    searched[name]["float_mac_fraction"] = _r(q.mac_fraction(float_nodes[name]))
    notes = ["int8 {}: Q/DQ symmetric per-channel, {} calibration over {} feeds, {} of {} candidate layers quantized, "
             "{} float by rule, {} kept float by the accuracy search".format(
                 name, quantizers[name].ranges.method.value, quantizers[name].ranges.feeds,
                 len(quantizers[name].plan.candidates) - len(float_nodes[name]), len(quantizers[name].plan.candidates),
                 len(quantizers[name].plan.forced_float), len(float_nodes[name])) for name in graph_names]
    data = str(opts.calibration_data) if opts.calibration_data else "built-in samples"
    details = {
        "notes": notes,
        "calibration": {"method": opts.calibration_method.value, "samples": opts.calibration_samples,
                        "data": data, "real_data": opts.calibration_data is not None, "graphs": calibrated},
        "quantization": {"format": "QDQ", "activations": "int8 symmetric", "weights": "int8 symmetric per-channel",
                         "biases": "float", "ops": list(QUANTIZED_OPS), "kept_float": list(keep_float_patterns),
                         "search": {"enabled": search.enabled, "max_float_fraction": search.max_float_fraction,
                                    "error_budget": search.error_budget, "graphs": searched, "task": task_entry},
                         "float_layers": {n: list(float_nodes[n]) for n in graph_names}},
    }
    return files, details
