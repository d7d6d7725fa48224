"""The family registry, and tests generated from it so that no registered family goes untested."""
import numpy as np
import pytest
import torch

from jetcap.errors import CheckpointError, UsageError
from jetcap.models import families, get_family
from jetcap.models.registry import ModelFamily, detect_family, register

# The smallest config of each family (build() input); hints are what its weights cannot tell.
TINY = {
    "captioner": dict(config=dict(vocab_size=12, embed_dim=8, decoder_dim=16, attention_dim=8,
                                  backbone="mobilenet_v3_small", width_mult=1.0, grid=2, dropout=0.5, image_size=64),
                      hints=dict(grid=2, image_size=64),
                      axes=[dict(batch=2), dict(batch=1)]),
    "classifier": dict(config=dict(input_size=6, num_classes=3, conv_channels=[8, 12], hidden_size=16, num_layers=2,
                                   num_heads=2, max_len=32, dropout=0.3, kernel_size=3),
                       hints=dict(num_heads=2),
                       axes=[dict(batch=2, T=7), dict(batch=1, T=32)]),
}
NAMES = [family.name for family in families()]


@pytest.fixture(scope="module")
def built():
    """Each family's tiny model (eval mode), its state_dict and the config inferred back from it."""
    out = {}
    for name in NAMES:
        family = get_family(name)
        torch.manual_seed(0)
        model = family.build(TINY[name]["config"]).eval()
        state = model.state_dict()
        out[name] = (family, model, family.infer_config(state, TINY[name]["hints"]))
    return out


def test_every_registered_family_has_a_tiny_config():
    assert NAMES and sorted(TINY) == sorted(NAMES), "add a tiny config for each new family to TINY"


def test_unknown_family_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown model family 'nope'; known families: " + ", ".join(NAMES)):
        get_family("nope")


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="already registered"):
        register(ModelFamily(name=NAMES[0]))
    with pytest.raises(ValueError, match="needs a name"):
        register(ModelFamily())
    assert [f.name for f in families()] == NAMES


def test_families_sorted_and_described():
    assert NAMES == sorted(NAMES)
    for family in families():
        assert family.description and family.tolerances and family.task_thresholds


def test_detect_family_rejects_unknown_keys():
    with pytest.raises(CheckpointError, match="cannot tell which model family"):
        detect_family({"weight": torch.zeros(1)})


@pytest.mark.parametrize("name", NAMES)
def test_family_detects_and_infers_its_own_config(built, name):
    family, model, inferred = built[name]
    state = model.state_dict()
    assert detect_family(state) is family
    assert family.matches(family.normalize_keys(dict(state)))
    for key, value in TINY[name]["config"].items():
        if key == "dropout":  # not stored in weights; eval mode does not use it
            continue
        expected = list(value) if isinstance(value, tuple) else value
        assert inferred[key] == expected, key
    rebuilt = family.build(inferred)
    rebuilt.load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", NAMES)
def test_graph_modules_run_on_dummy_inputs_with_declared_shapes(built, name):
    family, model, config = built[name]
    for axes in TINY[name]["axes"]:
        for spec in family.graphs(config):
            sizes = dict(axes)
            inputs = family.dummy_inputs(config, spec.name, sizes, seed=1)
            assert list(inputs) == spec.input_names
            for tensor_spec in spec.inputs:
                array = inputs[tensor_spec.name]
                assert array.dtype == np.dtype(tensor_spec.dtype), tensor_spec.name
                check_shape(array.shape, tensor_spec.shape, sizes, tensor_spec.name)
            module = family.graph_module(model, spec.name)
            with torch.no_grad():
                outputs = module(*[torch.from_numpy(inputs[n]) for n in spec.input_names])
            outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
            assert len(outputs) == len(spec.outputs), spec.name
            for tensor_spec, value in zip(spec.outputs, outputs):
                assert value.numpy().dtype == np.dtype(tensor_spec.dtype), tensor_spec.name
                check_shape(tuple(value.shape), tensor_spec.shape, sizes, tensor_spec.name)
                assert torch.isfinite(value).all(), tensor_spec.name


def check_shape(actual, declared, sizes, what):
    """``actual`` matches ``declared`` (ints fixed; a symbolic axis takes one size everywhere)."""
    assert len(actual) == len(declared), (what, actual, declared)
    for got, want in zip(actual, declared):
        if isinstance(want, str):
            assert sizes.setdefault(want, got) == got, (what, want, got, sizes)
        else:
            assert got == want, (what, actual, declared)


def test_dummy_inputs_refuse_unknown_graphs(built):
    for name in NAMES:
        family, _, config = built[name]
        with pytest.raises(KeyError):
            family.dummy_inputs(config, "no_such_graph", {"batch": 1})
