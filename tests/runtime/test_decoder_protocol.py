"""The manifest's decoder protocol: checked against the graphs, batch axes from the shapes."""
import numpy as np
import pytest

from jetcap.errors import BundleError
from jetcap.runtime.decoder_protocol import LEGACY_DECODER, DecoderProtocol

STEP = {"inputs": [{"name": "prev_word", "shape": ["batch"]}, {"name": "h", "shape": [2, "batch", 4]},
                   {"name": "c", "shape": [2, "batch", 4]}, {"name": "features", "shape": ["batch", 9, 3]}],
        "outputs": [{"name": "log_probs", "shape": ["batch", 10]}, {"name": "h_new", "shape": [2, "batch", 4]},
                    {"name": "c_new", "shape": [2, "batch", 4]}]}
ENCODER = {"inputs": [{"name": "images", "shape": ["batch", 3, 8, 8]}],
           "outputs": [{"name": "features", "shape": ["batch", 9, 3]}, {"name": "h0", "shape": [2, "batch", 4]},
                       {"name": "c0", "shape": [2, "batch", 4]}]}
ENTRY = {"word_input": "prev_word", "log_probs": "log_probs", "attention": None,
         "state": [{"input": "h", "output": "h_new", "init": "h0"}, {"input": "c", "output": "c_new", "init": "c0"}],
         "context": [{"input": "features", "init": "features"}]}


def test_batch_axes_come_from_the_shapes_and_rows_are_taken_along_them():
    protocol = DecoderProtocol(ENTRY, STEP, ENCODER)
    assert protocol.batch_axes == {"h": 1, "c": 1, "features": 0}
    assert protocol.fetch == ("log_probs",) and protocol.state_outputs == {"h_new": "h", "c_new": "c"}
    encoded = {"features": np.arange(3 * 9 * 3).reshape(3, 9, 3), "h0": np.arange(2 * 3 * 4).reshape(2, 3, 4),
               "c0": np.zeros((2, 3, 4))}
    first = protocol.initial(encoded, [2])
    assert first["h"].shape == (2, 1, 4) and (first["h"][:, 0] == encoded["h0"][:, 2]).all()
    assert first["features"].shape == (1, 9, 3)
    log_probs, alpha = protocol.split({"log_probs": np.zeros((5, 10))})
    assert alpha.shape == (5, 0)  # no attention output: an empty one, so the search code stays the same


@pytest.mark.parametrize("change,message", [
    (lambda e: e.update(state=[]), "non-empty 'state'"),
    (lambda e: e.update(word_input="words"), "do not match"),
    (lambda e: e["state"][0].update(output="h_next"), "no output 'h_next'"),
    (lambda e: e["state"][0].update(init="hidden0"), "encoder has no output 'hidden0'"),
    (lambda e: e.update(attention=3), "name or null"),
])
def test_an_inconsistent_entry_is_a_bundle_error(change, message):
    import copy

    entry = copy.deepcopy(ENTRY)
    change(entry)
    with pytest.raises(BundleError, match=message):
        DecoderProtocol(entry, STEP, ENCODER)


def test_legacy_bundles_use_show_attend_tell_names():
    names = [s["input"] for s in LEGACY_DECODER["state"]] + [c["input"] for c in LEGACY_DECODER["context"]]
    assert names == ["h", "c", "features", "projected"]


def test_step_outputs_name_the_state_then_what_the_searches_read_each_once():
    import copy

    step = copy.deepcopy(STEP)
    step["outputs"] += [{"name": "alpha", "shape": ["batch", 9]}, {"name": "topk_log_probs", "shape": ["batch", 4]},
                        {"name": "topk_ids", "shape": ["batch", 4]}]
    entry = dict(ENTRY, attention="alpha", topk={"log_probs": "topk_log_probs", "ids": "topk_ids", "k": 4})
    protocol = DecoderProtocol(entry, step, ENCODER)
    assert protocol.step_outputs([True]) == ["h_new", "c_new", "topk_log_probs", "topk_ids", "alpha"]
    assert protocol.step_outputs([False]) == ["h_new", "c_new", "log_probs", "alpha"]
    assert protocol.step_outputs({True, False}) == ["h_new", "c_new", "log_probs", "alpha", "topk_log_probs",
                                                    "topk_ids"]
    # a step graph without top-k outputs: a top-k search never runs on it, and asks for the state only
    assert DecoderProtocol(ENTRY, STEP, ENCODER).step_outputs([True]) == ["h_new", "c_new"]
