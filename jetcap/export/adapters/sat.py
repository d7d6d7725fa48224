"""The built-in Show-Attend-Tell adapter: calls the user's own encoder and decoder modules by the
conventional names of the widely copied Show-Attend-Tell code bases.

Looked up on the decoder (first name found wins):

* initial state: a method ``init_hidden_state(features)`` / ``get_init_lstm_state(features)`` /
  ``init_hidden(features)``, else ``init_h``/``init_c`` applied to the mean feature;
* attention: the module ``attention`` called as ``attention(features, h) -> (context, alpha)``: the
  user's own arithmetic (ReLU or tanh, ``encoder_att``/``decoder_att``/``full_att`` or ``W``/``U``/``v``);
* gate: ``f_beta`` (sigmoid of ``f_beta(h)`` times the context), when present;
* embedding ``embedding``; recurrent cell ``decode_step`` / ``lstm`` / ``rnn`` / ``cell`` (an ``nn.LSTMCell``)
  fed ``cat([embedding, context])``; output layer ``fc`` / ``deep_output`` / ``out`` / ``linear``.

The encoder is the user's ``encoder`` module; a ``(B, H, W, C)`` or ``(B, C, H, W)`` output is
flattened to ``(B, H*W, C)`` as those decoders do.  The once-per-image attention projection of the
features (the attention's ``nn.Linear`` that is applied to the features themselves) is moved into the
encoder graph when one is found; :func:`jetcap.export.subject` proves the optimised step equal to the
plain one.  Anything else (a multi-layer ``nn.LSTM``, a different concatenation order, a deep output
layer over several inputs) needs an adapter file: the export compares this adapter with the decoder's
own ``forward`` and refuses when they disagree.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, List, Optional

from jetcap.errors import UsageError
from jetcap.export.adapters.base import CaptionerAdapter, first_attr, part
from jetcap.util.lazy import require

torch = require("torch")
nn = torch.nn

INIT_METHODS = ("init_hidden_state", "get_init_lstm_state", "init_hidden")
CELL_NAMES = ("decode_step", "lstm", "rnn", "cell", "lstm_cell", "decoder_cell")
OUTPUT_NAMES = ("fc", "deep_output", "out", "linear", "output_layer", "classifier")


class _CachedProjection(nn.Module):
    """Stands in for the attention's feature projection: returns the precomputed ``projected`` when
    called on the features tensor itself, otherwise computes as the original does."""

    def __init__(self, original):
        super().__init__()
        self.original = original
        self.source: Any = None
        self.value: Any = None
        self.used = False

    def forward(self, x):
        if self.source is not None and x is self.source:
            self.used = True
            return self.value
        return self.original(x)


class ShowAttendTellAdapter(CaptionerAdapter):
    """Adapter over an encoder/decoder pair written in the Show-Attend-Tell style."""

    name = "show-attend-tell (built-in adapter over the user's modules)"

    def __init__(self, model):
        self.encoder = part(model, "encoder", "cnn", "encoder_cnn")
        self.decoder = part(model, "decoder", "rnn", "decoder_rnn")
        decoder = self.decoder
        self.attention = getattr(decoder, "attention", None)
        if not isinstance(self.attention, nn.Module):
            raise UsageError("the decoder has no 'attention' module; the built-in Show-Attend-Tell adapter needs one",
                             hint="write an adapter file (docs/EXPORT.md, 'Adapters') and pass --adapter")
        if not isinstance(getattr(decoder, "embedding", None), nn.Embedding):
            raise UsageError("the decoder has no nn.Embedding 'embedding'", hint="write an adapter file (--adapter)")
        found = first_attr(decoder, CELL_NAMES)
        if found is None or not isinstance(found[1], nn.LSTMCell):
            kind = type(found[1]).__name__ if found else "none"
            raise UsageError("the decoder's recurrent cell is not an nn.LSTMCell named {} (found: {})".format(
                "/".join(CELL_NAMES), kind), hint="a multi-layer nn.LSTM or another cell needs an adapter file "
                                                  "(docs/EXPORT.md, 'Adapters'): pass --adapter FILE.py")
        self.cell_name, self.cell = found
        found = first_attr(decoder, OUTPUT_NAMES)
        if found is None or not isinstance(found[1], nn.Linear):
            raise UsageError("the decoder has no nn.Linear output layer named {}".format("/".join(OUTPUT_NAMES)),
                             hint="write an adapter file (--adapter)")
        self.output_name, self.output = found
        self.init_method = next((m for m in INIT_METHODS if callable(getattr(decoder, m, None))), None)
        if self.init_method is None and not (isinstance(getattr(decoder, "init_h", None), nn.Linear)
                                             and isinstance(getattr(decoder, "init_c", None), nn.Linear)):
            raise UsageError("the decoder has neither an init_hidden_state()-style method nor init_h/init_c layers",
                             hint="write an adapter file (--adapter)")
        self.gate = getattr(decoder, "f_beta", None) if isinstance(getattr(decoder, "f_beta", None), nn.Linear) else None
        self.encoder_dim = self.cell.input_size - decoder.embedding.embedding_dim
        self.projection: Optional[str] = None  # attribute of the attention module moved to the encoder
        self.state = ("h", "c")
        self.context = ("features",)
        self.int8_keep_float = (self.cell_name + "/", "/" + self.output_name + "/")
        self.notes: List[str] = []

    # -- the protocol ---------------------------------------------------------------------------
    def features(self, images):
        """The user's encoder output as ``(B, pixels, encoder_dim)``."""
        out = self.encoder(images)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if out.dim() == 4:
            if out.shape[-1] == self.encoder_dim:
                out = out.flatten(1, 2)
            elif out.shape[1] == self.encoder_dim:
                out = out.flatten(2).transpose(1, 2)
        if out.dim() != 3 or out.shape[-1] != self.encoder_dim:
            raise UsageError("the encoder returns {} but the decoder expects (batch, pixels, {}) features".format(
                tuple(out.shape), self.encoder_dim))
        return out

    def encode(self, model, images) -> Dict[str, Any]:
        features = self.features(images)
        h, c = self.initial_state(features)
        out = {"features": features, "h": h, "c": c}
        if self.projection is not None:
            out["projected"] = getattr(self.attention, self.projection)(features)
        return out

    def initial_state(self, features):
        if self.init_method is not None:
            h, c = getattr(self.decoder, self.init_method)(features)
            return h, c
        mean = features.mean(dim=1)
        return self.decoder.init_h(mean), self.decoder.init_c(mean)

    def step(self, model, words, h, c, features, projected=None) -> Dict[str, Any]:
        with self._projection(features, projected):
            context, alpha = self.attention(features, h)
        if self.gate is not None:
            context = torch.sigmoid(self.gate(h)) * context
        embedded = self.decoder.embedding(words)
        h, c = self.cell(torch.cat([embedded, context], dim=1), (h, c))
        return {"scores": self.output(h), "h": h, "c": c, "alpha": alpha}

    # -- the once-per-image projection ------------------------------------------------------------
    @contextlib.contextmanager
    def _projection(self, features, projected):
        if self.projection is None or projected is None:
            yield
            return
        original = getattr(self.attention, self.projection)
        cached = _CachedProjection(original)
        cached.source, cached.value = features, projected
        setattr(self.attention, self.projection, cached)
        try:
            yield
        finally:
            setattr(self.attention, self.projection, original)
        if not cached.used:
            raise UsageError("the attention did not use its cached feature projection {!r}".format(self.projection))

    def find_projection(self, features, h) -> Optional[str]:
        """The attention's ``nn.Linear`` child applied to the features tensor itself (None if none)."""
        seen: List[str] = []
        hooks = []
        for name, child in self.attention.named_children():
            if isinstance(child, nn.Linear):
                def hook(module, inputs, output, name=name):
                    if inputs and inputs[0] is features:
                        seen.append(name)
                hooks.append(child.register_forward_hook(hook))
        try:
            with torch.no_grad():
                self.attention(features, h)
        finally:
            for handle in hooks:
                handle.remove()
        return seen[0] if len(set(seen)) == 1 and len(seen) == 1 else None

    def enable_projection(self, name: str) -> None:
        self.projection = name
        self.context = ("features", "projected")
