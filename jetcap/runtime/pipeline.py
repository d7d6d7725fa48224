"""Task pipelines over any backend: caption images, classify sequences (Python 3.6, no torch).

``open_runners`` picks and activates one runner per graph of a bundle; :class:`CaptionPipeline`
runs the encoder once per image batch and the shared numpy search over the decoder step, keeping the
decoder state where the backend keeps it; :class:`ClassifierPipeline` turns logits into labels.
"""
import contextlib

import numpy as np

from jetcap.errors import BundleError, UsageError
from jetcap.runtime import decoding
from jetcap.runtime.backends.onnxruntime import OnnxRuntimeRunner, bundle_runners
from jetcap.runtime.decoder_protocol import DecoderProtocol
from jetcap.runtime.manifest import rows_independent
from jetcap.runtime.sequences import check_sequence


def softmax(logits):
    """Row-wise softmax in float64 for stable probabilities."""
    logits = np.asarray(logits, dtype=np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


SCORE_KINDS = ("logits", "probabilities")


def class_scores(config):
    """What a classifier bundle's ``logits`` output holds (manifest config ``scores``): "logits" (the default),
    or "probabilities" for a forward that ends in a softmax, exported as it is."""
    kind = config.get("scores", "logits")
    if kind not in SCORE_KINDS:
        raise BundleError("manifest config scores is {!r}, not one of {}".format(kind, ", ".join(SCORE_KINDS)))
    return kind


def class_probabilities(values, scores="logits"):
    """Row-wise class probabilities (float64) of a classifier's ``logits`` output: their softmax, or for
    ``scores`` "probabilities" the values themselves, renormalised over the graph's own rounding."""
    if scores != "probabilities":
        return softmax(values)
    values = np.asarray(values, dtype=np.float64)
    total = values.sum(axis=-1, keepdims=True)
    return values / np.where(total > 0, total, 1.0)


def open_onnxruntime(manifest, precision="fp32", providers=None, threads=None):
    """``{graph: OnnxRuntimeRunner}`` (not yet activated) for ``precision`` of the bundle."""
    return bundle_runners(manifest, precision, providers=providers, threads=threads)


def check_beam(beam_size, max_batch):
    """UsageError unless ``1 <= beam_size <= max_batch``: a beam's rows run in one decoder-step call, and
    the bundle's graphs (TensorRT's optimisation profiles) take at most ``max_batch`` rows."""
    if int(beam_size) < 1:
        raise UsageError("beam size must be at least 1, got {}".format(beam_size))
    if int(beam_size) > int(max_batch):
        raise UsageError("beam size {} is over the bundle's max batch of {}: a beam's rows run in one decoder "
                         "step".format(beam_size, max_batch),
                         hint="use a beam of at most {}, or export with --max-batch {}".format(max_batch, beam_size))


class HostDecoderSession(object):
    """Decoder session keeping the step's state and context as host numpy arrays (any runner).

    Args:
        runner: the decoder-step runner (``infer(feed, outputs) -> {output: array}``): asked for the carried
            state and what the search reads, never the whole distribution of a top-k search.
        initial: ``{step input: array}`` of the first step (see ``DecoderProtocol.initial``).
        protocol: the bundle's :class:`jetcap.runtime.decoder_protocol.DecoderProtocol`.
        use_topk: read the step's top-k where the search can (default True).
    """

    def __init__(self, runner, initial, protocol, use_topk=True):
        self.runner = runner
        self.protocol = protocol
        self.state = dict(initial)
        # the search's top-k path (see jetcap.runtime.decoding); 0 when the step graph has no top-k
        self.topk = protocol.topk["k"] if protocol.topk and use_topk else 0
        self.vocab_size = protocol.vocab_size

    def _run(self, prev_words, topk):
        feed = dict(self.state)
        feed[self.protocol.word_input] = np.ascontiguousarray(prev_words, dtype=np.int64)
        out = self.runner.infer(feed, self.protocol.step_outputs([topk]))
        for output, name in self.protocol.state_outputs.items():
            self.state[name] = out[output]
        return out

    def step(self, prev_words):
        return self.protocol.split(self._run(prev_words, False))

    def step_topk(self, prev_words):
        return self.protocol.split_topk(self._run(prev_words, True))

    def reorder(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        for key in self.state:
            self.state[key] = np.ascontiguousarray(np.take(self.state[key], rows, axis=self.protocol.batch_axes[key]))


class OrtBoundDecoderSession(object):
    """Decoder session over ONNX Runtime I/O binding: the context is bound once per batch and the state
    outputs are fed back as the next step's inputs without leaving the session's device."""

    def __init__(self, runner, initial, protocol):
        import onnxruntime as ort

        self._ort = ort
        self.runner = runner
        self.protocol = protocol
        self.session = runner.session
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self._bind_state(initial)
        self.topk = protocol.topk["k"] if protocol.topk else 0
        self.vocab_size = protocol.vocab_size

    def _value(self, array):
        return self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def _bind_state(self, arrays):
        self.values = dict((name, self._value(array)) for name, array in arrays.items())

    def _run(self, prev_words, fetch):
        protocol = self.protocol
        binding = self.session.io_binding()
        binding.bind_ortvalue_input(protocol.word_input, self._value(np.asarray(prev_words, dtype=np.int64)))
        for name, value in self.values.items():
            binding.bind_ortvalue_input(name, value)
        # get_outputs() returns the outputs in binding order: what the search reads goes to the host,
        # the carried state (and whatever the search does not read) stays on the session's device
        carried = list(protocol.state_outputs)
        others = [o.name for o in self.session.get_outputs() if o.name not in fetch and o.name not in carried]
        for name in fetch:
            binding.bind_output(name, "cpu")
        for name in carried + others:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        results = dict((name, outputs[i].numpy()) for i, name in enumerate(fetch))
        for i, name in enumerate(carried):
            self.values[protocol.state_outputs[name]] = outputs[len(fetch) + i]
        return results

    def step(self, prev_words):
        return self.protocol.split(self._run(prev_words, self.protocol.fetch))

    def step_topk(self, prev_words):
        return self.protocol.split_topk(self._run(prev_words, self.protocol.fetch_topk))

    def reorder(self, rows):
        rows = np.asarray(rows, dtype=np.int64)
        self._bind_state(dict((name, np.take(value.numpy(), rows, axis=self.protocol.batch_axes[name]))
                              for name, value in self.values.items()))


def make_decoder_session(runner, initial, protocol):
    """The best decoder session the runner's backend offers.

    Args:
        runner: the activated decoder-step runner.
        initial: ``{step input: array}`` of the first step (``protocol.initial(encoder outputs)``).
        protocol: the bundle's :class:`jetcap.runtime.decoder_protocol.DecoderProtocol`.
    """
    factory = getattr(runner, "decoder_session", None)
    if factory is not None:
        return factory(initial, protocol)
    if isinstance(runner, OnnxRuntimeRunner) and "CUDAExecutionProvider" in runner.session.get_providers():
        # I/O binding pays off when the state can stay on the GPU; on the CPU plain arrays were as fast
        return OrtBoundDecoderSession(runner, initial, protocol)
    return HostDecoderSession(runner, initial, protocol)


@contextlib.contextmanager
def closing_session(session):
    """The decoder session for the block, then its ``close()`` where it has one (TensorRT's device buffers
    are freed at once, on the thread that used them, not whenever the garbage collector runs)."""
    try:
        yield session
    finally:
        close = getattr(session, "close", None)
        if close is not None:
            close()


class CaptionPipeline(object):
    """Caption preprocessed images with an encoder runner and a decoder-step runner.

    Args:
        manifest: the bundle's :class:`jetcap.runtime.manifest.Manifest`.
        runners: ``{"encoder": runner, "decoder_step": runner}``, activated.
        precision: the runners' variant (default fp32); a variant whose rows depend on each other
            (``int8-cpu``, see :func:`jetcap.runtime.manifest.rows_independent`) captions one image per call.
    """

    def __init__(self, manifest, runners, precision=None):
        if manifest.family != "captioner":
            raise UsageError("bundle is a {} bundle, not a captioner".format(manifest.family))
        self.manifest = manifest
        self.encoder = runners["encoder"]
        self.step = runners["decoder_step"]
        self.protocol = DecoderProtocol.from_manifest(manifest)
        self.vocab = manifest.vocabulary()
        self.max_batch = int(manifest.axes["batch"]["max"])
        # images per encoder call and per greedy decode: an image's caption never depends on its neighbours
        self.image_batch = self.max_batch if rows_independent(precision or "fp32") else 1

    def encode(self, images):
        """The encoder outputs ``{name: array}`` of a float32 NCHW batch."""
        return self.encoder.infer({"images": np.ascontiguousarray(images, dtype=np.float32)})

    def decoder_session(self, encoded, rows=None):
        """A decoder session (see :mod:`jetcap.runtime.decoding`) over the encoder outputs ``encoded``
        (optionally only batch ``rows``)."""
        return make_decoder_session(self.step, self.protocol.initial(encoded, rows), self.protocol)

    def caption(self, images, beam_size=1, max_len=None):
        """Hypotheses for ``images`` (float32 NCHW), batched up to :attr:`image_batch` images per call."""
        max_len = int(max_len or self.manifest.decoding.get("max_len", 20))
        check_beam(beam_size, self.max_batch)
        results = []
        for start in range(0, len(images), self.image_batch):
            chunk = images[start:start + self.image_batch]
            encoded = self.encode(chunk)
            if beam_size == 1:
                with closing_session(self.decoder_session(encoded)) as session:
                    results.extend(decoding.greedy_decode(session, len(chunk), self.vocab.start_id,
                                                          self.vocab.end_id, max_len))
            else:
                for i in range(len(chunk)):
                    with closing_session(self.decoder_session(encoded, [i])) as session:
                        results.append(decoding.beam_search(session, beam_size, self.vocab.start_id,
                                                            self.vocab.end_id, max_len))
        return decoding.check_finite(results)

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
        self.scores = class_scores(manifest.config)  # "probabilities": a forward that ends in a softmax

    def check(self, sequence, name="sequence"):
        return check_sequence(sequence, name, width=self.width, max_len=self.max_len, min_len=self.min_len)

    def run_probabilities(self, batch):
        """Class probabilities (float64, one row per sequence) of a ``(batch, T, F)`` array, unchecked: what
        the graph says, NaN included (validate compares it; :meth:`probabilities` refuses it)."""
        return class_probabilities(self.runner.infer({"sequence": batch})["logits"], self.scores)

    def probabilities(self, sequence, name="sequence"):
        """Class probabilities (float64) of one sequence."""
        sequence = self.check(sequence, name)
        logits = self.runner.infer({"sequence": sequence[None]})["logits"]
        if not np.all(np.isfinite(logits)):
            # a model may have no answer for some inputs (one that masks all-zero frames, given nothing
            # else): refused for this input only; a broken graph fails the server's warm-up on the bundle's
            # own reference input, and validate
            raise UsageError("the classifier's logits for {} are not finite numbers (NaN or infinite): the model "
                             "has no answer for this input (e.g. a clip whose every frame it masks out), or its "
                             "graph is broken (jetcap validate)".format(name))
        return class_probabilities(logits, self.scores)[0]

    def predict(self, sequence, name="sequence"):
        """``{label, index, probabilities {label: p}}`` of one sequence."""
        probs = self.probabilities(sequence, name)
        index = int(np.argmax(probs))
        return {"label": self.labels[index], "index": index,
                "probabilities": dict((label, float(p)) for label, p in zip(self.labels, probs))}
