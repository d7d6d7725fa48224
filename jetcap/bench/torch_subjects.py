"""The PyTorch eager configurations of the benchmark (imported only in a child process; needs torch).

Two captioner decodes, both with the same preprocessing, the same shared greedy search and the same
weights as the bundle:

* ``pytorch``: the same algorithm as jetcap (:class:`jetcap.models.captioner.TorchDecoderSession`):
  the attention projection of the encoder features (``encoder_att``) once per image;
* ``pytorch-reproject``: the way Show-Attend-Tell code is usually written: the attention module is
  called on the raw features at every step, so ``encoder_att`` re-projects all pixels every word.

On ``--device cuda`` the model, its inputs and the decoder state live on the GPU; each timed call ends
with its results on the host (the search reads numpy arrays, as jetcap's does) or, for the encoder and
a new decoder session, with ``torch.cuda.synchronize``, so no timing stops before the GPU's work has and
none inherits work queued before it.  Float32 math is strict FP32 there (TF32 off, as for ONNX Runtime:
:mod:`jetcap.bench.devices`).
"""
import numpy as np
import torch
import torch.nn.functional as F

from jetcap.bench.devices import strict_fp32
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
        words = torch.from_numpy(np.asarray(prev_words, dtype=np.int64)).to(self.features.device)
        scores, self.h, self.c, alpha = self.decoder.step(words, self.h, self.c, self.features, projected)
        return F.log_softmax(scores, dim=1).cpu().numpy(), alpha.cpu().numpy()

    def reorder(self, rows):
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.features.device)
        self.h, self.c, self.features = self.h[index], self.c[index], self.features[index]


def synchronize(device):
    """Wait for ``device``'s queued work (a GPU's kernels run asynchronously; nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device):
    """``{"model": [what ran it]}`` of a torch device, for the report (the bundle subjects name their graphs)."""
    if device.type == "cuda":
        return {"model": ["torch {} ({})".format(device, torch.cuda.get_device_name(device))]}
    return {"model": ["torch cpu"]}


def use_device(device):
    """The torch device for ``device``; on a GPU, float32 matmuls and convolutions in strict FP32."""
    target = torch.device(device)
    if target.type == "cuda":
        strict_fp32(torch)
    return target


class TorchCaptioner(object):
    """The checkpoint's captioner in PyTorch eager mode (no_grad, eval), on ``device`` ("cpu" or "cuda")."""

    def __init__(self, model, vocab, max_len, reproject, device="cpu"):
        self.device = use_device(device)
        self.model = model.to(self.device)
        self.reproject = reproject
        self.start_id, self.end_id = vocab.start_id, vocab.end_id
        self.max_len = int(max_len)

    def _features(self, images):
        return self.model.encoder(torch.from_numpy(images).to(self.device))

    def encode(self, images):
        with torch.no_grad():
            features = self._features(images)
            if self.reproject:  # the naive code computes only the initial state here
                mean = features.mean(dim=1)
                out = features, self.model.decoder.init_h(mean), self.model.decoder.init_c(mean)
            else:
                out = (features,) + tuple(self.model.decoder.prepare(features))
            synchronize(self.device)
            return out

    def decoder_session(self, encoded):
        with torch.no_grad():
            if self.reproject:
                session = ReprojectingDecoderSession(self.model.decoder, encoded[0])
            else:
                session = TorchDecoderSession(self.model.decoder, encoded[0])
            synchronize(self.device)  # its initial state is computed before the first timed step
            return _NoGrad(session)

    def caption(self, images):
        with torch.no_grad():
            features = self._features(images)
            if self.reproject:
                session = ReprojectingDecoderSession(self.model.decoder, features)
            else:
                session = TorchDecoderSession(self.model.decoder, features)
            return greedy_tokens(session, len(images), self.start_id, self.end_id, self.max_len)

    def ran_on(self):
        return describe(self.device)

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

    def __init__(self, logits_of, device="cpu"):
        self.logits_of = logits_of
        self.device = use_device(device)

    def logits(self, sequences):
        with torch.no_grad():
            return self.logits_of(np.ascontiguousarray(sequences, dtype=np.float32))

    def ran_on(self):
        return describe(self.device)

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

    def ran_on(self):
        return describe(torch.device("cpu"))

    def close(self):
        self.subject = None


def open_torch_subject(manifest, checkpoint, reproject=False, threads=None, checkpoint_options=None, device="cpu"):
    """Load ``checkpoint`` (checked against the bundle's configuration) as a PyTorch subject: jetcap's
    built-in families from the tensors, or the user's code with ``checkpoint_options`` (``--model``,
    ``--adapter``, ``--trust-pickle``, ``--code-path``, as ``validate --checkpoint`` takes them), on
    ``device`` ("cpu", or "cuda" for the built-in families)."""
    from jetcap.errors import UsageError
    from jetcap.validate.live import load_reference_subject

    if threads:
        torch.set_num_threads(int(threads))
    if device != "cpu" and not torch.cuda.is_available():
        raise UsageError("PyTorch on {} asked for, but torch {} sees no CUDA GPU".format(device, torch.__version__))
    subject = load_reference_subject(manifest, str(checkpoint), checkpoint_options or {})
    if getattr(subject, "loaded", None) is None:  # the user's code
        if device != "cpu":
            raise UsageError("PyTorch on the GPU is timed for jetcap's built-in families; the user's code runs on "
                             "the CPU")
        if reproject:
            raise UsageError("pytorch-reproject times jetcap's built-in decoder; the user's code runs as pytorch")
        if manifest.family == "captioner":
            return UserCodeCaptioner(subject, manifest.decoding.get("max_len", 20))
        return TorchClassifier(subject.logits)
    model = subject.loaded.model.eval()
    if manifest.family == "captioner":
        return TorchCaptioner(model, manifest.vocabulary(), manifest.decoding.get("max_len", 20), reproject, device)
    target = use_device(device)
    model = model.to(target)
    return TorchClassifier(lambda sequences: model(torch.from_numpy(sequences).to(target))[0].cpu().numpy(), target)
