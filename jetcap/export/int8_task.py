"""The INT8 search's task step: keep more layers float until the variant gives PyTorch's captions / labels.

A variant within the tensor tolerance can still change what the model *says*: on the COCO-sized
captioner the tensor-level search passed a variant whose greedy captions differed from PyTorch's on 61 %
of 200 images (docs/VALIDATION.md), because a small error in the encoder's features moves the argmax of
every later step.  So after the tensor-level search (:func:`jetcap.export.int8_search.search_float_layers`)
the variant is run through the family's task checks (``task_check``: the same checks and thresholds
``jetcap validate`` applies).  It aims at the *search's* task inputs: the first calibration inputs when
the bundle's own task inputs (the verdict's) are held out from calibration, since a search that keeps
layers float until given inputs pass is fitted to them (:func:`jetcap.export.tasks.search_paths`); the
export's verdict is then the task check on the held-out inputs.  While they fail, the graph that does the most
harm to the task (each graph's INT8 version measured alone, the others FP32) keeps a longer prefix of its
harm ranking float: the prefix length doubles until the checks pass, then is bisected back down, within
the same bound on the MACs kept float.  When that graph is at its bound, the next one is extended.

The score compared between trials is the number of task inputs whose result differs from PyTorch's
(greedy and beam captions counted separately), so the search also knows "better" from "worse" on the way.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List

from jetcap.export.int8_search import GraphQuantizer, SearchOptions


def extend_for_task(quantizers: Dict[str, GraphQuantizer], float_nodes: Dict[str, List[str]],
                    files: Dict[str, Path], fp32_files: Dict[str, Path], task_check: Callable[[Dict[str, Path]], Any],
                    options: SearchOptions, log: Callable[[str], None] = lambda message: None) -> Dict[str, Any]:
    """Extend ``float_nodes`` (updated in place, with the INT8 ``files`` rewritten) until ``task_check``
    passes or every graph is at its bound; returns the manifest's record of the step."""
    started = time.monotonic()
    evaluations = [0]

    def check(trial_files):
        evaluations[0] += 1
        return task_check(trial_files)

    outcome = check(files)
    entry: Dict[str, Any] = {"initial": outcome.summary, "passed_initially": bool(outcome.passed)}
    if outcome.passed or not options.enabled:
        entry.update(passed=bool(outcome.passed), result=outcome.summary, evaluations=evaluations[0],
                     seconds=round(time.monotonic() - started, 2))
        return entry
    log("int8 task check: {} - keeping more layers float".format(outcome.summary))
    graphs = [g for g in quantizers if len(float_nodes[g]) < quantizers[g].limit()]
    harm = {}
    if len(graphs) > 1:  # which graph's INT8 hurts the task most: each alone, the others FP32
        for graph in graphs:
            alone = check(dict(fp32_files, **{graph: files[graph]}))
            harm[graph] = alone.score
        entry["harm_alone"] = {g: harm[g] for g in graphs}
    for graph in sorted(graphs, key=lambda g: -harm.get(g, 0)):
        q = quantizers[graph]
        ranking, limit = q.ranking(), q.limit()
        low = len(float_nodes[graph])
        if float_nodes[graph] != ranking[:low]:  # the tensor search keeps a prefix of the same ranking
            low = 0
        k, passed_at = low, None
        while k < limit:
            k = min(limit, max(k + 1, 2 * k))
            q.write(ranking[:k], files[graph])
            outcome = check(files)
            log("int8 task check: {} with {} layer(s) float: {}".format(graph, k, outcome.summary))
            if outcome.passed:
                passed_at = k
                break
            low = k
        if passed_at is None:
            float_nodes[graph] = ranking[:limit]  # at its bound: the next graph is extended on top of it
            continue
        high = passed_at
        while high - low > 1:  # bisection: the shortest prefix that still passes
            mid = (low + high) // 2
            q.write(ranking[:mid], files[graph])
            trial = check(files)
            if trial.passed:
                high, outcome = mid, trial
            else:
                low = mid
        float_nodes[graph] = ranking[:high]
        q.write(float_nodes[graph], files[graph])  # bisection's last trial may have been a shorter prefix
        break
    entry.update(passed=bool(outcome.passed), result=outcome.summary,
                 float_layers={g: len(float_nodes[g]) for g in quantizers},
                 float_mac_fraction={g: round(quantizers[g].mac_fraction(float_nodes[g]), 6)
                                     if quantizers[g].macs else 0.0 for g in quantizers},
                 evaluations=evaluations[0], seconds=round(time.monotonic() - started, 2))
    if not outcome.passed:
        entry["note"] = "the task checks still fail with every graph at its bound of {:.0%} of the MACs float".format(
            options.max_float_fraction)
    log("int8 task check: {} ({} runs, {:.1f} s)".format(
        "passed" if outcome.passed else "still failing: " + outcome.summary, evaluations[0], entry["seconds"]))
    return entry
