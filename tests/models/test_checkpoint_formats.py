"""Every checkpoint layout jetcap promises to load, built with torch.save from the real model classes."""
import copy
import json
import struct
import warnings

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from .ckpt_helpers import CAPTIONER_CONFIG, CLASSES, WORDS, label_encoder_object_checkpoint, label_encoder_pickle, \
    same_weights, word_map
from jetcap.models import LoadedModel, load_checkpoint

CAPTIONER_HINTS = {"backbone": "mobilenet_v3_small"}  # skips backbone inference where it is not under test


def save(path, obj, **kwargs):
    torch.save(obj, str(path), **kwargs)
    return path


def quantize(model, modules, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), modules, **kwargs)


def classify(model, sequences):
    with torch.no_grad():
        return model(sequences)[0]


# -- containers -------------------------------------------------------------------------------------

def test_bare_state_dict_with_hint(tmp_path, classifier_ref, sequences):
    path = save(tmp_path / "bare.pt", classifier_ref.state_dict())
    loaded = load_checkpoint(path, hints={"num_heads": 2})
    assert isinstance(loaded, LoadedModel)
    assert loaded.family.name == "classifier"
    assert loaded.layout == "bare state_dict"
    assert not loaded.model.training
    same_weights(loaded.model, classifier_ref.state_dict())
    assert torch.allclose(classify(loaded.model, sequences), classify(classifier_ref, sequences), atol=1e-6)
    assert loaded.config["num_heads"] == 2 and loaded.config["hidden_size"] == 16
    assert loaded.labels is None and any("--labels" in n for n in loaded.notes)
    assert len(loaded.sha256) == 64 and loaded.path == path


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model"])
def test_state_dict_under_a_key_with_config_and_classes(tmp_path, classifier_ref, key):
    path = save(tmp_path / "ckpt.pt", {key: classifier_ref.state_dict(), "epoch": 7, "optimizer_state_dict": {},
                                       "config": {"num_heads": 2, "lr": 0.001}, "classes": CLASSES})
    loaded = load_checkpoint(path)
    assert loaded.layout == "dict[{!r}] + config + classes".format(key)
    assert loaded.labels == CLASSES
    assert loaded.config["num_heads"] == 2
    assert "epoch" not in loaded.config and "lr" not in loaded.config
    same_weights(loaded.model, classifier_ref.state_dict())


def test_top_level_hyper_parameters_and_label_map(tmp_path, classifier_ref):
    label_map = {name: i for i, name in enumerate(CLASSES)}
    path = save(tmp_path / "ckpt.pt", {"model_state_dict": classifier_ref.state_dict(), "num_heads": 2,
                                       "hidden_size": 16, "label_map": label_map})
    loaded = load_checkpoint(path)
    assert loaded.labels == CLASSES
    assert "hyper-parameters (hidden_size, num_heads)" in loaded.layout


def test_id_to_name_label_map(tmp_path, classifier_ref):
    path = save(tmp_path / "ckpt.pt", {"state_dict": classifier_ref.state_dict(), "num_heads": 2,
                                       "label_map": {i: name for i, name in enumerate(CLASSES)}})
    assert load_checkpoint(path).labels == CLASSES


def test_label_encoder_bytes_inside_the_checkpoint(tmp_path, classifier_ref):
    path = save(tmp_path / "ckpt.pt", {"model_state_dict": classifier_ref.state_dict(), "num_heads": 2,
                                       "label_encoder": label_encoder_pickle(sorted(CLASSES))})
    loaded = load_checkpoint(path)
    assert loaded.labels == sorted(CLASSES)
    assert loaded.layout.endswith("label_encoder")


def test_label_encoder_object_inside_the_checkpoint_loads_without_trust(tmp_path, classifier_ref):
    path = tmp_path / "ckpt.pt"
    label_encoder_object_checkpoint(path, classifier_ref.state_dict(), sorted(CLASSES), num_heads=2)
    loaded = load_checkpoint(path)
    assert loaded.labels == sorted(CLASSES)
    assert not any("trust" in n for n in loaded.notes)


