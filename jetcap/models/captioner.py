"""Image captioner family: MobileNet/ResNet encoder + Show-Attend-Tell attention-LSTM decoder.

Attribute names follow the widely copied Show-Attend-Tell code (``attention.encoder_att``,
``decoder_att``, ``full_att``, ``embedding``, ``decode_step``, ``init_h``, ``init_c``, ``f_beta``,
``fc``) so its checkpoints load without renaming.  Exported as two graphs: ``encoder`` (everything
that does not depend on the decoder state, once per image) and ``decoder_step`` (one word).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jetcap.errors import CheckpointError
from jetcap.models.registry import GraphSpec, ModelFamily, TaskThresholds, TensorSpec, Tolerance, register
from jetcap.runtime import decoding

BACKBONES = ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "resnet18", "resnet50", "resnet101")
MOBILENET_V2_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Alternative spellings of the backbone container seen in user checkpoints -> canonical prefix.
BACKBONE_ALIASES = ("encoder.mobilenet.features.", "encoder.mobilenet.", "encoder.resnet.",
                    "encoder.features.", "encoder.cnn.")


def make_backbone(name: str, width_mult: float = 1.0) -> Tuple[nn.Module, int]:
    """The convolutional trunk of a torchvision model (no classifier) and its output channels."""
    import torchvision.models as tvm

    if name == "mobilenet_v2":
        net = tvm.mobilenet_v2(weights=None, width_mult=width_mult)
        return net.features, net.last_channel
    if name in ("mobilenet_v3_small", "mobilenet_v3_large"):
        net = getattr(tvm, name)(weights=None)
        return net.features, net.features[-1].out_channels
    if name in ("resnet18", "resnet50", "resnet101"):
        net = getattr(tvm, name)(weights=None)
        return nn.Sequential(*list(net.children())[:-2]), net.fc.in_features
    raise CheckpointError("unknown backbone {!r}; choose one of {}".format(name, ", ".join(BACKBONES)))


class Encoder(nn.Module):
    """CNN trunk + optional adaptive pooling to a ``grid`` x ``grid`` feature map."""

    def __init__(self, backbone: str = "mobilenet_v2", width_mult: float = 1.0, grid: Optional[int] = 7):
        super().__init__()
        self.backbone, self.encoder_dim = make_backbone(backbone, width_mult)
        self.adaptive_pool = nn.AdaptiveAvgPool2d((grid, grid)) if grid else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        fmap = self.adaptive_pool(self.backbone(images))  # (B, C, g, g)
        return fmap.flatten(2).transpose(1, 2)  # (B, P, C)


class Attention(nn.Module):
    """Additive (Bahdanau) attention over encoder pixels."""

    def __init__(self, encoder_dim: int, decoder_dim: int, attention_dim: int):
        super().__init__()
        self.encoder_att = nn.Linear(encoder_dim, attention_dim)
        self.decoder_att = nn.Linear(decoder_dim, attention_dim)
        self.full_att = nn.Linear(attention_dim, 1)

    def forward(self, projected: torch.Tensor, features: torch.Tensor, h: torch.Tensor):
        """``projected`` is ``encoder_att(features)``, computed once per image."""
        scores = self.full_att(F.relu(projected + self.decoder_att(h).unsqueeze(1))).squeeze(2)
        alpha = F.softmax(scores, dim=1)
        context = (features * alpha.unsqueeze(2)).sum(dim=1)
        return context, alpha


class DecoderWithAttention(nn.Module):
    """Show-Attend-Tell decoder: embedding, attention, gated context, LSTMCell, output layer."""

    def __init__(self, vocab_size: int, embed_dim: int, decoder_dim: int, attention_dim: int,
                 encoder_dim: int, dropout: float = 0.5):
        super().__init__()
        self.vocab_size = vocab_size
        self.attention = Attention(encoder_dim, decoder_dim, attention_dim)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(p=dropout)
        self.decode_step = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim)
        self.init_h = nn.Linear(encoder_dim, decoder_dim)
        self.init_c = nn.Linear(encoder_dim, decoder_dim)
        self.f_beta = nn.Linear(decoder_dim, encoder_dim)
        self.fc = nn.Linear(decoder_dim, vocab_size)

    def prepare(self, features: torch.Tensor):
        """Per-image work: projected features and the initial LSTM state."""
        mean = features.mean(dim=1)
        return self.attention.encoder_att(features), self.init_h(mean), self.init_c(mean)

    def step(self, prev_words, h, c, features, projected):
        """One decoding step -> (scores (B, V), h, c, alpha (B, P))."""
        context, alpha = self.attention(projected, features, h)
        context = torch.sigmoid(self.f_beta(h)) * context
        h, c = self.decode_step(torch.cat([self.embedding(prev_words), context], dim=1), (h, c))
        return self.fc(self.dropout(h)), h, c, alpha


class MobileNetCaptioningModel(nn.Module):
    """The captioner: ``encoder`` + ``decoder`` with a teacher-forced ``forward`` for training."""

    def __init__(self, vocab_size: int, embed_dim: int = 256, decoder_dim: int = 512, attention_dim: int = 256,
                 backbone: str = "mobilenet_v2", width_mult: float = 1.0, grid: Optional[int] = 7,
                 dropout: float = 0.5):
        super().__init__()
        self.encoder = Encoder(backbone, width_mult, grid)
        self.decoder = DecoderWithAttention(vocab_size, embed_dim, decoder_dim, attention_dim,
                                            self.encoder.encoder_dim, dropout)

    def forward(self, images: torch.Tensor, captions: torch.Tensor):
        """Teacher forcing: ``captions`` (B, L) starts with <start>; returns scores (B, L-1, V), alphas."""
        features = self.encoder(images)
        projected, h, c = self.decoder.prepare(features)
        scores, alphas = [], []
        for t in range(captions.size(1) - 1):
            step_scores, h, c, alpha = self.decoder.step(captions[:, t], h, c, features, projected)
            scores.append(step_scores)
            alphas.append(alpha)
        return torch.stack(scores, 1), torch.stack(alphas, 1)

    @torch.no_grad()
    def caption(self, images: torch.Tensor, start_id: int, end_id: int, max_len: int = 20,
                beam_size: int = 1) -> List[decoding.Hypothesis]:
        """Reference decode (greedy when ``beam_size`` is 1) with the shared numpy search."""
        features = self.encoder(images)
        if beam_size == 1:
            session = TorchDecoderSession(self.decoder, features)
            return decoding.greedy_decode(session, images.size(0), start_id, end_id, max_len)
        return [
            decoding.beam_search(TorchDecoderSession(self.decoder, features[i:i + 1]), beam_size,
                                 start_id, end_id, max_len)
            for i in range(images.size(0))
        ]


class TorchDecoderSession:
    """Decoder session (see ``jetcap.runtime.decoding``) running the PyTorch decoder step on the features'
    device (the CPU, or a GPU for ``jetcap bench --device cuda``); the search reads numpy arrays."""

    def __init__(self, decoder: DecoderWithAttention, features: torch.Tensor):
        self.decoder = decoder
        self.features = features
        self.projected, self.h, self.c = decoder.prepare(features)

    def step(self, prev_words: np.ndarray):
        words = torch.from_numpy(np.asarray(prev_words, dtype=np.int64)).to(self.features.device)
        scores, self.h, self.c, alpha = self.decoder.step(words, self.h, self.c, self.features, self.projected)
        return F.log_softmax(scores, dim=1).cpu().numpy(), alpha.cpu().numpy()

    def reorder(self, rows: np.ndarray) -> None:
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.features.device)
        self.h, self.c = self.h[index], self.c[index]
        self.features, self.projected = self.features[index], self.projected[index]


class EncoderGraph(nn.Module):
    """Export wrapper: images -> features, projected features, h0, c0."""

    def __init__(self, model: MobileNetCaptioningModel):
        super().__init__()
        self.model = model

    def forward(self, images):
        features = self.model.encoder(images)
        projected, h, c = self.model.decoder.prepare(features)
        return features, projected, h, c


class DecoderStepGraph(nn.Module):
    """Export wrapper: one step, returning log-probabilities (the search works on those)."""

    def __init__(self, model: MobileNetCaptioningModel):
        super().__init__()
        self.model = model

    def forward(self, prev_word, h, c, features, projected):
        scores, h, c, alpha = self.model.decoder.step(prev_word, h, c, features, projected)
        return F.log_softmax(scores, dim=1), h, c, alpha


class CaptionerFamily(ModelFamily):
    """Spec of the captioner family."""

    def build(self, config: Dict[str, Any]) -> MobileNetCaptioningModel:
        return MobileNetCaptioningModel(
            vocab_size=config["vocab_size"], embed_dim=config["embed_dim"], decoder_dim=config["decoder_dim"],
            attention_dim=config["attention_dim"], backbone=config["backbone"],
            width_mult=config.get("width_mult", 1.0), grid=config.get("grid"), dropout=config.get("dropout", 0.5))

    def normalize_keys(self, state_dict: Dict[str, Any]) -> Dict[str, Any]:
        out = {}
        for key, value in state_dict.items():
            for alias in BACKBONE_ALIASES:
                if key.startswith(alias):
                    key = "encoder.backbone." + key[len(alias):]
                    break
            out[key] = value
        return out

    def matches(self, state_dict: Mapping[str, Any]) -> bool:
        return "decoder.decode_step.weight_ih" in state_dict and "decoder.attention.full_att.weight" in state_dict

    def infer_config(self, state_dict: Mapping[str, Any], hints: Mapping[str, Any]) -> Dict[str, Any]:
        def shape(key):
            if key not in state_dict:
                raise CheckpointError("captioner checkpoint lacks tensor {!r}".format(key))
            return tuple(state_dict[key].shape)

        vocab_size, embed_dim = shape("decoder.embedding.weight")
        attention_dim, encoder_dim = shape("decoder.attention.encoder_att.weight")
        decoder_dim = shape("decoder.init_h.weight")[0]
        config: Dict[str, Any] = {
            "vocab_size": vocab_size, "embed_dim": embed_dim, "decoder_dim": decoder_dim,
            "attention_dim": attention_dim, "encoder_dim": encoder_dim, "grid": 7, "dropout": 0.5,
            "image_size": 224, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "max_len": 20,
        }
        if not hints.get("backbone"):
            config.update(infer_backbone(state_dict, encoder_dim))
        config.update(hints)
        if config["backbone"] not in BACKBONES:
            raise CheckpointError("unknown backbone {!r}".format(config["backbone"]))
        return config

    def graphs(self, config: Dict[str, Any]) -> List[GraphSpec]:
        C, A, D, V = config["encoder_dim"], config["attention_dim"], config["decoder_dim"], config["vocab_size"]
        size = config.get("image_size", 224)
        dynamic_size = bool(config.get("dynamic_image_size"))
        hw = ("height", "width") if dynamic_size else (size, size)
        pixels: Any = "num_pixels" if dynamic_size or not config.get("grid") else config["grid"] ** 2
        if not dynamic_size and not config.get("grid"):
            pixels = _grid_pixels(config)
        encoder = GraphSpec("encoder", (TensorSpec("images", "float32", ("batch", 3) + hw),), (
            TensorSpec("features", "float32", ("batch", pixels, C)),
            TensorSpec("projected", "float32", ("batch", pixels, A)),
            TensorSpec("h0", "float32", ("batch", D)),
            TensorSpec("c0", "float32", ("batch", D)),
        ))
        step = GraphSpec("decoder_step", (
            TensorSpec("prev_word", "int64", ("batch",)),
            TensorSpec("h", "float32", ("batch", D)),
            TensorSpec("c", "float32", ("batch", D)),
            TensorSpec("features", "float32", ("batch", pixels, C)),
            TensorSpec("projected", "float32", ("batch", pixels, A)),
        ), (
            TensorSpec("log_probs", "float32", ("batch", V)),
            TensorSpec("h_new", "float32", ("batch", D)),
            TensorSpec("c_new", "float32", ("batch", D)),
            TensorSpec("alpha", "float32", ("batch", pixels)),
        ))
        return [encoder, step]

    def graph_module(self, model: MobileNetCaptioningModel, graph: str) -> nn.Module:
        # the wrapper takes the model's mode: torch.onnx.export restores the wrapper's mode recursively
        return {"encoder": EncoderGraph, "decoder_step": DecoderStepGraph}[graph](model).train(model.training)

    def dummy_inputs(self, config: Dict[str, Any], graph: str, axes: Mapping[str, int], seed: int = 0):
        rng = np.random.RandomState(seed)
        spec = {g.name: g for g in self.graphs(config)}[graph]
        out = {}
        for tensor in spec.inputs:
            dims = [axes[d] if isinstance(d, str) else d for d in tensor.shape]
            if tensor.name == "prev_word":
                out[tensor.name] = rng.randint(0, config["vocab_size"], size=dims).astype(np.int64)
            elif tensor.name == "images":
                out[tensor.name] = rng.normal(0.0, 1.0, size=dims).astype(np.float32)
            elif tensor.name == "features":
                out[tensor.name] = np.abs(rng.normal(0.0, 1.0, size=dims)).astype(np.float32)
            elif tensor.name in ("h", "c", "projected"):
                out[tensor.name] = rng.normal(0.0, 0.5, size=dims).astype(np.float32)
            else:
                raise KeyError("no dummy-input generator for captioner input {!r}".format(tensor.name))
        return out


def _grid_pixels(config: Mapping[str, Any]) -> int:
    """Pixels of the un-pooled feature map at the configured image size (stride 32 trunks)."""
    side = -(-int(config.get("image_size", 224)) // 32)
    return side * side


def infer_backbone(state_dict: Mapping[str, Any], encoder_dim: int) -> Dict[str, Any]:
    """Find the torchvision trunk (and MobileNetV2 width) whose tensor shapes equal the checkpoint's."""
    wanted = {k[len("encoder.backbone."):]: tuple(v.shape) for k, v in state_dict.items()
              if k.startswith("encoder.backbone.")}
    if not wanted:
        raise CheckpointError("captioner checkpoint has no encoder.backbone.* tensors",
                              hint="pass --backbone if the encoder is stored elsewhere")
    candidates = [("mobilenet_v2", w) for w in MOBILENET_V2_WIDTHS] + [(b, 1.0) for b in BACKBONES[1:]]
    for name, width in candidates:
        with torch.device("meta"):
            trunk, channels = make_backbone(name, width)
        if channels != encoder_dim:
            continue
        shapes = {k: tuple(v.shape) for k, v in trunk.state_dict().items()}
        if shapes == wanted:
            return {"backbone": name, "width_mult": width}
    raise CheckpointError("the encoder tensors match none of the known backbones ({})".format(", ".join(BACKBONES)),
                          hint="pass --backbone and check the checkpoint")


