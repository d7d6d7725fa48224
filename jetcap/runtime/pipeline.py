"""Task pipelines over any backend: caption images, classify sequences (Python 3.6, no torch).

``open_runners`` picks and activates one runner per graph of a bundle; :class:`CaptionPipeline`
runs the encoder once per image batch and the shared numpy search over the decoder step, keeping the
decoder state where the backend keeps it; :class:`ClassifierPipeline` turns logits into labels.
"""
import numpy as np

from jetcap.errors import UsageError
from jetcap.runtime import decoding
from jetcap.runtime.backends.onnxruntime import OnnxRuntimeRunner, bundle_runners
from jetcap.runtime.sequences import check_sequence


def softmax(logits):
    """Row-wise softmax in float64 for stable probabilities."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def open_onnxruntime(manifest, precision="fp32", providers=None, threads=None):
    """``{graph: OnnxRuntimeRunner}`` (not yet activated) for ``precision`` of the bundle."""
    return bundle_runners(manifest, precision, providers=providers, threads=threads)


class HostDecoderSession(object):
    """Decoder session keeping h/c/features/projected as host numpy arrays (any runner)."""

    def __init__(self, runner, features, projected, h, c):
        self.runner = runner
        self.state = {"features": features, "projected": projected, "h": h, "c": c}

    def step(self, prev_words):
        feed = dict(self.state)
        feed["prev_word"] = np.ascontiguousarray(prev_words, dtype=np.int64)
        out = self.runner.infer(feed)
        self.state["h"], self.state["c"] = out["h_new"], out["c_new"]
        return out["log_probs"], out["alpha"]

    def reorder(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        for key in self.state:
            self.state[key] = np.ascontiguousarray(self.state[key][rows])


class OrtBoundDecoderSession(object):
    """Decoder session over ONNX Runtime I/O binding: features/projected are bound once per batch and
    h/c outputs are fed back as the next step's inputs without leaving the session's device."""

    def __init__(self, runner, features, projected, h, c):
        import onnxruntime as ort

        self._ort = ort
        self.runner = runner
        self.session = runner.session
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self._bind_state(features, projected, h, c)

    def _value(self, array):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def _bind_state(self, features, projected, h, c):
        self.features, self.projected = self._value(features), self._value(projected)
        self.h, self.c = self._value(h), self._value(c)

    def step(self, prev_words):
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("prev_word", self._value(np.asarray(prev_words, dtype=np.int64)))
        binding.bind_ortvalue_input("h", self.h)
        binding.bind_ortvalue_input("c", self.c)
        binding.bind_ortvalue_input("features", self.features)
        binding.bind_ortvalue_input("projected", self.projected)
        # get_outputs() returns the outputs in binding order: log_probs and alpha go to the host (the
        # search needs them), h_new and c_new stay on the session's device
        for name in ("log_probs", "h_new", "c_new", "alpha"):
            binding.bind_output(name, "cpu" if name in ("log_probs", "alpha") else self.device)
        self.session.run_with_iobinding(binding)
        log_probs, h_new, c_new, alpha = binding.get_outputs()
        self.h, self.c = h_new, c_new
        return log_probs.numpy(), alpha.numpy()

    def reorder(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        self._bind_state(self.features.numpy()[rows], self.projected.numpy()[rows],
                         self.h.numpy()[rows], self.c.numpy()[rows])


def make_decoder_session(runner, features, projected, h, c):
    """The best decoder session the runner's backend offers."""
    factory = getattr(runner, "decoder_session", None)
    if factory is not None:
        return factory(features, projected, h, c)
    if isinstance(runner, OnnxRuntimeRunner) and "CUDAExecutionProvider" in runner.session.get_providers():
        # I/O binding pays off when h/c can stay on the GPU; on the CPU plain arrays were as fast
        return OrtBoundDecoderSession(runner, features, projected, h, c)
    return HostDecoderSession(runner, features, projected, h, c)


class CaptionPipeline(object):
    """Caption preprocessed images with an encoder runner and a decoder-step runner.

    Args:
        manifest: the bundle's :class:`jetcap.runtime.manifest.Manifest`.
        runners: ``{"encoder": runner, "decoder_step": runner}``, activated.
    """

    def __init__(self, manifest, runners):
        if manifest.family != "captioner":
            raise UsageError("bundle is a {} bundle, not a captioner".format(manifest.family))
        self.manifest = manifest
        self.encoder = runners["encoder"]
        self.step = runners["decoder_step"]
        self.vocab = manifest.vocabulary()
        self.max_batch = int(manifest.axes["batch"]["max"])

    def encode(self, images):
        """Encoder outputs (features, projected, h0, c0) of a float32 NCHW batch."""
        out = self.encoder.infer({"images": np.ascontiguousarray(images, dtype=np.float32)})
        return out["features"], out["projected"], out["h0"], out["c0"]

    def caption(self, images, beam_size=1, max_len=None):
        """Hypotheses for ``images`` (float32 NCHW), batched up to the bundle's max batch."""
        max_len = int(max_len or self.manifest.decoding.get("max_len", 20))
        results = []
        for start in range(0, len(images), self.max_batch):
            chunk = images[start:start + self.max_batch]
            features, projected, h, c = self.encode(chunk)
            if beam_size == 1:
                session = make_decoder_session(self.step, features, projected, h, c)
                results.extend(decoding.greedy_decode(session, len(chunk), self.vocab.start_id, self.vocab.end_id,
                                                      max_len))
            else:
                for i in range(len(chunk)):
                    session = make_decoder_session(self.step, features[i:i + 1], projected[i:i + 1], h[i:i + 1],
                                                   c[i:i + 1])
                    results.append(decoding.beam_search(session, beam_size, self.vocab.start_id,
                                                        self.vocab.end_id, max_len))
        return results

    def text(self, hypothesis):
        return self.vocab.decode(hypothesis.tokens)


class ClassifierPipeline(object):
    """Classify (T, F) sequences with the bundle's classifier runner."""

    def __init__(self, manifest, runners):
        if manifest.family != "classifier":
            raise UsageError("bundle is a {} bundle, not a classifier".format(manifest.family))
        self.manifest = manifest
        self.runner = runners["model"]
        self.labels = manifest.labels
        self.width = int(manifest.config["input_size"])
        self.min_len = int(manifest.axes["T"]["min"])
        self.max_len = int(manifest.axes["T"]["max"])

    def check(self, sequence, name="sequence"):
        return check_sequence(sequence, name, width=self.width, max_len=self.max_len, min_len=self.min_len)

    def probabilities(self, sequence, name="sequence"):
        """Class probabilities (float64) of one sequence."""
        sequence = self.check(sequence, name)
        logits = self.runner.infer({"sequence": sequence[None]})["logits"]
        return softmax(logits)[0]

    def predict(self, sequence, name="sequence"):
        """``{label, index, probabilities {label: p}}`` of one sequence."""
        probs = self.probabilities(sequence, name)
        index = int(np.argmax(probs))
        return {"label": self.labels[index], "index": index,
                "probabilities": dict((label, float(p)) for label, p in zip(self.labels, probs))}
