"""Helpers of the checkpoint-loading tests: tiny model configs, label-encoder pickles, the SAT script."""
import contextlib
import pickle
import sys
import textwrap
import types

import numpy as np
import torch

WORDS = ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "blue", "circle", "square", "left", "of", "small"]
CLASSES = ["wave", "point", "pinch"]

CAPTIONER_CONFIG = dict(vocab_size=len(WORDS), embed_dim=8, decoder_dim=16, attention_dim=8,
                        backbone="mobilenet_v3_small", grid=2)
CLASSIFIER_CONFIG = dict(input_size=6, num_classes=len(CLASSES), conv_channels=(8,), hidden_size=16, num_layers=2,
                         num_heads=2, max_len=32)


def word_map():
    """A Show-Attend-Tell style word map: ``{word: id}`` with ``<start>``/``<end>``/``<pad>``/``<unk>``."""
    return {w: i for i, w in enumerate(WORDS)}


def same_weights(model, reference_state):
    """Assert the model's state_dict equals ``reference_state`` (same keys, equal values)."""
    state = model.state_dict()
    assert set(state) == set(reference_state)
    for key, value in reference_state.items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key


@contextlib.contextmanager
def sklearn_modules(cls):
    """Temporarily make ``sklearn.preprocessing._label.LabelEncoder`` resolve to ``cls`` so the pickler
    writes the same global reference a real scikit-learn pickle holds (scikit-learn is not installed)."""
    names = ["sklearn", "sklearn.preprocessing", "sklearn.preprocessing._label"]
    assert not any(n in sys.modules for n in names), "a real scikit-learn must not be around for this test"
    modules = [types.ModuleType(n) for n in names]
    modules[-1].LabelEncoder = cls
    sys.modules.update(zip(names, modules))
    try:
        yield
    finally:
        for name in names:
            del sys.modules[name]


def make_label_encoder_class():
    class LabelEncoder:
        """Stands for sklearn.preprocessing.LabelEncoder: same module path, same pickled state."""

        def __getstate__(self):
            return dict(self.__dict__, _sklearn_version="1.5.2")

    LabelEncoder.__module__ = "sklearn.preprocessing._label"
    LabelEncoder.__qualname__ = "LabelEncoder"
    return LabelEncoder


def label_encoder_pickle(classes, protocol=2, dtype=None):
    """Bytes of a pickled, fitted LabelEncoder whose ``classes_`` is a numpy array of ``classes``."""
    cls = make_label_encoder_class()
    encoder = cls()
    encoder.classes_ = np.array(classes, dtype=dtype)
    with sklearn_modules(cls):
        return pickle.dumps(encoder, protocol=protocol)


def label_encoder_object_checkpoint(path, state_dict, classes, **extra):
    """torch.save a dict holding a LabelEncoder *object* (not bytes) next to the weights."""
    cls = make_label_encoder_class()
    encoder = cls()
    encoder.classes_ = np.array(classes)
    with sklearn_modules(cls):
        torch.save(dict(model_state_dict=state_dict, label_encoder=encoder, **extra), str(path))


SAT_SCRIPT = textwrap.dedent('''
    """A Show-Attend-Tell style training script: classes defined here, so pickles reference __main__."""
    import sys
    from pathlib import Path

    import torch
    import torchvision
    from torch import nn


    class Encoder(nn.Module):
        def __init__(self, encoded_image_size=2):
            super().__init__()
            self.enc_image_size = encoded_image_size
            self.mobilenet = torchvision.models.mobilenet_v3_small(weights=None).features
            self.adaptive_pool = nn.AdaptiveAvgPool2d((encoded_image_size, encoded_image_size))

        def forward(self, images):
            out = self.adaptive_pool(self.mobilenet(images))
            return out.permute(0, 2, 3, 1)


    class Attention(nn.Module):
        def __init__(self, encoder_dim, decoder_dim, attention_dim):
            super().__init__()
            self.encoder_att = nn.Linear(encoder_dim, attention_dim)
            self.decoder_att = nn.Linear(decoder_dim, attention_dim)
            self.full_att = nn.Linear(attention_dim, 1)
            self.relu = nn.ReLU()
            self.softmax = nn.Softmax(dim=1)


    class DecoderWithAttention(nn.Module):
        def __init__(self, attention_dim, embed_dim, decoder_dim, vocab_size, encoder_dim=576, dropout=0.5):
            super().__init__()
            self.encoder_dim = encoder_dim
            self.attention_dim = attention_dim
            self.embed_dim = embed_dim
            self.decoder_dim = decoder_dim
            self.vocab_size = vocab_size
            self.dropout = dropout
            self.attention = Attention(encoder_dim, decoder_dim, attention_dim)
            self.embedding = nn.Embedding(vocab_size, embed_dim)
            self.dropout = nn.Dropout(p=self.dropout)
            self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim, bias=True)
            self.init_h = nn.Linear(encoder_dim, decoder_dim)
            self.init_c = nn.Linear(encoder_dim, decoder_dim)
            self.f_beta = nn.Linear(decoder_dim, encoder_dim)
            self.sigmoid = nn.Sigmoid()
            self.fc = nn.Linear(decoder_dim, vocab_size)


    class CaptionModel(nn.Module):
        def __init__(self, encoder, decoder):
            super().__init__()
            self.encoder = encoder
            self.decoder = decoder


    def build(module):
        torch.manual_seed(0)
        encoder = module.Encoder(2)
        decoder = module.DecoderWithAttention(attention_dim=8, embed_dim=8, decoder_dim=16, vocab_size=12)
        return encoder, decoder


    if __name__ == "__main__":
        out = Path(sys.argv[1])
        encoder, decoder = build(sys.modules[__name__])
        optimizer = torch.optim.Adam(decoder.parameters(), lr=4e-4)
        torch.save({"epoch": 3, "epochs_since_improvement": 0, "bleu-4": 0.21, "encoder": encoder,
                    "decoder": decoder, "encoder_optimizer": None, "decoder_optimizer": optimizer},
                   str(out / "sat_main.pth.tar"))
        torch.save(CaptionModel(encoder, decoder), str(out / "whole_main.pt"))
        torch.save({"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}, str(out / "reference.pt"))
        quantized = torch.ao.quantization.quantize_dynamic(decoder, {nn.Linear, nn.LSTMCell}, dtype=torch.qint8)
        torch.save({"encoder": encoder, "decoder": quantized}, str(out / "sat_quantized.pth.tar"))
        torch.save({"encoder": encoder.state_dict(), "decoder": quantized.state_dict()}, str(out / "quantized_reference.pt"))
        import train_sat  # the same classes under an importable module name

        encoder2, decoder2 = build(train_sat)
        torch.save({"encoder": encoder2, "decoder": decoder2}, str(out / "sat_module.pth.tar"))
''')