def test_side_label_encoder_pickle_overrides_the_checkpoint(tmp_path, classifier_ref):
    (tmp_path / "encoder.pkl").write_bytes(label_encoder_pickle(["x", "y", "z"], protocol=4))
    path = save(tmp_path / "ckpt.pt", {"model_state_dict": classifier_ref.state_dict(), "num_heads": 2,
                                       "classes": CLASSES})
    loaded = load_checkpoint("ckpt.pt", labels="encoder.pkl", base_dir=tmp_path)
    assert loaded.labels == ["x", "y", "z"]
    assert loaded.path == path
    assert [n for n in loaded.notes if n.startswith("warning: ")] == [
        "warning: --labels {} names the classes otherwise than the checkpoint does (classes: {}...); the file's "
        "names are used: leave out --labels for the checkpoint's own, in their training order".format(
            tmp_path / "encoder.pkl", ", ".join(CLASSES[:4]))]


def test_encoder_decoder_entries_with_word_map_and_config(tmp_path, captioner_ref, images):
    path = save(tmp_path / "split.pt", {"encoder": captioner_ref.encoder.state_dict(),
                                        "decoder": captioner_ref.decoder.state_dict(), "word_map": word_map(),
                                        "config": {"grid": 2, "image_size": 64}})
    loaded = load_checkpoint(path)  # backbone inferred from the shapes
    assert loaded.family.name == "captioner"
    assert loaded.layout == "dict['encoder'] + dict['decoder'] + config + word_map"
    assert loaded.config["backbone"] == "mobilenet_v3_small" and loaded.config["grid"] == 2
    assert loaded.config["image_size"] == 64 and loaded.config["encoder_dim"] == 576
    assert loaded.vocab.itos == WORDS and loaded.vocab.start_id == 1 and loaded.vocab.end_id == 2
    same_weights(loaded.model, captioner_ref.state_dict())
    with torch.no_grad():
        assert torch.allclose(loaded.model.encoder(images), captioner_ref.encoder(images), atol=1e-6)


def test_stored_grid_none_means_no_pooling(tmp_path, images):
    """A stored ``None`` is a value: grid=None keeps the trunk's whole feature map (no default 7x7 pooling)."""
    from jetcap.models.captioner import MobileNetCaptioningModel

    config = dict(CAPTIONER_CONFIG, grid=None)
    model = MobileNetCaptioningModel(**config).eval()
    path = save(tmp_path / "ckpt.pt", {"model_state_dict": model.state_dict(), "word_map": word_map(),
                                       "config": dict(config, image_size=64, lr=0.002), "training": {"lr": 0.002}})
    loaded = load_checkpoint(path)
    assert loaded.config["grid"] is None and loaded.config["image_size"] == 64
    assert isinstance(loaded.model.encoder.adaptive_pool, nn.Identity)
    with torch.no_grad():
        assert loaded.model.encoder(images).shape == (2, 4, 576)  # 64 px / 32 = 2x2 pixels


def test_hyper_parameters_at_top_level_and_sos_eos_spelling(tmp_path, captioner_ref):
    specials = ["<PAD>", "<SOS>", "<EOS>", "<UNK>"] + WORDS[4:]
    path = save(tmp_path / "ckpt.pt", {"model": captioner_ref.state_dict(), "vocab_size": 12, "embed_dim": 8,
                                       "decoder_dim": 16, "attention_dim": 8, "grid": 2, "backbone": "mobilenet_v3_small",
                                       "word_map": {w: i for i, w in enumerate(specials)}})
    loaded = load_checkpoint(path, "captioner")
    assert loaded.vocab.start_id == 1 and loaded.vocab.end_id == 2 and loaded.vocab.pad_id == 0
    assert loaded.vocab.unk_id == 3
    assert loaded.config["grid"] == 2


@pytest.mark.parametrize("key", ["itos", "vocab"])
def test_itos_list(tmp_path, captioner_ref, key):
    path = save(tmp_path / "ckpt.pt", {"state_dict": captioner_ref.state_dict(), key: WORDS, "grid": 2})
    loaded = load_checkpoint(path, hints=CAPTIONER_HINTS)
    assert loaded.vocab.itos == WORDS
    assert loaded.layout.endswith(key)


