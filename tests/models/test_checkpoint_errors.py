"""Everything that must be refused, each with one clear jetcap error (and nothing executed)."""
import builtins
import json
import pickle
import warnings

import pytest
import torch
from torch import nn

from jetcap.errors import CheckpointError, InsufficientMemoryError, JetcapError, UsageError
from jetcap.models import load_checkpoint

from .ckpt_helpers import WORDS, word_map

CAPTIONER_HINTS = {"backbone": "mobilenet_v3_small"}


def save(path, obj, **kwargs):
    torch.save(obj, str(path), **kwargs)
    return path


def one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


class WritesAFile:
    """A pickle payload: unpickling calls ``open(target, "w")``, creating the file."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return builtins.open, (self.target, "w")


# -- unsafe pickles ---------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_malicious_pickle_never_runs_without_trust(tmp_path, classifier_ref, form):
    target = tmp_path / "pwned.txt"
    path = save(tmp_path / "evil.pt", {"state_dict": classifier_ref.state_dict(), "extra": WritesAFile(target)},
                _use_new_zipfile_serialization=(form == "zip"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, hints={"num_heads": 2})
    message = one_line(info)
    assert "io.open" in message and "--trust-pickle" in message and "refused" in message  # open() pickles as io.open
    assert not target.exists()


def test_the_payload_is_real_when_trusted(tmp_path):
    target = tmp_path / "pwned.txt"
    path = save(tmp_path / "evil.pt", {"extra": WritesAFile(target)})
    with pytest.raises(CheckpointError, match="no state_dict found"):
        load_checkpoint(path, trust_pickle=True)
    assert target.exists()  # proves the test above guards against a payload that would have run


def test_plain_python_pickle_is_refused(tmp_path):
    target = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"x": WritesAFile(target)}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "plain Python pickle" in one_line(info) and "io.open" in str(info.value)
    assert not target.exists()


def test_pickled_modules_refused_naming_globals_and_flags(sat_checkpoints):
    code, out = sat_checkpoints
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(out / "sat_main.pth.tar")
    message = one_line(info)
    for expected in ("__main__.Encoder", "__main__.DecoderWithAttention", "--trust-pickle", "--code-path"):
        assert expected in message
    assert message.index("__main__.Encoder") < message.index("torchvision.")  # the user's classes come first


def test_main_classes_without_code_path(sat_checkpoints):
    code, out = sat_checkpoints
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(out / "whole_main.pt", trust_pickle=True)
    message = one_line(info)
    assert "__main__.CaptionModel" in message and "--code-path" in message


def test_main_classes_not_in_the_code_path(sat_checkpoints, tmp_path):
    code, out = sat_checkpoints
    (tmp_path / "a_broken.py").write_text("raise RuntimeError('needs a GPU')\n")
    (tmp_path / "utils.py").write_text("X = 1\n")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(out / "whole_main.pt", trust_pickle=True, code_path=tmp_path)
    message = one_line(info)
    assert "none of the modules in --code-path" in message
    assert "a_broken.py (RuntimeError: needs a GPU)" in message
    # a broken file beside the right one does not matter
    (tmp_path / "train_sat.py").write_text((code / "train_sat.py").read_text())
    assert load_checkpoint(out / "whole_main.pt", trust_pickle=True, code_path=tmp_path).config["grid"] == 2


def test_torchscript_archive_needs_trust(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript archive.*--trust-pickle"):
        load_checkpoint(path)


# -- broken or foreign files -------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(UsageError, match="checkpoint file not found: .*nope.pt"):
        load_checkpoint("nope.pt", base_dir=tmp_path)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(UsageError, match="not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("form", ["zip", "legacy"])
def test_truncated_file(tmp_path, classifier_ref, form):
    full = save(tmp_path / "full.pt", {"state_dict": classifier_ref.state_dict(), "num_heads": 2},
                _use_new_zipfile_serialization=(form == "zip"))
    data = full.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "truncated" in one_line(info)


def test_png_file(tmp_path):
    path = tmp_path / "photo.pt"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(CheckpointError, match="is a PNG image, not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("epoch 3: loss 1.2\n")
    with pytest.raises(CheckpointError, match="is a text file"):
        load_checkpoint(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        load_checkpoint(path)


def test_zip_that_is_not_a_checkpoint(tmp_path):
    import zipfile

    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(str(path), "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="zip archive but not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_container_without_state_dict(tmp_path):
    path = save(tmp_path / "odd.pt", {"epoch": 3, "weights_list": [torch.zeros(2)]})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "no state_dict found" in one_line(info) and "epoch (int)" in str(info.value)


# -- does not fit ----------------------------------------------------------------------------------

def test_state_dict_that_does_not_fit_gives_a_diff(tmp_path, classifier_ref):
    state = dict(classifier_ref.state_dict())
    del state["classifier.3.bias"]
    state["classifier.9.weight"] = torch.zeros(3)
    state["layer_norm.weight"] = torch.zeros(5)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(save(tmp_path / "bad.pt", state), "classifier", hints={"num_heads": 2})
    message = one_line(info)
    assert "does not fit the classifier model" in message
    assert "1 missing key (classifier.3.bias)" in message
    assert "1 unexpected key (classifier.9.weight)" in message
    assert "1 shape mismatch (layer_norm.weight: checkpoint [5] vs model [32])" in message


def test_wrong_family(tmp_path, classifier_ref):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(save(tmp_path / "cls.pt", classifier_ref.state_dict()), "captioner")
    assert "captioner checkpoint lacks tensor" in one_line(info)


def test_unknown_family_name(tmp_path, classifier_ref):
    with pytest.raises(UsageError, match="unknown model family 'transformer'; known families: captioner, classifier"):
        load_checkpoint(save(tmp_path / "cls.pt", classifier_ref.state_dict()), "transformer")


def test_unrecognised_keys_cannot_be_detected(tmp_path):
    path = save(tmp_path / "other.pt", nn.Linear(2, 2).state_dict())
    with pytest.raises(CheckpointError, match="cannot tell which model family.*--family"):
        load_checkpoint(path)


def test_classifier_without_num_heads(tmp_path, classifier_ref):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(save(tmp_path / "cls.pt", {"model_state_dict": classifier_ref.state_dict()}))
    assert "--num-heads" in one_line(info)


def test_num_heads_that_does_not_divide(tmp_path, classifier_ref):
    with pytest.raises(CheckpointError, match="does not divide"):
        load_checkpoint(save(tmp_path / "cls.pt", classifier_ref.state_dict()), hints={"num_heads": 5})


def test_statically_quantized_weights_are_refused(tmp_path):
    model = nn.Sequential(torch.ao.quantization.QuantStub(), nn.Conv2d(3, 4, 3), torch.ao.quantization.DeQuantStub())
    model.eval().qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = torch.ao.quantization.prepare(model)
        prepared(torch.randn(1, 3, 8, 8))
        quantized = torch.ao.quantization.convert(prepared)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(save(tmp_path / "static.pt", quantized.state_dict()), "classifier")
    assert "cannot dequantize" in one_line(info) and "only dynamic quantization" in str(info.value)


# -- side data -----------------------------------------------------------------------------------------

def test_word_map_size_disagrees_with_the_model(tmp_path, captioner_ref):
    path = save(tmp_path / "cap.pt", {"state_dict": captioner_ref.state_dict(), "word_map": {
        w: i for i, w in enumerate(WORDS[:-2])}})
    with pytest.raises(CheckpointError, match="has 10 words but the model's output layer has 12"):
        load_checkpoint(path, hints=CAPTIONER_HINTS)


def test_word_map_without_special_tokens(tmp_path, captioner_ref):
    words = ["w{}".format(i) for i in range(len(WORDS))]
    path = save(tmp_path / "cap.pt", {"state_dict": captioner_ref.state_dict(), "itos": words})
    with pytest.raises(CheckpointError, match=r"checkpoint\['itos'\]: vocabulary lacks the special token"):
        load_checkpoint(path, hints=CAPTIONER_HINTS)


def test_missing_side_word_map(tmp_path, captioner_ref):
    path = save(tmp_path / "cap.pt", captioner_ref.state_dict())
    with pytest.raises(UsageError, match="word map file not found"):
        load_checkpoint(path, word_map="WORDMAP.json", hints=CAPTIONER_HINTS)


def test_side_word_map_that_is_not_json(tmp_path, captioner_ref):
    path = save(tmp_path / "cap.pt", captioner_ref.state_dict())
    (tmp_path / "WORDMAP.json").write_text("{not json")
    with pytest.raises(UsageError, match="not valid JSON"):
        load_checkpoint(path, word_map=tmp_path / "WORDMAP.json", hints=CAPTIONER_HINTS)


def test_labels_for_a_captioner(tmp_path, captioner_ref):
    path = save(tmp_path / "cap.pt", {"state_dict": captioner_ref.state_dict(), "word_map": word_map()})
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(UsageError, match="--labels was given but the captioner family has no classes"):
        load_checkpoint(path, labels=tmp_path / "labels.json", hints=CAPTIONER_HINTS)


def test_label_count_disagrees_with_the_model(tmp_path, classifier_ref):
    path = save(tmp_path / "cls.pt", {"state_dict": classifier_ref.state_dict(), "classes": ["a", "b"]})
    with pytest.raises(CheckpointError, match=r"checkpoint\['classes'\] has 2 class names but the model outputs 3"):
        load_checkpoint(path, hints={"num_heads": 2})


# -- memory --------------------------------------------------------------------------------------------

def test_not_enough_memory_is_refused_before_loading(tmp_path, classifier_ref):
    path = save(tmp_path / "cls.pt", classifier_ref.state_dict())
    with pytest.raises(InsufficientMemoryError) as info:
        load_checkpoint(path, hints={"num_heads": 2}, max_memory_mb=0.05)
    message = one_line(info)
    assert "needs about" in message and "only 51.2 KiB is available (--max-memory-mb 0.05)" in message
    assert info.value.exit_code == 2 and isinstance(info.value, JetcapError)


def test_not_enough_memory_for_the_dequantized_model(tmp_path, classifier_ref):
    """The file is small (int8 weights) but the float model is not: the second check, before building."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.ao.quantization.quantize_dynamic(classifier_ref, {nn.Linear, nn.LSTM})
    path = save(tmp_path / "q.pt", quantized.state_dict())
    from jetcap.models.state_dict import tensor_bytes

    float_bytes = tensor_bytes(classifier_ref.state_dict())
    budget_mb = (path.stat().st_size * 3 + 1000) / 2 ** 20  # enough for the file, not for 3x the float tensors
    assert float_bytes * 3 > budget_mb * 2 ** 20
    with pytest.raises(InsufficientMemoryError, match="float32 tensors"):
        load_checkpoint(path, hints={"num_heads": 2}, max_memory_mb=budget_mb)


def test_bad_memory_budget(tmp_path, classifier_ref):
    with pytest.raises(UsageError, match="--max-memory-mb must be positive"):
        load_checkpoint(save(tmp_path / "cls.pt", classifier_ref.state_dict()), max_memory_mb=0)
