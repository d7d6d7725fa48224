"""The decoder-step protocol of a captioner bundle: which tensors a step carries, which it only reads.

A captioner bundle has an ``encoder`` graph (run once per image batch) and a ``decoder_step`` graph
(run once per word).  Which step inputs are *state* (replaced by a step output after every step, e.g.
an LSTM's ``h``/``c`` or a multi-layer ``nn.LSTM``'s ``(layers, batch, dim)`` pair) and which are
per-image *context* (fed unchanged to every step, e.g. the features and their attention projection)
is the user's model's business, so the manifest says it in its ``decoder`` entry::

    "decoder": {"word_input": "prev_word", "log_probs": "log_probs", "attention": "alpha" | null,
                "state":   [{"input": "h", "output": "h_new", "init": "h0"}, ...],
                "context": [{"input": "features", "init": "features"}, ...]}

``init`` names the encoder output that gives the first value.  Optionally ``"topk": {"log_probs":
"topk_log_probs", "ids": "topk_ids", "k": 16}`` names step outputs with the graph's own top-k of the
log-probabilities, which the search uses instead of the full distribution when k is enough.  The batch axis of every tensor is
where its shape in the manifest says ``"batch"`` (not always axis 0).  Bundles written before this
entry existed use :data:`LEGACY_DECODER` (Show-Attend-Tell's ``h``/``c``/``features``/``projected``).

Python 3.6, no torch/onnx: the runtime, the serving apps and the validator use it.
"""
import numpy as np

from jetcap.errors import BundleError

LEGACY_DECODER = {
    "word_input": "prev_word",
    "log_probs": "log_probs",
    "attention": "alpha",
    "state": [{"input": "h", "output": "h_new", "init": "h0"}, {"input": "c", "output": "c_new", "init": "c0"}],
    "context": [{"input": "features", "init": "features"}, {"input": "projected", "init": "projected"}],
}


def _names(entries, key, what):
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get(key), str) or not entry[key]:
            raise BundleError("manifest decoder.{} entries need a string {!r}".format(what, key))
        out.append(entry[key])
    return out


def batch_axis(shape, name):
    """Index of the ``"batch"`` axis in a manifest shape; BundleError when there is none."""
    for index, dim in enumerate(shape):
        if dim == "batch":
            return index
    raise BundleError("decoder tensor {!r} has no batch axis in the manifest (shape {})".format(name, list(shape)))