def test_side_word_map_file_overrides(tmp_path, captioner_ref):
    other = ["<pad>", "<start>", "<end>", "<unk>"] + ["w{}".format(i) for i in range(8)]
    (tmp_path / "WORDMAP.json").write_text(json.dumps({w: i for i, w in enumerate(other)}))
    save(tmp_path / "ckpt.pt", {"state_dict": captioner_ref.state_dict(), "word_map": word_map()})
    loaded = load_checkpoint("ckpt.pt", word_map="WORDMAP.json", base_dir=tmp_path, hints=CAPTIONER_HINTS)
    assert loaded.vocab.itos == other
    assert loaded.layout == "dict['state_dict'] + word map file"
    assert loaded.config["grid"] == 7  # not stored anywhere: the default


def test_missing_word_map_is_a_note(tmp_path, captioner_ref):
    loaded = load_checkpoint(save(tmp_path / "bare.pt", captioner_ref.state_dict()), hints=CAPTIONER_HINTS)
    assert loaded.vocab is None and any("--word-map" in n for n in loaded.notes)


# -- wrapper prefixes ------------------------------------------------------------------------------

def test_dataparallel_prefix(tmp_path, classifier_ref):
    state = nn.DataParallel(classifier_ref).state_dict()
    assert all(k.startswith("module.") for k in state)
    loaded = load_checkpoint(save(tmp_path / "dp.pt", {"state_dict": state, "num_heads": 2}))
    assert any("'module.'" in n for n in loaded.notes)
    same_weights(loaded.model, classifier_ref.state_dict())


def test_torch_compile_prefix(tmp_path, classifier_ref):
    state = torch.compile(classifier_ref).state_dict()  # compiles nothing until called
    assert all(k.startswith("_orig_mod.") for k in state)
    loaded = load_checkpoint(save(tmp_path / "compiled.pt", state), hints={"num_heads": 2})
    assert any("'_orig_mod.'" in n for n in loaded.notes)
    same_weights(loaded.model, classifier_ref.state_dict())


@pytest.mark.parametrize("order", ["compile(dataparallel)", "dataparallel(compile)"])
def test_combined_prefixes(tmp_path, classifier_ref, order):
    if order == "compile(dataparallel)":
        state = torch.compile(nn.DataParallel(classifier_ref)).state_dict()
    else:
        state = nn.DataParallel(torch.compile(classifier_ref)).state_dict()
    assert all("_orig_mod." in k and "module." in k for k in state)
    loaded = load_checkpoint(save(tmp_path / "both.pt", state), hints={"num_heads": 2})
    same_weights(loaded.model, classifier_ref.state_dict())


def test_prefixed_encoder_decoder_halves(tmp_path, captioner_ref):
    path = save(tmp_path / "halves.pt", {"encoder": nn.DataParallel(captioner_ref.encoder).state_dict(),
                                         "decoder": torch.compile(captioner_ref.decoder).state_dict()})
    loaded = load_checkpoint(path, hints=CAPTIONER_HINTS)
    same_weights(loaded.model, captioner_ref.state_dict())


def test_lightning_style_common_prefix(tmp_path, classifier_ref):
    state = {"model." + k: v for k, v in classifier_ref.state_dict().items()}
    path = save(tmp_path / "lightning.ckpt", {"state_dict": state, "hyper_parameters": {"num_heads": 2},
                                              "pytorch-lightning_version": "2.4.0", "global_step": 100})
    loaded = load_checkpoint(path)
    assert any("common prefix 'model.'" in n for n in loaded.notes)
    assert "global_step" not in loaded.config
    same_weights(loaded.model, classifier_ref.state_dict())


# -- pruning ----------------------------------------------------------------------------------------

