"""What export and validation run: the user's model seen as the bundle's graphs.

An *export subject* turns a :class:`jetcap.models.sources.ModelSource` into the graphs of its family
and everything done with them: the graph modules (the user's own modules, never a rebuild), their
specs (found by running the user's code at two batch sizes, so the batch axis of every tensor is
known), dummy inputs, the export patches that apply, the PyTorch decode that makes the reference
captions, the manifest's ``decoder`` protocol, and where every configuration value came from.

* :class:`CaptionerSubject`: an adapter (:mod:`jetcap.export.adapters`) over the user's encoder and
  decoder; the built-in Show-Attend-Tell adapter unless an adapter file is given;
* :class:`ClassifierSubject`: the user's ``forward`` as written, ``T`` dynamic, the logits chosen by
  name or position;
* :class:`BuiltinSubject`: jetcap's own families (checkpoints without code).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from jetcap.errors import UsageError
from jetcap.export.onnx_graph import ExportError
from jetcap.models import registry
from jetcap.models.registry import GraphSpec, ModelFamily, TensorSpec
from jetcap.models.sources import BUILTIN, ModelSource
from jetcap.runtime import decoding
from jetcap.runtime.backends.base import select_outputs
from jetcap.runtime.decoder_protocol import LEGACY_DECODER, DecoderProtocol
from jetcap.runtime.pipeline import HostDecoderSession
from jetcap.util.lazy import require

torch = require("torch")
nn = torch.nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
# Keys under which training code keeps these values in its config / hyper_parameters.
IMAGE_SIZE_KEYS = ("image_size", "img_size", "input_size", "crop_size", "resize")
MEAN_KEYS = ("mean", "image_mean", "norm_mean", "normalize_mean", "pixel_mean")
STD_KEYS = ("std", "image_std", "norm_std", "normalize_std", "pixel_std")
MAX_LEN_KEYS = ("max_len", "max_caption_length", "max_length", "max_seq_len", "max_seq_length", "seq_len",
                "sequence_length", "max_frames", "num_frames")
INPUT_SIZE_KEYS = ("input_size", "input_dim", "num_features", "n_features", "feature_dim", "in_features",
                   "input_features", "num_keypoints_features")
DEFAULT_SEQ_MAX = 128
# The decoder step also returns its top-k log-probabilities: k numbers per row cross to the host instead
# of the vocabulary (beam search needs k >= the beam; the server's largest beam is 16).
TOPK = 16
TOPK_VALUES, TOPK_IDS = "topk_log_probs", "topk_ids"


class TopKStep(nn.Module):
    """The step graph module plus ``torch.topk`` of its log-probabilities (its first output)."""

    def __init__(self, step, k: int):
        super().__init__()
        self.step = step
        self.k = int(k)

    def forward(self, *inputs):
        outputs = tuple(self.step(*inputs))
        values, ids = torch.topk(outputs[0], self.k, dim=-1, largest=True, sorted=True)
        return outputs + (values, ids)


class TorchRunner:
    """A runner (``infer(feed, outputs=None) -> {output: ndarray}``) over a PyTorch graph module: the reference
    decode runs jetcap's own decoding code over the user's modules, exactly as the runtime does over
    ONNX Runtime or TensorRT."""

    def __init__(self, module, spec: GraphSpec):
        self.module = module
        self.spec = spec

    def infer(self, feed: Dict[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
        with torch.no_grad():
            outs = self.module(*[torch.from_numpy(np.array(feed[n], copy=True)) for n in self.spec.input_names])
        if not isinstance(outs, (tuple, list)):
            outs = (outs,)
        wanted = set(select_outputs("the PyTorch {} graph".format(self.spec.name), self.spec.output_names, outputs))
        return {n: o.detach().numpy() for n, o in zip(self.spec.output_names, outs) if n in wanted}


@dataclass
class ExportSubject:
    """Base of the subjects; see the module docstring."""

    source: ModelSource
    family: str = ""
    config: Dict[str, Any] = field(default_factory=dict)
    config_sources: Dict[str, str] = field(default_factory=dict)
    graphs: List[GraphSpec] = field(default_factory=list)
    checks: List[Dict[str, Any]] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    int8_keep_float: Tuple[str, ...] = ()

    @property
    def family_spec(self) -> ModelFamily:
        """The registered family: tolerances and task thresholds of the family kind."""
        return registry.get_family(self.family)

    def spec(self, graph: str) -> GraphSpec:
        return {g.name: g for g in self.graphs}[graph]

    def graph_module(self, graph: str):
        """The unpatched PyTorch module of ``graph`` (the reference); the captioner's step with its
        top-k outputs (:class:`TopKStep`) when the subject adds them."""
        module = self._graph_module(graph)
        if graph == "decoder_step" and getattr(self, "topk", 0):
            wrapped = getattr(self, "_topk_step", None)
            if wrapped is None or wrapped.step is not module:
                wrapped = self._topk_step = TopKStep(module, self.topk).eval()
            return wrapped
        return module

    def _graph_module(self, graph: str):
        raise NotImplementedError

    @property
    def derived_outputs(self) -> Tuple[str, ...]:
        """Outputs computed from other outputs (the step's top-k): checked through the captions, not
        stored in the reference."""
        return (TOPK_VALUES, TOPK_IDS) if getattr(self, "topk", 0) else ()

    def add_topk(self, k: int = TOPK) -> None:
        """Give the decoder step top-k outputs (``topk_log_probs``, ``topk_ids``) and name them in the
        manifest's decoder entry, so a device copies k numbers per row instead of the vocabulary."""
        step = self.spec("decoder_step")
        vocab = int(step.outputs[0].shape[1])
        self.topk = min(int(k), vocab)
        outputs = step.outputs + (TensorSpec(TOPK_VALUES, "float32", ("batch", self.topk)),
                                  TensorSpec(TOPK_IDS, "int64", ("batch", self.topk)))
        self.graphs = [g if g.name != "decoder_step" else GraphSpec(g.name, g.inputs, outputs) for g in self.graphs]
        self.decoder_entry = dict(self.decoder_entry, topk={"log_probs": TOPK_VALUES, "ids": TOPK_IDS, "k": self.topk})
        self.protocol = DecoderProtocol(self.decoder_entry, self.spec("decoder_step").manifest_entry(),
                                        self.spec("encoder").manifest_entry())

    @contextlib.contextmanager
    def export_context(self, graph: str) -> Iterator[None]:
        """Within the block, the modules of ``graph`` are patched for export (default: nothing)."""
        yield

    def dummy_inputs(self, graph: str, axes: Mapping[str, int], seed: int = 0) -> Dict[str, np.ndarray]:
        raise NotImplementedError

    def manifest_extras(self) -> Dict[str, Any]:
        """Manifest entries beyond the common ones (decoder protocol, adapter, patches, checks)."""
        extras: Dict[str, Any] = {"config_sources": dict(self.config_sources), "source_checks": list(self.checks)}
        if self.warnings:
            extras["assumptions"] = list(self.warnings)
        return extras

    def note_value(self, key: str, value: Any, where: str) -> None:
        self.config[key] = value
        self.config_sources[key] = where

    def assume(self, key: str, value: Any, message: str) -> None:
        """Use ``value`` for ``key`` that nothing said; a warning names the assumption."""
        self.note_value(key, value, "assumed: " + message)
        self.warnings.append("{} = {} assumed: {}".format(key, value, message))


def first_stored(stored: Mapping[str, Any], keys: Sequence[str]) -> Optional[Tuple[str, Any]]:
    for key in keys:
        if stored.get(key) is not None:
            return key, stored[key]
    return None


# -- captioner --------------------------------------------------------------------------------------

REFERENCE_CHUNK = 16  # images per PyTorch encoder call when computing reference captions


class TorchCaptioning:
    """Captioning in PyTorch over a subject's own graph modules, with jetcap's decoding code (the
    reference captions): needs ``graph_module``, ``spec``, ``protocol`` and ``vocab``."""

    def encode(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        return TorchRunner(self.graph_module("encoder"), self.spec("encoder")).infer({"images": images})

    def decoder_session(self, encoded: Dict[str, np.ndarray], rows=None):
        """A session over the PyTorch step that searches the full distribution (not the step's top-k:
        the runtime's top-k search is checked against it)."""
        runner = TorchRunner(self.graph_module("decoder_step"), self.spec("decoder_step"))
        return HostDecoderSession(runner, self.protocol.initial(encoded, rows), self.protocol, use_topk=False)

    def caption(self, images: np.ndarray, max_len: int, beam_size: int = 1) -> List[decoding.Hypothesis]:
        """Greedy (``beam_size`` 1) or beam-search hypotheses of a float32 NCHW batch, encoded
        :data:`REFERENCE_CHUNK` images at a time (a verdict of 200 ResNet images at 256² in one batch
        would hold gigabytes of activations)."""
        start, end = self.vocab.start_id, self.vocab.end_id
        results: List[decoding.Hypothesis] = []
        for first in range(0, len(images), REFERENCE_CHUNK):
            chunk = np.ascontiguousarray(images[first:first + REFERENCE_CHUNK], dtype=np.float32)
            encoded = self.encode(chunk)
            if beam_size == 1:
                results.extend(decoding.greedy_decode(self.decoder_session(encoded), len(chunk), start, end, max_len))
            else:
                results.extend(decoding.beam_search(self.decoder_session(encoded, [i]), beam_size, start, end, max_len)
                               for i in range(len(chunk)))
        return results


class CaptionerSubject(TorchCaptioning, ExportSubject):
    """A captioner through an adapter over the user's modules."""

    def __init__(self, source: ModelSource, adapter, image_size: Optional[int] = None,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 max_len: Optional[int] = None, seed: int = 0):
        super().__init__(source=source, family="captioner")
        self.adapter = adapter
        self.model = source.model
        self.int8_keep_float = tuple(getattr(adapter, "int8_keep_float", ()) or ())
        if source.vocab is None:
            raise UsageError("the captioner has no word map", hint="pass --word-map WORDMAP.json")
        self.vocab = source.vocab
        self._configure(image_size, mean, std, max_len)
        self._probe(seed)

    # -- configuration values, each with where it came from --------------------------------------------
    def _configure(self, image_size, mean, std, max_len) -> None:
        stored = self.source.stored
        found = first_stored(stored, IMAGE_SIZE_KEYS)
        if image_size is not None:
            self.note_value("image_size", int(image_size), "--image-size")
        elif found is not None and isinstance(found[1], int):
            self.note_value("image_size", int(found[1]), "checkpoint config {!r}".format(found[0]))
        else:
            self.assume("image_size", 224, "the usual ImageNet input size; pass --image-size N to set it")
        for key, given, keys, default in (("mean", mean, MEAN_KEYS, IMAGENET_MEAN), ("std", std, STD_KEYS, IMAGENET_STD)):
            found = first_stored(stored, keys)
            if given is not None:
                self.note_value(key, [float(v) for v in given], "--" + key)
            elif found is not None and isinstance(found[1], (list, tuple)) and len(found[1]) == 3:
                self.note_value(key, [float(v) for v in found[1]], "checkpoint config {!r}".format(found[0]))
            else:
                self.assume(key, list(default), "ImageNet normalisation; pass --{} R,G,B if the model was "
                                                "trained with another (or normalises inside its forward)".format(key))
        found = first_stored(stored, MAX_LEN_KEYS)
        if max_len is not None:
            self.note_value("max_len", int(max_len), "--max-len")
        elif found is not None and isinstance(found[1], int):
            self.note_value("max_len", int(found[1]), "checkpoint config {!r}".format(found[0]))
        else:
            self.note_value("max_len", 20, "default decoding limit (a runtime choice; --max-len sets it)")
        self.note_value("vocab_size", len(self.vocab), "word map")
        self.config_sources["special_tokens"] = "word map ({})".format(
            ", ".join("{}={}".format(k, v) for k, v in sorted(self.vocab.specials.items())))

    # -- shapes, found by running the user's code ---------------------------------------------------------
    def _images(self, batch: int, seed: int):
        size = int(self.config["image_size"])
        rng = np.random.RandomState(seed)
        return torch.from_numpy(rng.normal(0.0, 1.0, size=(batch, 3, size, size)).astype(np.float32))

    def _encode(self, images) -> Dict[str, Any]:
        with torch.no_grad():
            out = self.adapter.encode(self.model, images)
        if not isinstance(out, dict):
            raise UsageError("the adapter's encode() must return a dict of tensors")
        return out

    def _step(self, words, tensors: Dict[str, Any]) -> Dict[str, Any]:
        names = list(self.adapter.state) + list(self.adapter.context)
        with torch.no_grad():
            return self.adapter.step(self.model, words, **{n: tensors[n] for n in names})

    def _probe(self, seed: int) -> None:
        from jetcap.export.adapters.base import ATTENTION, LOG_PROBS, WORD_INPUT, check_adapter, init_name, new_name

        check_adapter(self.adapter)
        try:
            enc2, enc3 = self._encode(self._images(2, seed)), self._encode(self._images(3, seed + 1))
        except UsageError:
            raise
        except Exception as exc:  # the user's encoder or adapter failed: one line naming it
            raise UsageError("running the encoder ({}) on {}x{} images failed: {}: {}".format(
                self.adapter.name, self.config["image_size"], self.config["image_size"], type(exc).__name__,
                _first_line(exc))) from None
        self._maybe_cache_projection(enc2)
        enc2, enc3 = self._encode(self._images(2, seed)), self._encode(self._images(3, seed + 1))
        names = list(self.adapter.state) + list(self.adapter.context)
        missing = [n for n in names if n not in enc2]
        if missing:
            raise UsageError("the adapter's encode() did not return {}".format(", ".join(missing)))
        shapes = {n: symbolic_shape(enc2[n], enc3[n], n) for n in names}
        words2 = torch.zeros(2, dtype=torch.int64)
        words3 = torch.zeros(3, dtype=torch.int64)
        try:
            out2, out3 = self._step(words2, enc2), self._step(words3, enc3)
        except UsageError:
            raise
        except Exception as exc:
            raise UsageError("running one decoder step ({}) failed: {}: {}".format(
                self.adapter.name, type(exc).__name__, _first_line(exc))) from None
        scores = out2.get("scores", out2.get("log_probs"))
        if scores is None or scores.dim() != 2:
            raise UsageError("the adapter's step() must return 'scores' or 'log_probs' of shape (batch, vocab)")
        if scores.shape[1] != len(self.vocab):
            raise UsageError("the decoder scores {} words but the word map has {}".format(scores.shape[1], len(self.vocab)),
                             hint="check --word-map")
        self.with_attention = out2.get("alpha") is not None
        for name in self.adapter.state:
            if tuple(out2[name].shape) != tuple(enc2[name].shape):
                raise UsageError("state {!r} changes shape in a step: {} -> {}".format(
                    name, tuple(enc2[name].shape), tuple(out2[name].shape)))
        size = int(self.config["image_size"])
        encoder = GraphSpec("encoder", (TensorSpec("images", "float32", ("batch", 3, size, size)),), tuple(
            [TensorSpec(n, _dtype(enc2[n]), shapes[n]) for n in self.adapter.context]
            + [TensorSpec(init_name(s), _dtype(enc2[s]), shapes[s]) for s in self.adapter.state]))
        outputs = [TensorSpec(LOG_PROBS, "float32", ("batch", len(self.vocab)))]
        outputs += [TensorSpec(new_name(s), _dtype(enc2[s]), shapes[s]) for s in self.adapter.state]
        if self.with_attention:
            outputs.append(TensorSpec(ATTENTION, "float32", symbolic_shape(out2["alpha"], out3["alpha"], "alpha")))
        step = GraphSpec("decoder_step", tuple(
            [TensorSpec(WORD_INPUT, "int64", ("batch",))]
            + [TensorSpec(n, _dtype(enc2[n]), shapes[n]) for n in names]), tuple(outputs))
        self.graphs = [encoder, step]
        self.decoder_entry = {
            "word_input": WORD_INPUT, "log_probs": LOG_PROBS, "attention": ATTENTION if self.with_attention else None,
            "state": [{"input": s, "output": new_name(s), "init": init_name(s)} for s in self.adapter.state],
            "context": [{"input": c, "init": c} for c in self.adapter.context],
        }
        self.protocol = DecoderProtocol(self.decoder_entry, step.manifest_entry(), encoder.manifest_entry())
        self._modules: Dict[str, Any] = {}
        self.add_topk()

    def _maybe_cache_projection(self, encoded: Dict[str, Any]) -> None:
        """Move the attention's feature projection out of the step when the adapter can (proved equal)."""
        find = getattr(self.adapter, "find_projection", None)
        if find is None or "features" not in encoded:
            return
        name = find(encoded["features"], encoded["h"])
        if name is None:
            self.checks.append({"check": "attention projection once per image", "status": "not applied",
                                "detail": "no nn.Linear of the attention is applied to the features themselves"})
            return
        words = torch.zeros(encoded["features"].shape[0], dtype=torch.int64)
        plain = self._step(words, encoded)
        self.adapter.enable_projection(name)
        with torch.no_grad():
            projected = getattr(self.adapter.attention, name)(encoded["features"])
        optimised = self._step(words, dict(encoded, projected=projected))
        worst = max(float((plain[k] - optimised[k]).abs().max()) for k in ("scores", "h", "c", "alpha")
                    if plain.get(k) is not None)
        scale = max(1.0, float(plain["scores"].abs().max()))
        if worst > 1e-5 * scale:
            self.adapter.projection = None
            self.adapter.context = ("features",)
            self.checks.append({"check": "attention projection once per image", "status": "not applied",
                                "detail": "the optimised step differs from the plain one (max abs diff {:.3g})".format(worst)})
            return
        self.checks.append({"check": "attention projection once per image", "status": "passed",
                            "detail": "attention.{} moved to the encoder; optimised step equals the plain step "
                                      "(max abs diff {:.3g})".format(name, worst)})

    # -- graphs ---------------------------------------------------------------------------------------
    def _graph_module(self, graph: str):
        from jetcap.export.adapters.base import EncoderModule, StepModule

        if graph not in self._modules:
            if graph == "encoder":
                self._modules[graph] = EncoderModule(self.adapter, self.model).eval()
            elif graph == "decoder_step":
                self._modules[graph] = StepModule(self.adapter, self.model, self.with_attention).eval()
            else:
                raise KeyError(graph)
        return self._modules[graph]

    @contextlib.contextmanager
    def export_context(self, graph: str) -> Iterator[None]:
        from jetcap.export.patches import patched

        with patched(self.graph_module(graph), self.patch_plans.get(graph, [])):
            yield

    @property
    def patch_plans(self) -> Dict[str, List[Any]]:
        if not hasattr(self, "_patch_plans"):
            self._patch_plans = plan_and_prove(self, [g.name for g in self.graphs])
        return self._patch_plans

    def dummy_inputs(self, graph: str, axes: Mapping[str, int], seed: int = 0) -> Dict[str, np.ndarray]:
        batch = int(axes["batch"])
        images = self._images(batch, seed)
        if graph == "encoder":
            return {"images": images.numpy()}
        encoded = self._encode(images)
        rng = np.random.RandomState(seed)
        words = torch.from_numpy(rng.randint(0, len(self.vocab), size=batch).astype(np.int64))
        stepped = self._step(words, encoded)  # one step on: the state is not just the initial one
        feed = {"prev_word": rng.randint(0, len(self.vocab), size=batch).astype(np.int64)}
        for name in self.adapter.state:
            feed[name] = stepped[name].numpy()
        for name in self.adapter.context:
            feed[name] = encoded[name].numpy()
        return {n: np.ascontiguousarray(feed[n]) for n in self.spec("decoder_step").input_names}

    def manifest_extras(self) -> Dict[str, Any]:
        extras = super().manifest_extras()
        extras["decoder"] = dict(self.decoder_entry)
        adapter = {"name": self.adapter.name}
        if getattr(self.adapter, "sha256", None):
            adapter.update(file=Path(self.adapter.path).name, sha256=self.adapter.sha256)
        if getattr(self.adapter, "projection", None):
            adapter["projection_in_encoder"] = "attention." + self.adapter.projection
        extras["adapter"] = adapter
        extras["patches"] = patch_records(self.patch_plans)
        return extras


def symbolic_shape(a, b, name: str) -> Tuple[Any, ...]:
    """Shape with ``"batch"`` where the tensors of a batch-2 (``a``) and a batch-3 (``b``) run differ."""
    if a.dim() != b.dim():
        raise UsageError("{} has rank {} at batch 2 but {} at batch 3".format(name, a.dim(), b.dim()))
    dims: List[Any] = []
    for x, y in zip(a.shape, b.shape):
        if x == y:
            dims.append(int(x))
        elif (x, y) == (2, 3):
            dims.append("batch")
        else:
            raise UsageError("{}: a dimension changes from {} to {} between batch 2 and 3 (shapes {} / {})".format(
                name, x, y, tuple(a.shape), tuple(b.shape)))
    if "batch" not in dims:
        raise UsageError("{} has no batch axis (shape {} at batch 2 and 3)".format(name, tuple(a.shape)))
    return tuple(dims)


def _dtype(tensor) -> str:
    name = str(tensor.dtype).replace("torch.", "")
    if name not in ("float32", "int64"):
        raise UsageError("tensors of the decoder protocol must be float32 (or int64), got {}".format(name))
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- patches, proved --------------------------------------------------------------------------------

def plan_and_prove(subject: ExportSubject, graphs: List[str]) -> Dict[str, List[Any]]:
    """The export patches of each graph, each proved equal to the unpatched module on its example."""
    from jetcap.export.patches import plan_patches, prove_equal

    plans: Dict[str, List[Any]] = {}
    for graph in graphs:
        module = subject.graph_module(graph)
        spec = subject.spec(graph)
        axes = {"batch": 2, "T": int(subject.config.get("probe_len", 8))}
        feed = subject.dummy_inputs(graph, axes, seed=7)
        args = [torch.from_numpy(feed[n]) for n in spec.input_names]
        used = modules_called(module, lambda: module(*args))
        plan, skipped = plan_patches(module)
        plan = [p for p in plan if p.path in used]  # only what this graph runs (a step holds the encoder too)
        subject.warnings.extend(s for s in skipped if s.split(" ", 1)[0] in used)
        if plan:
            worst = prove_equal(lambda: module(*args), module, plan)
            subject.checks.append({"check": "export patches equal the unpatched model", "graph": graph,
                                   "status": "passed", "detail": "{}: max abs diff {:.3g}".format(
                                       ", ".join("{} at {}".format(p.patch, p.path) for p in plan), worst)})
        plans[graph] = plan
    return plans


def modules_called(root, run) -> set:
    """Paths (as in ``named_modules``) of the submodules of ``root`` that ``run()`` calls."""
    called = set()
    handles = [module.register_forward_pre_hook(lambda m, a, path=path: called.add(path))
               for path, module in root.named_modules() if path]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return called


def patch_records(plans: Dict[str, List[Any]]) -> List[Dict[str, str]]:
    return [{"graph": graph, "patch": p.patch, "module": p.path, "reason": p.reason}
            for graph, plan in plans.items() for p in plan]


# -- classifier -------------------------------------------------------------------------------------

class ClassifierGraphModule(nn.Module):
    """Graph module of a user's classifier: ``sequence -> (logits, kept outputs...)``."""

    def __init__(self, model, picks: List[Tuple[str, Any]]):
        super().__init__()
        self.model = model
        self.picks = picks  # [(graph output name, key into the flattened forward output)]

    def forward(self, sequence):
        flat = dict(flatten_outputs(self.model(sequence)))
        return tuple(flat[key] for _, key in self.picks)


def holds_probabilities(*tensors) -> bool:
    """Whether every row of the (batch, classes) ``tensors`` is non-negative and sums to 1: a softmax's
    output, not logits (logits that happen to do so are all in [0, 1] and sum to 1 exactly: never seen)."""
    for tensor in tensors:
        # a sum of C values rounded to the tensor's precision: float16/bfloat16 rows sum to 1 less closely
        tolerance = 1e-4 if tensor.dtype in (torch.float32, torch.float64) else 1e-2
        values = tensor.detach().double()
        if values.numel() == 0 or not bool(torch.isfinite(values).all()) or float(values.min()) < 0.0:
            return False
        if float((values.sum(dim=-1) - 1.0).abs().max()) > tolerance:
            return False
    return True


def flatten_outputs(out) -> List[Tuple[str, Any]]:
    """``[(name, tensor)]`` of a forward's result: a tensor (``output``), a tuple/list (``output_<i>``)
    or a dict (its keys); non-tensor entries (None, lists of strings) are left out."""
    if isinstance(out, torch.Tensor):
        return [("output", out)]
    if isinstance(out, Mapping):
        return [(str(k), v) for k, v in out.items() if isinstance(v, torch.Tensor)]
    if isinstance(out, (tuple, list)):
        return [("output_{}".format(i), v) for i, v in enumerate(out) if isinstance(v, torch.Tensor)]
    raise UsageError("the classifier's forward returns a {}, not tensors".format(type(out).__name__))


class ClassifierSubject(ExportSubject):
    """A sequence classifier as the user's forward computes it: ``(batch, T, F)`` in."""

    def __init__(self, source: ModelSource, output: Optional[str] = None, input_size: Optional[int] = None,
                 max_len: Optional[int] = None, seed: int = 0, min_len: Optional[int] = None):
        super().__init__(source=source, family="classifier")
        if max_len is not None and int(max_len) < 1:
            raise UsageError("--max-len must be at least 1, got {}".format(max_len))
        if min_len is not None and not 1 <= int(min_len) <= int(max_len or min_len):
            raise UsageError("--min-len must be between 1 and the max length, got {}".format(min_len))
        self.min_len_given = int(min_len) if min_len is not None else None
        model = source.model
        if isinstance(model, Mapping):
            if len(model) != 1:
                raise UsageError("a classifier is one module, got parts {}".format(", ".join(sorted(model))))
            model = next(iter(model.values()))
        self.model = model
        self.int8_keep_float = ()
        self._configure(input_size, max_len)
        self._probe(output, seed)
        optional = optional_forward_arguments(model)
        if optional:
            self.warnings.append(
                "the graph runs forward(x) with its optional argument(s) {} left at the default: give predict and "
                "/predict each clip unpadded, its own T frames (padding frames would count as frames, where your "
                "pipeline may pass the true lengths)".format(", ".join(optional)))

    def _configure(self, input_size, max_len) -> None:
        stored = self.source.stored
        found = first_stored(stored, INPUT_SIZE_KEYS)
        if input_size is not None:
            self.note_value("input_size", int(input_size), "--input-size")
        elif found is not None and isinstance(found[1], int):
            self.note_value("input_size", int(found[1]), "checkpoint config {!r}".format(found[0]))
        else:
            first = first_layer_input(self.model)
            if first is None:
                raise UsageError("cannot tell how many features per frame the classifier takes",
                                 hint="pass --input-size F")
            self.note_value("input_size", first[1], "in-size of the first layer {}".format(first[0]))
        bound = positional_bound(self.model)
        found = first_stored(stored, MAX_LEN_KEYS)
        if bound is not None and max_len is not None and int(max_len) > bound[1]:
            raise UsageError("--max-len {} is beyond the model's positional encoding {} of {} frames".format(
                max_len, bound[0], bound[1]), hint="pass --max-len {} or less".format(bound[1]))
        if bound is not None and max_len is not None:
            self.note_value("max_len", int(max_len), "--max-len (the positional encoding {} holds {})".format(
                bound[0], bound[1]))
        elif bound is not None:
            self.note_value("max_len", bound[1], "length of the positional-encoding table {}".format(bound[0]))
        elif found is not None and isinstance(found[1], int):
            self.note_value("max_len", int(found[1]), "checkpoint config {!r}".format(found[0]))
        elif max_len is not None:
            self.note_value("max_len", int(max_len), "--max-len")
        else:
            self.assume("max_len", DEFAULT_SEQ_MAX, "nothing in the model bounds T; pass --max-len N for the longest "
                                                    "sequence the device must accept")

    def _run(self, batch: int, length: int, seed: int = 0):
        rng = np.random.RandomState(seed)
        x = torch.from_numpy(rng.normal(0.0, 1.0, size=(batch, length, self.config["input_size"])).astype(np.float32))
        with torch.no_grad():
            return flatten_outputs(self.model(x))

    def _probe(self, output: Optional[str], seed: int) -> None:
        high = int(self.config["max_len"])
        low = self.min_len_given or 1
        t1 = max(low, min(high, 12))
        # two lengths tell the T axis from fixed ones; a model of one length (--min-len = --max-len) gets one
        t2 = t1 + 5 if t1 + 5 <= high else max(low, t1 - 1)
        try:
            out1, out2 = self._run(2, t1, seed), self._run(3, t2, seed + 1)
        except Exception as exc:  # the user's forward: one line
            raise UsageError("running the classifier's forward on (batch, T, {}) input failed: {}: {}".format(
                self.config["input_size"], type(exc).__name__, _first_line(exc)),
                hint="pass --input-size F if the feature count is wrong, or --min-len/--max-len for the "
                     "lengths it runs (tried T = {} and {})".format(t1, t2)) from None
        self.config["probe_len"] = t1
        shapes: Dict[str, Tuple[Any, ...]] = {}
        for (name, a), (_, b) in zip(out1, out2):
            dims: List[Any] = []
            for x, y in zip(a.shape, b.shape):
                dims.append(int(x) if x == y else "batch" if (x, y) == (2, 3) else "T" if (x, y) == (t1, t2) else None)
            if a.dim() == b.dim() and None not in dims and "batch" in dims:
                shapes[name] = tuple(dims)
        names = [n for n, _ in out1]
        probed = dict((name, (tuple(a.shape), tuple(b.shape))) for (name, a), (_, b) in zip(out1, out2))
        logits_key = self._pick_logits(output, names, shapes, probed)
        if holds_probabilities(dict(out1)[logits_key], dict(out2)[logits_key]):
            # a softmax of them would be wrong: the runtime reads them as they are (manifest config "scores")
            self.note_value("scores", "probabilities", "forward output {!r}: every row is non-negative and sums "
                            "to 1".format(logits_key))
            self.warnings.append(
                "forward output {!r} holds probabilities (the forward ends in a softmax): the graph's 'logits' output "
                "keeps them as they are, and predict, serve-engine and validate read them as probabilities "
                "(config scores = probabilities), never a softmax of them".format(logits_key))
        self.min_len_probe()
        picks = [("logits", logits_key)] + [(_safe_name(n), n) for n in names if n != logits_key and n in shapes]
        dropped = [n for n in names if n != logits_key and n not in shapes]
        if dropped:
            self.warnings.append("forward outputs left out of the graph (their axes are neither batch nor T, e.g. a "
                                 "pooled length): " + ", ".join(dropped))
        self.picks = picks
        self.note_value("num_classes", int(shapes[logits_key][1]), "forward output {!r}".format(logits_key))
        self.outputs_kept = [p[0] for p in picks[1:]]
        self.graphs = [GraphSpec("model", (TensorSpec("sequence", "float32", ("batch", "T", self.config["input_size"])),),
                                 tuple(TensorSpec(g, "float32", shapes[k]) for g, k in picks))]
        self._module = ClassifierGraphModule(self.model, picks).eval()

    def _pick_logits(self, output: Optional[str], names: List[str], shapes: Dict[str, Tuple[Any, ...]],
                     probed: Optional[Dict[str, Tuple[Any, Any]]] = None) -> str:
        if output is not None:
            key = output
            if output.lstrip("-").isdigit():
                index = int(output)
                if not -len(names) <= index < len(names):
                    raise UsageError("--output {} is out of range: the forward returns {} tensors ({})".format(
                        output, len(names), ", ".join(names)))
                key = names[index]
            if key not in names:
                raise UsageError("--output {!r} is not among the forward's outputs: {}".format(output, ", ".join(names)))
            where = "--output {}".format(output)
        else:
            two_d = [n for n in names if n in shapes and len(shapes[n]) == 2 and shapes[n][0] == "batch"
                     and isinstance(shapes[n][1], int)]  # (batch, T) attention weights are not classes
            key = "logits" if "logits" in names else (two_d[0] if two_d else names[0])
            where = "the first (batch, classes) output" if key != "logits" else "the output named 'logits'"
            if len(names) > 1:
                self.warnings.append("logits taken from forward output {!r} ({}); pass --output NAME|INDEX to choose "
                                     "another".format(key, where))
        shape = shapes.get(key)
        if shape is None and probed and key in probed:
            first, second = probed[key]
            raise UsageError("forward output {!r} is not (batch, classes) logits: its shape is {} for a batch of 2 and "
                             "{} for a batch of 3, so its axes do not follow the batch (a time-major forward, "
                             "(T, batch, F)?)".format(key, first, second),
                             hint="jetcap feeds classifiers (batch, T, F); wrap the model so that its forward takes "
                                  "that, or pass --output NAME|INDEX")
        if shape is None or len(shape) != 2 or shape[0] != "batch" or not isinstance(shape[1], int):
            raise UsageError("forward output {!r} is not (batch, classes) logits (shape {})".format(key, shape),
                             hint="pass --output NAME|INDEX")
        self.note_value("logits_output", key, where)
        return key

    def min_len_probe(self) -> None:
        """The shortest T the forward accepts (convolutions/pooling may need a few frames), from --min-len on."""
        if self.min_len_given is not None:
            try:
                self._run(1, self.min_len_given)
            except Exception as exc:  # the user's forward: one line
                raise UsageError("the classifier's forward fails at --min-len {}: {}: {}".format(
                    self.min_len_given, type(exc).__name__, _first_line(exc))) from None
            self.note_value("min_len", self.min_len_given, "--min-len")
            return
        for length in range(1, min(17, int(self.config["max_len"]) + 1)):
            try:
                self._run(1, length)
            except Exception:  # noqa: BLE001 -- too short for the user's forward: try the next length
                continue
            self.note_value("min_len", length, "shortest T the forward accepts (probed)")
            return
        raise UsageError("the classifier's forward fails for every T from 1 to 16")

    def _graph_module(self, graph: str):
        if graph != "model":
            raise KeyError(graph)
        return self._module

    @contextlib.contextmanager
    def export_context(self, graph: str) -> Iterator[None]:
        from jetcap.export.patches import patched

        with patched(self._module, self.patch_plans.get(graph, [])):
            yield

    @property
    def patch_plans(self) -> Dict[str, List[Any]]:
        if not hasattr(self, "_patch_plans"):
            self._patch_plans = plan_and_prove(self, ["model"])
        return self._patch_plans

    def dummy_inputs(self, graph: str, axes: Mapping[str, int], seed: int = 0) -> Dict[str, np.ndarray]:
        rng = np.random.RandomState(seed)
        return {"sequence": rng.normal(0.0, 1.0, size=(int(axes["batch"]), int(axes["T"]),
                                                        self.config["input_size"])).astype(np.float32)}

    def logits(self, sequence: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self._module(torch.from_numpy(np.array(sequence, dtype=np.float32, copy=True)))[0].numpy()

    def manifest_extras(self) -> Dict[str, Any]:
        extras = super().manifest_extras()
        extras["patches"] = patch_records(self.patch_plans)
        extras["outputs_kept"] = list(self.outputs_kept)
        return extras


def _safe_name(name: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name)
    return cleaned if cleaned not in ("sequence", "logits") else cleaned + "_out"


def first_layer_input(model) -> Optional[Tuple[str, int]]:
    """``(module path, input features)`` of the first Conv1d / Linear / LSTM / GRU in definition order."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv1d):
            return name, int(module.in_channels)
        if isinstance(module, nn.Linear):
            return name, int(module.in_features)
        if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
            return name, int(module.input_size)
    return None


def _positional_name(path: str) -> bool:
    """Whether a table's own name (the last part of ``path``) says it holds positions: ``pe``, ``pos``,
    ``positions``, ``pos_...``, ``position_...`` or ``...positional...`` (never ``pose_proj``, ``post_fc``)."""
    leaf = path.rsplit(".", 1)[-1].lower()
    return leaf in ("pe", "pos", "positions") or leaf.startswith(("pos_", "position_")) or "positional" in leaf


def optional_forward_arguments(model) -> List[str]:
    """Names of ``model.forward``'s arguments after the input that have defaults (``lengths=None``,
    ``mask=None``): the exported graph takes the input alone, so they keep those defaults."""
    import inspect

    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # a forward inspect cannot read (a C extension): nothing to say
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters[1:] if p.kind in kinds and p.default is not inspect.Parameter.empty]


def positional_bound(model) -> Optional[Tuple[str, int]]:
    """``(name, length)`` of a positional-encoding table bounding T: a buffer (a sinusoidal ``pe``, or any
    buffer of a ``...positional...`` module), a learned parameter, or an ``nn.Embedding``'s weight, named
    as :func:`_positional_name` says."""
    torch = require("torch")
    tables = [(name, b) for name, b in model.named_buffers() if _positional_name(name) or "positional" in name.lower()]
    tables += [(name, p) for name, p in model.named_parameters() if _positional_name(name)]
    tables += [(name + ".weight", module.weight) for name, module in model.named_modules()
               if isinstance(module, torch.nn.Embedding) and name and _positional_name(name)]
    for name, table in tables:
        dims = [int(d) for d in table.shape[:-1] if int(d) > 1]
        if table.dim() >= 2 and dims:
            return name, dims[0]
    return None


# -- jetcap's own families ----------------------------------------------------------------------------

# Values of the built-in families that no tensor holds: the family's default is used, with a warning.
BUILTIN_DEFAULTS = {
    "captioner": {
        "grid": "the feature map is pooled to 7x7 as jetcap's family does (Show-Attend-Tell tutorials pool to "
                "14x14); pass --grid N (0: no pooling) or store config['grid']",
        "image_size": "the usual ImageNet input size; pass --image-size N",
        "mean": "ImageNet normalisation (store config['mean'] if the model was trained with another)",
        "std": "ImageNet normalisation (store config['std'] if the model was trained with another)",
    },
}


class BuiltinSubject(TorchCaptioning, ExportSubject):
    """A checkpoint rebuilt into one of jetcap's families (the no-code path)."""

    def __init__(self, source: ModelSource, config: Dict[str, Any], given: Optional[Dict[str, str]] = None):
        loaded = source.builtin
        given = dict(given or {})
        super().__init__(source=source, family=loaded.family.name, config=dict(config))
        self.loaded = loaded
        self.fam = loaded.family
        self.int8_keep_float = tuple(self.fam.int8_keep_float)
        self.graphs = self.fam.graphs(self.config)
        self.config_sources = {k: loaded.provided.get(k, "tensor shapes") for k in self.config}
        for key, why in BUILTIN_DEFAULTS.get(self.family, {}).items():
            if key in self.config and key not in loaded.provided and key not in given:
                self.assume(key, self.config[key], why)
        for key in given:
            self.config_sources[key] = given[key]
        self.warnings.append("model rebuilt from the known layout of jetcap's {} family, not from your code; "
                             "pass --model MODULE:NAME or --trust-pickle to export your own".format(self.family))
        self.vocab = loaded.vocab
        self._modules: Dict[str, Any] = {}
        if self.family == "captioner":
            self.decoder_entry = dict(LEGACY_DECODER)
            self.protocol = DecoderProtocol(self.decoder_entry, self.spec("decoder_step").manifest_entry(),
                                            self.spec("encoder").manifest_entry())
            self.add_topk()

    def _graph_module(self, graph: str):
        cached = self._modules.get(graph)
        if cached is None:
            cached = self._modules[graph] = self.fam.graph_module(self.loaded.model.eval(), graph)
        return cached

    def dummy_inputs(self, graph: str, axes: Mapping[str, int], seed: int = 0) -> Dict[str, np.ndarray]:
        return self.fam.dummy_inputs(self.config, graph, axes, seed=seed)

    def logits(self, sequence: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.loaded.model(torch.from_numpy(np.array(sequence, dtype=np.float32, copy=True)))[0].numpy()

    def manifest_extras(self) -> Dict[str, Any]:
        extras = super().manifest_extras()
        if self.family == "captioner":
            extras["decoder"] = dict(self.decoder_entry)
        return extras


def is_builtin(source: ModelSource) -> bool:
    return source.kind == BUILTIN


# -- choosing the subject -------------------------------------------------------------------------------

def _looks_like_captioner(source: ModelSource) -> bool:
    model = source.model
    if isinstance(model, Mapping):
        return "encoder" in model and "decoder" in model
    return source.vocab is not None or (hasattr(model, "encoder") and hasattr(model, "decoder"))


def make_subject(source: ModelSource, opts) -> ExportSubject:
    """The export subject of ``source`` under the export options ``opts``.

    A built-in source needs its configured ``config`` first (see ``jetcap.export.bundle``); user code is
    a captioner when an adapter is given, when it comes in encoder/decoder parts or with a word map,
    else a classifier -- ``--family`` decides when given.
    """
    if is_builtin(source):
        raise ValueError("built-in sources are made into a BuiltinSubject by the caller")
    family = opts.family or source.family
    if family is None:
        family = "captioner" if (opts.adapter is not None or _looks_like_captioner(source)) else "classifier"
    if family not in ("captioner", "classifier"):
        raise UsageError("unknown family {!r} (captioner, classifier)".format(family))
    if opts.dynamic_image_size:
        raise UsageError("--dynamic-image-size is supported for jetcap's built-in captioner family only; your "
                         "model is exported at one image size (--image-size)")
    if family == "classifier":
        if opts.adapter is not None:
            raise UsageError("--adapter describes a captioner's decoder step; this is a classifier")
        low, _, high = opts.seq_len
        classifier = ClassifierSubject(source, output=opts.output, input_size=opts.input_size, max_len=high,
                                       seed=opts.seed, min_len=low)
        classifier.patch_plans  # noqa: B018 -- plan and prove the patches now, so their checks are logged
        return classifier
    if opts.output is not None:
        raise UsageError("--output chooses a classifier's logits; captioner outputs come from the adapter")
    if opts.adapter is not None:
        from jetcap.export.adapters.user_file import load_adapter_file

        adapter = load_adapter_file(Path(opts.adapter))
    else:
        from jetcap.export.adapters.sat import ShowAttendTellAdapter

        adapter = ShowAttendTellAdapter(source.model)
    subject = CaptionerSubject(source, adapter, image_size=opts.image_size, mean=opts.mean, std=opts.std,
                               max_len=opts.caption_max_len, seed=opts.seed)
    from jetcap.export.adapter_check import check_adapter_against_forward

    subject.checks.append(check_adapter_against_forward(adapter, source.model, int(subject.config["image_size"]),
                                                        len(subject.vocab), subject.vocab.start_id, seed=opts.seed))
    if subject.checks[-1]["status"] != "passed":
        subject.warnings.append("adapter not cross-checked against the model's forward: " + subject.checks[-1]["detail"])
    subject.patch_plans  # noqa: B018 -- plan and prove the patches now, so their checks are logged
    return subject
