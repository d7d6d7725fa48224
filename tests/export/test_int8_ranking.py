"""The INT8 search's prefix search and its two rankings (harm; harm per multiply-accumulate).

The layers' errors are stood in for by an additive model (the error of a graph is the sum of the harm
of its quantized layers): what is tested is the decision procedure, which the export runs on real ONNX
graphs (tests/export/test_int8_search.py, test_user_models.py)."""
from pathlib import Path

import pytest

from jetcap.export.int8 import Int8Plan
from jetcap.export.int8_search import HARM, HARM_PER_MAC, GraphQuantizer, SearchOptions, search_float_layers, \
    shortest_prefix


@pytest.mark.parametrize("first_pass, limit, expected", [(1, 8, 1), (3, 8, 3), (6, 8, 6), (8, 8, 8), (9, 8, None),
                                                         (5, 5, 5), (1, 0, None)])
def test_shortest_prefix_finds_the_first_passing_length(first_pass, limit, expected):
    calls = []

    def passes(k):
        calls.append(k)
        return k >= first_pass

    assert shortest_prefix(passes, limit) == expected
    assert all(1 <= k <= limit for k in calls) and len(calls) <= 2 * max(1, limit).bit_length() + 1


class Additive(GraphQuantizer):
    """A GraphQuantizer whose graphs' error is the sum of the harm of the layers left quantized."""

    def __init__(self, harm, macs, options):
        self.name, self.options, self.forced = "encoder", options, []
        self.plan = Int8Plan(candidates=list(harm))
        self.feeds, self.evaluations, self.order = [{}], 0, HARM
        self.harm = harm
        self.macs = dict(macs)
        self.alone = {n: {"error": h, "worst": "features", "cosine": {}} for n, h in harm.items()}

    def error(self, float_nodes):
        self.evaluations += 1
        return {"error": sum(h for n, h in self.harm.items() if n not in float_nodes), "worst": "features",
                "cosine": {}}


def _search(harm, macs, bound):
    options = SearchOptions(max_float_fraction=bound)
    q = Additive(harm, macs, options)
    return q, search_float_layers(Path("enc.onnx"), [{}], None, q.plan, None, options, quantizer=q)


def test_the_harm_ranking_is_used_when_it_meets_the_target():
    q, result = _search({"a": 0.9, "b": 0.3, "c": 0.1}, {"a": 10, "b": 10, "c": 80}, bound=0.25)
    assert result.passed and result.float_nodes == ["a"]
    assert result.entry["ranking_order"] == HARM and result.entry["orders_tried"] == [HARM]


def test_harm_per_mac_is_tried_when_the_harm_ranking_misses_within_the_bound():
    # "a" does the most harm but holds half the MACs: by harm nothing fits in 25 %; by harm per MAC the two
    # small harmful layers do, and keeping them float meets the target.
    harm = {"a": 0.6, "b": 0.5, "c": 0.45, "d": 0.1}
    q, result = _search(harm, {"a": 50, "b": 5, "c": 5, "d": 40}, bound=0.25)
    assert result.passed and result.float_nodes == ["b", "c"]
    assert result.entry["ranking_order"] == HARM_PER_MAC and result.entry["orders_tried"] == [HARM, HARM_PER_MAC]
    assert result.entry["float_mac_fraction"] == pytest.approx(0.10)
    assert "by harm per MAC" in result.entry["kept_float"][0]["reason"]
    assert q.ranking()[:2] == ["b", "c"]  # the task step extends along the ranking the search chose


def test_the_better_ranking_at_the_bound_is_kept_when_neither_meets_the_target():
    harm = {"a": 0.6, "b": 0.5, "c": 0.45, "d": 0.5}
    q, result = _search(harm, {"a": 50, "b": 5, "c": 5, "d": 40}, bound=0.25)
    assert not result.passed and result.entry["orders_tried"] == [HARM, HARM_PER_MAC]
    assert result.float_nodes == ["b", "c"] and result.entry["error"] == pytest.approx(1.1)
    assert "no prefix of either ranking" in result.entry["note"]