def test_pruned_classifier_conv_lstm_linear(tmp_path, classifier_ref, sequences):
    pruned = copy.deepcopy(classifier_ref)
    prune.l1_unstructured(pruned.conv_layers[0], "weight", amount=0.3)
    prune.l1_unstructured(pruned.lstm, "weight_ih_l0", amount=0.5)
    prune.random_unstructured(pruned.lstm, "weight_hh_l1_reverse", amount=0.5)
    prune.l1_unstructured(pruned.classifier[3], "weight", amount=0.5)
    state = pruned.state_dict()
    assert "lstm.weight_ih_l0_orig" in state and "lstm.weight_ih_l0_mask" in state
    loaded = load_checkpoint(save(tmp_path / "pruned.pt", state), hints={"num_heads": 2})
    assert any("folded 4 pruned weights" in n for n in loaded.notes)
    expected = {k: getattr(m, n) for k, m, n in [
        ("conv_layers.0.weight", pruned.conv_layers[0], "weight"), ("lstm.weight_ih_l0", pruned.lstm, "weight_ih_l0"),
        ("lstm.weight_hh_l1_reverse", pruned.lstm, "weight_hh_l1_reverse"),
        ("classifier.3.weight", pruned.classifier[3], "weight")]}
    for key, value in expected.items():
        assert torch.equal(loaded.model.state_dict()[key], value.detach()), key
        assert (loaded.model.state_dict()[key] == 0).any()
    assert torch.allclose(classify(loaded.model, sequences), classify(pruned, sequences), atol=1e-6)


def test_pruned_captioner_lstmcell_and_linear(tmp_path, captioner_ref):
    pruned = copy.deepcopy(captioner_ref)
    prune.l1_unstructured(pruned.decoder.decode_step, "weight_hh", amount=0.4)
    prune.l1_unstructured(pruned.decoder.decode_step, "weight_ih", amount=0.4)
    prune.l1_unstructured(pruned.decoder.fc, "weight", amount=0.2)
    loaded = load_checkpoint(save(tmp_path / "pruned.pt", {"model_state_dict": pruned.state_dict(), "grid": 2}),
                             hints=CAPTIONER_HINTS)
    assert any("folded 3 pruned weights" in n for n in loaded.notes)
    state = loaded.model.state_dict()
    assert torch.equal(state["decoder.decode_step.weight_hh"], pruned.decoder.decode_step.weight_hh.detach())
    assert torch.equal(state["decoder.fc.weight"], pruned.decoder.fc.weight.detach())


# -- dynamic quantization ---------------------------------------------------------------------------

def _dequantized_linear_weights(quantized_module):
    return {name: mod.weight().dequantize() for name, mod in quantized_module.named_modules()
            if type(mod).__name__ == "Linear" and "dynamic" in type(mod).__module__}


def test_dynamic_quantized_classifier_linear_and_lstm(tmp_path, classifier_ref, sequences):
    quantized = quantize(classifier_ref, {nn.Linear, nn.LSTM})
    state = quantized.state_dict()
    assert "lstm._all_weight_values.0.param" in state and "classifier.0._packed_params._packed_params" in state
    loaded = load_checkpoint(save(tmp_path / "q.pt", {"model_state_dict": state, "num_heads": 2}))
    assert any(n.startswith("dequantized 5 dynamic-quantized modules") for n in loaded.notes)
    loaded_state = loaded.model.state_dict()
    for name, weight in _dequantized_linear_weights(quantized).items():
        assert torch.equal(loaded_state[name + ".weight"], weight), name
    reference = classifier_ref.state_dict()
    for key in ("lstm.weight_ih_l0", "lstm.weight_hh_l1_reverse", "lstm.bias_ih_l1"):
        assert torch.allclose(loaded_state[key], reference[key], atol=0.02), key
    assert torch.equal(loaded_state["lstm.bias_hh_l0"], reference["lstm.bias_hh_l0"])  # biases stay float
    assert torch.allclose(classify(loaded.model, sequences), classify(quantized, sequences), atol=0.05)


@pytest.mark.parametrize("qconfig", ["float16", "per_channel"])
def test_other_dynamic_quantization_schemes(tmp_path, classifier_ref, qconfig):
    from torch.ao.quantization import float16_dynamic_qconfig, per_channel_dynamic_qconfig

    spec = float16_dynamic_qconfig if qconfig == "float16" else per_channel_dynamic_qconfig
    quantized = quantize(classifier_ref, {nn.Linear: spec, nn.LSTM: spec})
    loaded = load_checkpoint(save(tmp_path / "q.pt", quantized.state_dict()), hints={"num_heads": 2})
    assert any("dequantized" in n for n in loaded.notes)
    for key, value in classifier_ref.state_dict().items():
        assert torch.allclose(loaded.model.state_dict()[key], value, atol=0.02), key