# The reduced precisions let 10 elements per million past their bound, none past twice it.  The
# encoder's `features` of a ResNet-101 at 256x256 is 401 408 elements per image: FP16 stays within
# 0.80 of its bound on one image and reaches 1.16 on a batch of eight (2 elements of 3.2 M out, the
# largest 1.16x; the 10-per-million quantile is 0.73), so a rule of "no element out" judged the size
# of the batch, not the variant.  FP32 keeps no allowance: any element out there is a real difference.
REDUCED_PRECISION_TAIL = {"outlier_fraction": 1e-5, "outlier_cap": 2.0}


register(CaptionerFamily(
    name="captioner",
    description="MobileNet/ResNet encoder + Show-Attend-Tell attention-LSTM decoder",
    # INT8: the LSTMCell stays float (TensorRT 8.2 has no INT8 recurrence), and so does the output layer
    # fc, whose input is the state h_new: quantizing it would fake-quantize the carried state too
    int8_keep_float=("decode_step", "/fc/"),
    tolerances={
        "fp32": Tolerance(atol=1e-3, rtol=1e-3, min_cosine=0.99999),
        "fp16": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999, **REDUCED_PRECISION_TAIL),
        # INT8: cosine and the task level carry the verdict; a few elements of a 9k-element output may sit
        # ~1.3 away (measured on the sample captioner: features cos 0.997, 100 % identical captions)
        "int8": Tolerance(atol=1.5, rtol=5e-1, min_cosine=0.99, **REDUCED_PRECISION_TAIL),
        # int8-cpu (dynamic u8s8 weights) measured: cos >= 0.99965, max abs 0.46 (COCO-sized step), 0.09 (samples)
        "int8-cpu": Tolerance(atol=1.0, rtol=5e-1, min_cosine=0.999, **REDUCED_PRECISION_TAIL),
    },
    task_thresholds={
        "fp32": TaskThresholds(min_exact_match=1.0, max_bleu_drop=0.0),
        "fp16": TaskThresholds(min_exact_match=0.99, max_bleu_drop=1.0),
        # INT8 as int8-cpu: 97 % of the captions PyTorch's (at 95 % a ResNet-101 SAT variant passed with
        # a BLEU drop of 2.6 on 200 unseen images)
        "int8": TaskThresholds(min_exact_match=0.97, max_bleu_drop=2.0),
        # measured on 200 COCO-sized-model images: greedy 99.0 %, beam-3 98.0 % (BLEU drop 1.32)
        "int8-cpu": TaskThresholds(min_exact_match=0.97, max_bleu_drop=2.0),
    },
))
