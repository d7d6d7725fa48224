"""Which ONNX Runtime thread pools spin: one caller (caption, bench), a server's decode loop, its workers."""
import io

import pytest

from jetcap.errors import UsageError
from jetcap.runtime.backends import onnxruntime as backend
from jetcap.runtime.backends.onnxruntime import (SPIN_DURING_RUNS, bundle_runners, make_session, spinning_policy,
                                                 spins_during_runs)
from jetcap.runtime.manifest import Manifest
from jetcap.runtime.serving import JsonLog, ModelState
from jetcap.serve.options import ServeOptions
from jetcap.util.versions import parse_version

GRAPHS = ["encoder", "decoder_step"]


def test_pools_spin_during_runs_wherever_onnxruntime_can_stop_them_after():
    for spinning in (None, SPIN_DURING_RUNS):
        for graph in GRAPHS:
            assert spinning_policy(GRAPHS, graph, spinning, during_runs=True) == SPIN_DURING_RUNS
    assert spinning_policy(["classifier"], "classifier", None, during_runs=True) == SPIN_DURING_RUNS


def test_without_it_one_caller_spins_the_step_and_single_graphs_and_a_server_nothing():
    # ONNX Runtime < 1.12 (JetPack's 1.10) ignores session.force_spinning_stop: a pool spins between runs too
    assert spinning_policy(GRAPHS, "decoder_step", during_runs=False) is True
    assert spinning_policy(GRAPHS, "encoder", during_runs=False) is False
    assert spinning_policy(["classifier"], "classifier", during_runs=False) is True
    for graph in GRAPHS:
        assert spinning_policy(GRAPHS, graph, SPIN_DURING_RUNS, during_runs=False) is False


def test_a_bool_decides_for_every_graph_whatever_onnxruntime_can():
    for during_runs in (True, False):
        for graph in GRAPHS:
            assert spinning_policy(GRAPHS, graph, spinning=False, during_runs=during_runs) is False
            assert spinning_policy(GRAPHS, graph, spinning=True, during_runs=during_runs) is True


def test_the_release_that_reads_the_key_is_compared_as_numbers():
    assert not spins_during_runs("1.10.0") and not spins_during_runs("1.11.1")
    assert spins_during_runs("1.12.0") and spins_during_runs("1.12.0rc1") and spins_during_runs("1.32.0")
    assert spins_during_runs("1.100.0")  # as strings, "1.100.0" < "1.12"
    assert spins_during_runs("1.19.0.dev20240101") and spins_during_runs("1.16.3+cu118")
    # a custom build's version string: only a speed choice, never a failed load
    assert not spins_during_runs("nightly") and not spins_during_runs("")
    assert backend.onnxruntime_version("1.18.0rc1") == (1, 18, 0) and backend.onnxruntime_version("nightly") == (0,)
    assert backend.onnxruntime_version() >= (1, 0)  # the installed one


def test_versions_are_parsed_as_tuples_of_ints():
    assert parse_version("8.2.1.8") == (8, 2, 1, 8) and parse_version((10, "0")) == (10, 0)
    for bad in ("nightly", "7", (1,)):
        with pytest.raises(UsageError, match="cannot parse onnxruntime version"):
            parse_version(bad, "onnxruntime version")


def test_only_the_four_choices_are_taken():
    import numpy as np

    for wrong in (0, 1, np.bool_(True), "during_runs"):
        with pytest.raises(ValueError, match="spinning must be"):
            spinning_policy(GRAPHS, "encoder", wrong, during_runs=True)


def test_make_session_sets_the_keys(captioner_bundle):
    path = Manifest.load(captioner_bundle).graph_path("fp32", "encoder")
    def entry(options, key):
        try:
            return options.get_session_config_entry(key)
        except RuntimeError:  # "SessionOptions does not have configuration with key"
            return None

    entries = {}
    for spinning in (True, False, SPIN_DURING_RUNS):
        options = make_session(path, threads=1, spinning=spinning).get_session_options()
        entries[spinning] = (entry(options, "session.intra_op.allow_spinning"),
                             entry(options, "session.force_spinning_stop"))
    assert entries == {True: (None, None), False: ("0", None), SPIN_DURING_RUNS: (None, "1")}


def test_bundle_runners_take_the_policy(captioner_bundle):
    manifest = Manifest.load(captioner_bundle)
    default = bundle_runners(manifest, "fp32")
    expected = ({"encoder": SPIN_DURING_RUNS, "decoder_step": SPIN_DURING_RUNS} if spins_during_runs()
                else {"encoder": False, "decoder_step": True})
    assert {g: r.spinning for g, r in default.items()} == expected
    assert not any(r.spinning for r in bundle_runners(manifest, "fp32", spinning=False).values())


def _served_spinning(bundle, **options):
    model = ModelState(bundle, ServeOptions(port=0, **options), JsonLog(io.StringIO()))
    model.load()
    try:
        assert model.ready, model.reason
        return set(r.spinning for r in model.session.runners.values())
    finally:
        model.close()


def test_a_servers_workers_never_spin_and_its_decode_loop_spins_during_runs_only(captioner_bundle,
                                                                                 classifier_bundle, monkeypatch):
    # workers' runs overlap: a pool spinning during one run takes the cores of the others (docs/BENCHMARKS.md)
    assert _served_spinning(classifier_bundle) == {False}
    assert _served_spinning(captioner_bundle, batching=False) == {False}
    assert _served_spinning(captioner_bundle) == ({SPIN_DURING_RUNS} if spins_during_runs() else {False})
    # with JetPack's ONNX Runtime 1.10 the loop's pools never spin (the single-caller policy would spin the step)
    monkeypatch.setattr(backend, "spins_during_runs", lambda version=None: False)
    assert _served_spinning(captioner_bundle) == {False}