def test_dynamic_quantized_captioner_lstmcell(tmp_path, captioner_ref):
    quantized = quantize(captioner_ref, {nn.Linear, nn.LSTMCell})
    state = quantized.state_dict()
    assert "decoder.decode_step._packed_weight_ih" in state
    loaded = load_checkpoint(save(tmp_path / "q.pt", state), hints=dict(CAPTIONER_HINTS, grid=2))
    loaded_state = loaded.model.state_dict()
    cell = quantized.decoder.decode_step
    assert torch.equal(loaded_state["decoder.decode_step.weight_ih"], cell._packed_weight_ih.unpack()[0].dequantize())
    assert torch.equal(loaded_state["decoder.decode_step.bias_hh"], captioner_ref.decoder.decode_step.bias_hh.detach())
    for key, value in captioner_ref.state_dict().items():
        assert torch.allclose(loaded_state[key].float(), value.float(), atol=0.05), key


# -- pickled modules (trusted) -------------------------------------------------------------------------

def test_show_attend_tell_checkpoint_pickled_from_main(sat_checkpoints):
    code, out = sat_checkpoints
    (out / "WORDMAP.json").write_text(json.dumps(word_map()))
    loaded = load_checkpoint(out / "sat_main.pth.tar", trust_pickle=True, code_path=code, word_map="WORDMAP.json",
                             base_dir=out)
    assert loaded.family.name == "captioner"
    assert "dict['encoder'] (pickled Encoder) + dict['decoder'] (pickled DecoderWithAttention)" in loaded.layout
    assert loaded.config["grid"] == 2  # read from the pickled AdaptiveAvgPool2d
    assert loaded.config["backbone"] == "mobilenet_v3_small"
    assert "epoch" not in loaded.config and "bleu-4" not in loaded.config
    assert any("trust-pickle" in n for n in loaded.notes)
    reference = torch.load(str(out / "reference.pt"), weights_only=True)
    expected = {}
    for prefix, state in reference.items():
        for key, value in state.items():
            expected[prefix + "." + key.replace("mobilenet.", "backbone.")] = value
    same_weights(loaded.model, expected)
    assert loaded.vocab.itos == WORDS


def test_whole_model_object_pickled_from_main(sat_checkpoints):
    code, out = sat_checkpoints
    loaded = load_checkpoint(out / "whole_main.pt", trust_pickle=True, code_path=code)
    assert loaded.layout == "pickled CaptionModel module"
    assert loaded.config["grid"] == 2 and loaded.config["vocab_size"] == 12


def test_classes_of_an_importable_module_need_the_code_path(sat_checkpoints):
    from jetcap.errors import CheckpointError

    code, out = sat_checkpoints
    with pytest.raises(CheckpointError, match="--code-path"):
        load_checkpoint(out / "sat_module.pth.tar", trust_pickle=True)
    loaded = load_checkpoint(out / "sat_module.pth.tar", trust_pickle=True, code_path=code)
    assert loaded.config["decoder_dim"] == 16
    import sys
    assert "train_sat" not in sys.modules and str(code) not in sys.path  # the user's code is forgotten again


def test_pickled_dynamic_quantized_decoder(sat_checkpoints):
    code, out = sat_checkpoints
    from_modules = load_checkpoint(out / "sat_quantized.pth.tar", trust_pickle=True, code_path=code)
    assert any("dequantized" in n for n in from_modules.notes)
    # the same weights saved as a state_dict load without trust (inert packed-params placeholders)
    from_state = load_checkpoint(out / "quantized_reference.pt", hints={"grid": 2})
    assert from_state.layout == "dict['encoder'] + dict['decoder']"
    for key, value in from_modules.model.state_dict().items():
        assert torch.equal(from_state.model.state_dict()[key], value), key


def test_whole_jetcap_model_object(tmp_path, classifier_ref):
    path = save(tmp_path / "model.pt", {"model": classifier_ref, "classes": CLASSES})
    loaded = load_checkpoint(path, trust_pickle=True)
    assert loaded.config["num_heads"] == 2  # read from the pickled nn.MultiheadAttention
    assert loaded.layout == "dict['model'] (pickled SequenceClassifier) + classes"
    same_weights(loaded.model, classifier_ref.state_dict())


