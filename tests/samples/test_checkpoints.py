"""The shipped checkpoints: safe to load, complete, and they do what samples.json says."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jetcap.samples as samples  # noqa: E402
from jetcap.models.registry import detect_family, get_family  # noqa: E402
from jetcap.samples import gestures, shapes  # noqa: E402


@pytest.fixture(scope="session")
def meta():
    return json.loads(samples.samples_json().read_text())


@pytest.fixture(scope="session")
def captioner_ckpt():
    return torch.load(str(samples.captioner_checkpoint()), map_location="cpu", weights_only=True)


@pytest.fixture(scope="session")
def classifier_ckpt():
    return torch.load(str(samples.classifier_checkpoint()), map_location="cpu", weights_only=True)


def _plain(obj):
    """Only plain containers, scalars, strings and tensors."""
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return all(_plain(v) for v in obj)
    return obj is None or isinstance(obj, (str, int, float, bool, torch.Tensor))


def test_checkpoint_files_are_small():
    for path in (samples.captioner_checkpoint(), samples.classifier_checkpoint()):
        assert 100_000 < path.stat().st_size < 15_000_000


def test_captioner_checkpoint_contents(captioner_ckpt):
    assert _plain(captioner_ckpt)
    config = captioner_ckpt["config"]
    assert config["backbone"] == "mobilenet_v3_small" and config["grid"] is None
    assert config["image_size"] == 96 and config["max_len"] >= 11
    assert len(config["mean"]) == len(config["std"]) == 3
    assert captioner_ckpt["word_map"] == shapes.word_map()
    assert config["vocab_size"] == len(captioner_ckpt["word_map"])
    assert isinstance(captioner_ckpt["epoch"], int)
    assert captioner_ckpt["metrics"]["test_exact_match"] >= 0.9
    assert captioner_ckpt["metrics"]["test_images"] >= 200
    assert all(v.dtype in (torch.float32, torch.int64) for v in captioner_ckpt["model_state_dict"].values())


def test_classifier_checkpoint_contents(classifier_ckpt):
    assert _plain(classifier_ckpt)
    config = classifier_ckpt["config"]
    assert config["num_heads"] == 4 and config["input_size"] == 63 and config["max_len"] >= 120
    assert classifier_ckpt["classes"] == gestures.CLASSES
    assert config["num_classes"] == len(gestures.CLASSES)
    assert classifier_ckpt["metrics"]["test_accuracy"] >= 0.95


def test_registry_recognises_them_and_reads_shapes_like_the_config(captioner_ckpt, classifier_ckpt):
    assert detect_family(captioner_ckpt["model_state_dict"]).name == "captioner"
    assert detect_family(classifier_ckpt["model_state_dict"]).name == "classifier"
    inferred = get_family("captioner").infer_config(captioner_ckpt["model_state_dict"], {})
    config = captioner_ckpt["config"]
    for key in ("vocab_size", "embed_dim", "decoder_dim", "attention_dim", "encoder_dim", "backbone"):
        assert inferred[key] == config[key], key
    inferred = get_family("classifier").infer_config(classifier_ckpt["model_state_dict"], {"num_heads": 4})
    config = classifier_ckpt["config"]
    for key in ("input_size", "num_classes", "conv_channels", "kernel_size", "hidden_size", "num_layers", "max_len"):
        assert inferred[key] == config[key], key


@pytest.fixture(scope="session")
def captioner(captioner_ckpt):
    model = get_family("captioner").build(captioner_ckpt["config"])
    model.load_state_dict(captioner_ckpt["model_state_dict"])
    return model.eval()


def test_captioner_captions_the_sample_images(captioner, captioner_ckpt, meta):
    from PIL import Image

    config, word_map = captioner_ckpt["config"], captioner_ckpt["word_map"]
    itos = {i: w for w, i in word_map.items()}
    images = []
    for path in samples.sample_images():
        with Image.open(str(path)) as image:
            images.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    x = (np.stack(images) - np.array(config["mean"], dtype=np.float32)) / np.array(config["std"], dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    hyps = captioner.caption(x, word_map["<start>"], word_map["<end>"], config["max_len"])
    predicted = [" ".join(itos[t] for t in h.tokens) for h in hyps]
    assert predicted == [e["caption"] for e in meta["images"]]
    assert all(h.finished for h in hyps)


def test_classifier_labels_the_sample_sequences(classifier_ckpt, meta):
    model = get_family("classifier").build(classifier_ckpt["config"])
    model.load_state_dict(classifier_ckpt["model_state_dict"])
    model.eval()
    for entry in meta["sequences"]:
        seq = np.load(str(samples.sample_dir() / entry["file"]))
        with torch.no_grad():
            logits, attention = model(torch.from_numpy(seq)[None])
        assert attention.shape == (1, len(seq), len(seq))
        assert int(logits.argmax()) == entry["label"], entry["file"]
