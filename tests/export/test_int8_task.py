"""The INT8 search's task step (jetcap.export.int8_task): which graph it extends, how far, and what it records.

The graphs' INT8 files and the task checks are stood in for by plain objects: what is tested is the
decision procedure (harm ranking, doubling, bisection, the bound), which the export runs on real ONNX
graphs and captions (tests/export/test_user_models.py, test_task_gate.py)."""
from pathlib import Path
from types import SimpleNamespace

from jetcap.export.int8_search import SearchOptions
from jetcap.export.int8_task import extend_for_task


class Graph:
    """A graph's quantizer as the task step sees it: a harm ranking, a bound, and INT8 files to write."""

    def __init__(self, name, ranking, limit, written):
        self.name, self._ranking, self._limit, self.written = name, list(ranking), limit, written
        self.macs = 100

    def ranking(self):
        return list(self._ranking)

    def limit(self):
        return self._limit

    def write(self, float_nodes, dst):
        self.written[str(dst)] = list(float_nodes)
        return dst

    def mac_fraction(self, nodes):
        return len(nodes) / float(len(self._ranking))


def _setup(encoder_needs, step_harm=0, encoder_limit=6):
    written = {}
    files = {"encoder": Path("enc.int8.onnx"), "decoder_step": Path("step.int8.onnx")}
    fp32 = {"encoder": Path("enc.onnx"), "decoder_step": Path("step.onnx")}
    quantizers = {"encoder": Graph("encoder", "abcdefgh", encoder_limit, written),
                  "decoder_step": Graph("decoder_step", "xy", 2, written)}
    calls = []

    def task_check(trial):
        calls.append(dict(trial))
        enc_float = len(written.get(str(trial["encoder"]), [])) if trial["encoder"] == files["encoder"] else 99
        step_int8 = trial["decoder_step"] == files["decoder_step"]
        wrong = max(0, encoder_needs - enc_float) + (step_harm if step_int8 else 0)
        return SimpleNamespace(passed=wrong == 0, score=wrong, summary="{} wrong".format(wrong))

    return quantizers, files, fp32, task_check, written, calls


def test_extends_the_most_harmful_graph_to_the_shortest_passing_prefix():
    quantizers, files, fp32, task_check, written, calls = _setup(encoder_needs=3)
    float_nodes = {"encoder": [], "decoder_step": []}
    entry = extend_for_task(quantizers, float_nodes, files, fp32, task_check, SearchOptions())
    assert entry["passed"] and not entry["passed_initially"] and entry["initial"] == "3 wrong"
    assert entry["harm_alone"] == {"encoder": 3, "decoder_step": 0}
    assert float_nodes == {"encoder": ["a", "b", "c"], "decoder_step": []}  # doubling 1, 2, 4, then bisection: 3
    assert written[str(files["encoder"])] == ["a", "b", "c"]  # the file on disk is the chosen prefix
    assert entry["float_layers"] == {"encoder": 3, "decoder_step": 0}
    assert entry["evaluations"] == len(calls)


def test_a_passing_variant_is_left_as_it_is():
    quantizers, files, fp32, task_check, written, calls = _setup(encoder_needs=0)
    float_nodes = {"encoder": ["a"], "decoder_step": []}
    entry = extend_for_task(quantizers, float_nodes, files, fp32, task_check, SearchOptions())
    assert entry["passed"] and entry["passed_initially"] and entry["evaluations"] == 1
    assert float_nodes == {"encoder": ["a"], "decoder_step": []} and not written


def test_at_the_bound_the_next_graph_is_extended_and_failure_is_recorded():
    # the encoder would need 7 layers float but may keep 6; the step's harm stays: it fails, and says why
    quantizers, files, fp32, task_check, written, calls = _setup(encoder_needs=7, step_harm=1)
    float_nodes = {"encoder": [], "decoder_step": []}
    entry = extend_for_task(quantizers, float_nodes, files, fp32, task_check,
                            SearchOptions(max_float_fraction=0.75))
    assert not entry["passed"] and "75%" in entry["note"]
    assert float_nodes["encoder"] == list("abcdef")  # its bound
    assert float_nodes["decoder_step"] == ["x", "y"]  # then the step, to its bound


def test_a_disabled_search_only_checks():
    quantizers, files, fp32, task_check, written, calls = _setup(encoder_needs=2)
    entry = extend_for_task(quantizers, {"encoder": [], "decoder_step": []}, files, fp32, task_check,
                            SearchOptions(enabled=False))
    assert not entry["passed"] and entry["evaluations"] == 1 and not written