# -- other file formats ----------------------------------------------------------------------------

def test_legacy_non_zip_format(tmp_path, classifier_ref):
    path = save(tmp_path / "legacy.pt", {"model_state_dict": classifier_ref.state_dict(), "num_heads": 2},
                _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path)
    assert loaded.layout.startswith("torch legacy: dict['model_state_dict']")
    same_weights(loaded.model, classifier_ref.state_dict())


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {}, 0, []
    names = {torch.float32: "F32", torch.int64: "I64", torch.float16: "F16"}
    for name, tensor in tensors.items():
        data = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": names[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    header["__metadata__"] = metadata
    encoded = json.dumps(header).encode("utf-8")
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(blobs))
    return path


def test_safetensors_with_metadata(tmp_path, classifier_ref):
    path = write_safetensors(tmp_path / "model.safetensors", classifier_ref.state_dict(),
                             {"config": json.dumps({"num_heads": 2}), "classes": json.dumps(CLASSES)})
    loaded = load_checkpoint(path)
    assert loaded.layout == "safetensors: dict['state_dict'] + config + classes"
    assert loaded.labels == CLASSES
    same_weights(loaded.model, classifier_ref.state_dict())


def test_half_precision_checkpoint(tmp_path, classifier_ref):
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in classifier_ref.state_dict().items()}
    loaded = load_checkpoint(save(tmp_path / "half.pt", state), hints={"num_heads": 2})
    assert any("float16 tensors to float32" in n for n in loaded.notes)
    assert loaded.model.lstm.weight_ih_l0.dtype == torch.float32


def test_stored_hyper_parameter_contradicting_the_tensors_is_dropped(tmp_path, classifier_ref):
    path = save(tmp_path / "ckpt.pt", {"model_state_dict": classifier_ref.state_dict(),
                                       "config": {"num_heads": 2, "max_len": 60, "hidden_size": 16}})
    loaded = load_checkpoint(path)
    assert loaded.config["max_len"] == 32
    assert any("max_len=60 (tensors say 32)" in n for n in loaded.notes)


def test_stored_none_that_breaks_the_build_is_dropped(tmp_path, classifier_ref):
    path = save(tmp_path / "ckpt.pt", {"model_state_dict": classifier_ref.state_dict(),
                                       "config": {"num_heads": 2, "hidden_size": None, "conv_channels": None}})
    loaded = load_checkpoint(path)
    assert loaded.config["hidden_size"] == 16 and loaded.config["conv_channels"] == [8]
    assert any("hidden_size=None (tensors say 16)" in n for n in loaded.notes)


def test_user_hints_override_the_checkpoint(tmp_path, classifier_ref):
    path = save(tmp_path / "ckpt.pt", {"model_state_dict": classifier_ref.state_dict(), "num_heads": 4})
    assert load_checkpoint(path).config["num_heads"] == 4
    assert load_checkpoint(path, hints={"num_heads": 2}).config["num_heads"] == 2


def test_label_encoder_with_numeric_classes(tmp_path, classifier_ref):
    path = save(tmp_path / "ckpt.pt", {"model_state_dict": classifier_ref.state_dict(), "num_heads": 2,
                                       "label_encoder": label_encoder_pickle(np.array([3, 5, 9]))})
    assert load_checkpoint(path).labels == ["3", "5", "9"]


def test_labels_file_replaces_a_label_entry_jetcap_cannot_read(tmp_path, classifier_ref):
    # ids with a gap cannot be read as class names: the side file is the way out, as the error says
    (tmp_path / "six.json").write_text(json.dumps(["a", "b", "c", "d", "e", "f"][:len(CLASSES)]))
    broken = dict((name, i if i < len(CLASSES) - 1 else i + 3) for i, name in enumerate(CLASSES))
    save(tmp_path / "ckpt.pt", {"model_state_dict": classifier_ref.state_dict(), "num_heads": 2, "classes": broken})
    loaded = load_checkpoint("ckpt.pt", labels="six.json", base_dir=tmp_path)
    assert loaded.labels == ["a", "b", "c", "d", "e", "f"][:len(CLASSES)]
