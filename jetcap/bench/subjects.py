"""What one benchmark configuration runs, behind one small interface per task (Python 3.6).

A *captioner subject* has ``encode(images)``, ``decoder_session(encoded)`` (a decoder session of
:mod:`jetcap.runtime.decoding`: ``step(prev_words) -> (log_probs, alpha)``) and ``caption(images)``
(token lists, greedy); a *classifier subject* has ``logits(sequences)``.  The bundle subjects here run
jetcap's own runtime (ONNX Runtime or TensorRT, no torch); the PyTorch ones live in
:mod:`jetcap.bench.torch_subjects` and are imported only in a child process that benchmarks PyTorch.
"""
import numpy as np

from jetcap.errors import JetcapError
from jetcap.runtime import decoding

KINDS = ("pytorch-reproject", "pytorch", "onnxruntime", "tensorrt")


class BundleCaptioner(object):
    """The captioner as jetcap's runtime runs it: :class:`jetcap.runtime.pipeline.CaptionPipeline`."""

    def __init__(self, session):
        self.session = session
        self.pipeline = session.caption_pipeline()
        self.vocab = self.pipeline.vocab
        self.start_id, self.end_id = self.vocab.start_id, self.vocab.end_id
        self.max_len = int(session.manifest.decoding.get("max_len", 20))

    def encode(self, images):
        return self.pipeline.encode(images)

    def decoder_session(self, encoded):
        return self.pipeline.decoder_session(encoded)

    def caption(self, images):
        return [h.tokens for h in self.pipeline.caption(images, beam_size=1, max_len=self.max_len)]

    def ran_on(self):
        return ran_on(self.session)

    def close(self):
        self.session.close()


class BundleClassifier(object):
    """The classifier as jetcap's runtime runs it (its one graph, batched)."""

    def __init__(self, session):
        self.session = session
        self.runner = session.classifier_pipeline().runner

    def logits(self, sequences):
        return self.runner.infer({"sequence": np.ascontiguousarray(sequences, dtype=np.float32)})["logits"]

    def ran_on(self):
        return ran_on(self.session)

    def close(self):
        self.session.close()


def ran_on(session):
    """``{graph: what ran it}`` of a bundle session: ONNX Runtime's providers in use, or the backend."""
    out = {}
    for graph, runner in session.runners.items():
        providers = getattr(getattr(runner, "session", None), "get_providers", None)
        out[graph] = list(providers()) if providers is not None else [runner.backend]
    return out


def check_providers(session, providers):
    """JetcapError when ONNX Runtime fell back from the CUDA provider asked for (``onnxruntime-gpu`` whose
    CUDA or cuDNN libraries do not load runs everything on the CPU, with only a warning)."""
    from jetcap.bench.devices import provider_name

    if not providers or provider_name(providers[0]) != "CUDAExecutionProvider":
        return
    for graph, used in ran_on(session).items():
        if "CUDAExecutionProvider" not in used:
            raise JetcapError("ONNX Runtime did not put {} on the GPU (providers in use: {}): its CUDA or cuDNN "
                              "libraries did not load".format(graph, ", ".join(used)))


def open_subject(config, bundle, checkpoint=None, threads=None, checkpoint_options=None):
    """The subject of a configuration ``{name, kind, precision}`` for ``bundle``.

    Args:
        config: ``kind`` is one of :data:`KINDS`; ``precision`` the bundle variant (bundle kinds); ``device``
            "cpu" or "cuda" (PyTorch kinds); ``providers`` ONNX Runtime's execution providers.
        bundle: the bundle directory.
        checkpoint: the PyTorch checkpoint (PyTorch kinds).
        threads: intra-op threads of ONNX Runtime / PyTorch.
        checkpoint_options: where the checkpoint's model comes from (the user's code; see
            :func:`jetcap.validate.live.load_reference_subject`).
    """
    from jetcap.runtime.manifest import Manifest

    manifest = Manifest.load(bundle)
    kind = config["kind"]
    if kind in ("pytorch", "pytorch-reproject"):
        from jetcap.bench import torch_subjects

        return torch_subjects.open_torch_subject(manifest, checkpoint, reproject=(kind == "pytorch-reproject"),
                                                 threads=threads, checkpoint_options=checkpoint_options,
                                                 device=config.get("device", "cpu"))
    if kind not in KINDS:
        raise ValueError("unknown configuration kind {!r}".format(kind))
    from jetcap.runtime.session import open_bundle

    from jetcap.bench.devices import session_providers

    providers = session_providers(config.get("providers"))
    session = open_bundle(manifest, backend=kind, precision=config["precision"], threads=threads, providers=providers)
    try:
        check_providers(session, providers)
    except JetcapError:
        session.close()
        raise
    if manifest.family == "captioner":
        return BundleCaptioner(session)
    return BundleClassifier(session)


def greedy_tokens(session, batch, start_id, end_id, max_len):
    """Token lists of the shared greedy search over a decoder ``session``."""
    return [h.tokens for h in decoding.greedy_decode(session, batch, start_id, end_id, max_len)]
