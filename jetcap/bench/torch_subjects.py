"""The PyTorch eager configurations of the benchmark (imported only in a child process; needs torch).

Two captioner decodes, both with the same preprocessing, the same shared greedy search and the same
weights as the bundle:

* ``pytorch``: the same algorithm as jetcap (:class:`jetcap.models.captioner.TorchDecoderSession`):
  the attention projection of the encoder features (``encoder_att``) once per image;
* ``pytorch-reproject``: the way Show-Attend-Tell code is usually written: the attention module is
  called on the raw features at every step, so ``encoder_att`` re-projects all pixels every word.
"""
import numpy as np
import torch
import torch.nn.functional as F

from jetcap.bench.subjects import greedy_tokens
from jetcap.models.captioner import TorchDecoderSession


class ReprojectingDecoderSession(object):
    """Decoder session re-projecting the features with ``attention.encoder_att`` at every step."""

    def __init__(self, decoder, features):
        self.decoder = decoder
        self.features = features
        mean = features.mean(dim=1)
        self.h, self.c = decoder.init_h(mean), decoder.init_c(mean)

    def step(self, prev_words):
        projected = self.decoder.attention.encoder_att(self.features)  # the per-step re-projection
        scores, self.h, self.c, alpha = self.decoder.step(
            torch.from_numpy(np.asarray(prev_words, dtype=np.int64)), self.h, self.c, self.features, projected)
        return F.log_softmax(scores, dim=1).numpy(), alpha.numpy()

    def reorder(self, rows):
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.h, self.c, self.features = self.h[index], self.c[index], self.features[index]


class TorchCaptioner(object):
    """The checkpoint's captioner in PyTorch eager mode (no_grad, eval)."""

    def __init__(self, model, vocab, max_len, reproject):
        self.model = model
        self.reproject = reproject
        self.start_id, self.end_id = vocab.start_id, vocab.end_id
        self.max_len = int(max_len)

    def encode(self, images):
        with torch.no_grad():
            features = self.model.encoder(torch.from_numpy(images))
            if self.reproject:  # the naive code computes only the initial state here
                mean = features.mean(dim=1)
                return features, self.model.decoder.init_h(mean), self.model.decoder.init_c(mean)
            return (features,) + tuple(self.model.decoder.prepare(features))

    def decoder_session(self, encoded):
        with torch.no_grad():
            if self.reproject:
                return _NoGrad(ReprojectingDecoderSession(self.model.decoder, encoded[0]))
            return _NoGrad(TorchDecoderSession(self.model.decoder, encoded[0]))

    def caption(self, images):
        with torch.no_grad():
            features = self.model.encoder(torch.from_numpy(images))
            if self.reproject:
                session = ReprojectingDecoderSession(self.model.decoder, features)
            else:
                session = TorchDecoderSession(self.model.decoder, features)
            return greedy_tokens(session, len(images), self.start_id, self.end_id, self.max_len)

    def close(self):
        self.model = None


class _NoGrad(object):
    """A decoder session whose steps run under ``torch.no_grad``."""

    def __init__(self, session):
        self.session = session

    def step(self, prev_words):
        with torch.no_grad():
            return self.session.step(prev_words)

    def reorder(self, rows):
        self.session.reorder(rows)


class TorchClassifier(object):
    """A classifier in PyTorch eager mode: ``logits_of(float32 array) -> numpy logits``, run under no_grad
    (the built-in family's ordinary forward, or the user's forward with the output export picked)."""

    def __init__(self, logits_of):
        self.logits_of = logits_of

    def logits(self, sequences):
        with torch.no_grad():
            return self.logits_of(np.ascontiguousarray(sequences, dtype=np.float32))

    def close(self):
        self.logits_of = None


class UserCodeCaptioner(object):
    """The user's captioner in PyTorch eager mode, as export ran it: their encoder, and one decoder step
    through the same adapter as the bundle's step graph (the same algorithm), with jetcap's greedy search."""

    def __init__(self, subject, max_len):
        self.subject = subject
        self.start_id, self.end_id = subject.vocab.start_id, subject.vocab.end_id
        self.max_len = int(max_len)

    def encode(self, images):
        with torch.no_grad():
            return self.subject.encode(images)

    def decoder_session(self, encoded):
        return _NoGrad(self.subject.decoder_session(encoded))

    def caption(self, images):
        with torch.no_grad():
            return [h.tokens for h in self.subject.caption(images, self.max_len)]

    def close(self):
        self.subject = None


def open_torch_subject(manifest, checkpoint, reproject=False, threads=None, checkpoint_options=None):
    """Load ``checkpoint`` (checked against the bundle's configuration) as a PyTorch subject: jetcap's
    built-in families from the tensors, or the user's code with ``checkpoint_options`` (``--model``,
    ``--adapter``, ``--trust-pickle``, ``--code-path``, as ``validate --checkpoint`` takes them)."""
    from jetcap.errors import UsageError
    from jetcap.validate.live import load_reference_subject

    if threads:
        torch.set_num_threads(int(threads))
    subject = load_reference_subject(manifest, str(checkpoint), checkpoint_options or {})
    if getattr(subject, "loaded", None) is None:  # the user's code
        if reproject:
            raise UsageError("pytorch-reproject times jetcap's built-in decoder; the user's code runs as pytorch")
        if manifest.family == "captioner":
            return UserCodeCaptioner(subject, manifest.decoding.get("max_len", 20))
        return TorchClassifier(subject.logits)
    model = subject.loaded.model.eval()
    if manifest.family == "captioner":
        return TorchCaptioner(model, manifest.vocabulary(), manifest.decoding.get("max_len", 20), reproject)
    return TorchClassifier(lambda sequences: model(torch.from_numpy(sequences))[0].numpy())