class DecoderProtocol(object):
    """The checked ``decoder`` entry of a manifest.

    Attributes:
        word_input: the step input taking the previous token ids ``(batch,)``.
        log_probs: the step output with the log-probabilities ``(batch, vocab)``.
        attention: the step output with attention weights ``(batch, P)``, or None.
        state: ``[(input, output, init)]`` carried from step to step.
        context: ``[(input, init)]`` fed unchanged to every step.
        batch_axes: ``{step input: axis}`` for every state and context input.
    """

    def __init__(self, entry, step_graph, encoder_graph):
        if not isinstance(entry, dict):
            raise BundleError("manifest 'decoder' entry must be an object")
        for key in ("word_input", "log_probs"):
            if not isinstance(entry.get(key), str) or not entry[key]:
                raise BundleError("manifest decoder entry lacks {!r}".format(key))
        attention = entry.get("attention")
        if attention is not None and not isinstance(attention, str):
            raise BundleError("manifest decoder.attention must be a name or null")
        state, context = entry.get("state"), entry.get("context", [])
        if not isinstance(state, list) or not state or not isinstance(context, list):
            raise BundleError("manifest decoder entry needs a non-empty 'state' list and a 'context' list")
        self.word_input = entry["word_input"]
        self.log_probs = entry["log_probs"]
        self.attention = attention
        self.state = list(zip(_names(state, "input", "state"), _names(state, "output", "state"),
                              _names(state, "init", "state")))
        self.context = list(zip(_names(context, "input", "context"), _names(context, "init", "context")))
        step_in = dict((t["name"], t) for t in step_graph["inputs"])
        step_out = dict((t["name"], t) for t in step_graph["outputs"])
        enc_out = set(t["name"] for t in encoder_graph["outputs"])
        carried = [s[0] for s in self.state] + [c[0] for c in self.context]
        wanted_in = set(carried) | {self.word_input}
        if set(step_in) != wanted_in or len(carried) != len(set(carried)):
            raise BundleError("decoder_step inputs {} do not match the manifest's decoder entry {}".format(
                sorted(step_in), sorted(wanted_in)))
        for name in [self.log_probs] + [s[1] for s in self.state] + ([attention] if attention else []):
            if name not in step_out:
                raise BundleError("decoder_step has no output {!r} named in the decoder entry".format(name))
        for init in [s[2] for s in self.state] + [c[1] for c in self.context]:
            if init not in enc_out:
                raise BundleError("the encoder has no output {!r} named in the decoder entry".format(init))
        self.batch_axes = dict((name, batch_axis(step_in[name]["shape"], name)) for name in carried)
        self.vocab_size = None
        shape = step_out[self.log_probs]["shape"]
        if len(shape) == 2 and isinstance(shape[1], int):
            self.vocab_size = int(shape[1])
        self.topk = None
        topk = entry.get("topk")
        if topk is not None:
            if not isinstance(topk, dict) or not isinstance(topk.get("k"), int) or topk["k"] < 1:
                raise BundleError("manifest decoder.topk needs log_probs, ids and an integer k >= 1")
            for key in ("log_probs", "ids"):
                if topk.get(key) not in step_out:
                    raise BundleError("decoder_step has no output {!r} named in decoder.topk".format(topk.get(key)))
            if self.vocab_size is None:
                raise BundleError("decoder.topk needs a fixed vocabulary size in the log_probs shape")
            self.topk = {"log_probs": topk["log_probs"], "ids": topk["ids"], "k": int(topk["k"])}

    @classmethod
    def from_manifest(cls, manifest):
        """The protocol of a captioner :class:`jetcap.runtime.manifest.Manifest` (legacy default)."""
        entry = manifest.data.get("decoder") or LEGACY_DECODER
        return cls(entry, manifest.graph("decoder_step"), manifest.graph("encoder"))

    @property
    def state_outputs(self):
        """``{step output: step input}`` of the carried state."""
        return dict((output, name) for name, output, _ in self.state)

    @property
    def fetch(self):
        """The step outputs the search needs on the host, in order."""
        return (self.log_probs,) + ((self.attention,) if self.attention else ())

    @property
    def fetch_topk(self):
        """The step outputs a top-k search needs on the host (None without ``topk``)."""
        if self.topk is None:
            return None
        return (self.topk["log_probs"], self.topk["ids"]) + ((self.attention,) if self.attention else ())

    def step_outputs(self, kinds):
        """The outputs a step call asks for, in order and each once: the carried state, then what its
        searches read; ``kinds``: the searches' kinds, True for a top-k search (:attr:`fetch_topk`),
        False for one that reads the whole distribution (:attr:`fetch`)."""
        names = list(self.state_outputs)
        for topk in sorted(set(kinds)):
            names.extend((self.fetch_topk or ()) if topk else self.fetch)
        seen = set()
        return [name for name in names if not (name in seen or seen.add(name))]

    def initial(self, encoded, rows=None):
        """``{step input: array}`` of the first step from the encoder outputs ``encoded`` (optionally
        only the batch ``rows``, e.g. one image for beam search)."""
        out = {}
        for name, init in [(s[0], s[2]) for s in self.state] + list(self.context):
            if init not in encoded:
                raise BundleError("encoder output {!r} is missing".format(init))
            value = encoded[init]
            if rows is not None:
                value = np.take(value, rows, axis=self.batch_axes[name])
            out[name] = np.ascontiguousarray(value)
        return out

    def split_topk(self, results):
        """``(values, ids, alpha)`` from a step's top-k outputs; alpha is ``(n, 0)`` without attention."""
        values, ids = results[self.topk["log_probs"]], results[self.topk["ids"]]
        alpha = results[self.attention] if self.attention else np.zeros((values.shape[0], 0), dtype=np.float32)
        return values, ids, alpha

    def split(self, results):
        """``(log_probs, alpha)`` from a step's fetched outputs; alpha is ``(n, 0)`` without attention."""
        log_probs = results[self.log_probs]
        if self.attention:
            return log_probs, results[self.attention]
        return log_probs, np.zeros((log_probs.shape[0], 0), dtype=np.float32)
