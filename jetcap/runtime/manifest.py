"""The bundle manifest: everything the runtime needs, so a device needs neither torch nor training code.

``manifest.json`` (format version 1) holds::

    format, format_version, family, created_by {jetcap, torch, onnx, ...}, source {checkpoint, sha256,
    layout}, export {opset, exporter, seconds}, config {hyper-parameters},
    graphs {name: {inputs: [{name, dtype, shape}], outputs: [...]}}   # shape: ints and axis names
    axes {axis: {min, opt, max}}                                      # ranges of every symbolic axis
    variants {precision: {files: {graph: {path, sha256, bytes}}, ...how it was made...}}
                                  # int8-cpu also: target "cpu", backend "onnxruntime" (see CPU_PRECISIONS)
    preprocessing {image_size [h, w], resize, mean, std, channel_order, layout, scale}   # captioner
                  (+ image_size_range [min, max] of a ``--dynamic-image-size`` export, see below)
    vocabulary {itos, specials} | labels [names]
    decoding {max_len, beam_size}, reference {path, sha256}, validation {...}
    decoder {word_input, log_probs, attention, state [...], context [...], topk {...}}   # captioner, see
                                                     # jetcap.runtime.decoder_protocol
    source {kind, model, checkpoint, sha256, layout}, config_sources {key: where it came from},
    assumptions [...], patches [...], source_checks [...], adapter {...}, preflight {...}

A captioner exported with ``--dynamic-image-size`` has encoder input ``(batch, 3, height, width)`` and
``num_pixels`` (feature-map positions: ``ceil(side / 32) ** 2``) in features/projected/alpha, each axis
with min/opt/max in ``axes``.  The runtime still resizes every image to ``preprocessing.image_size``
(the opt size); a caller driving the graphs itself may feed any square size within ``image_size_range``
(TensorRT profiles cover it), with ``num_pixels`` following from that size.

This module reads and checks it (Python 3.6, no torch/onnx).
"""
import os

from jetcap.errors import BundleError
from jetcap.runtime import bundle_schema
from jetcap.util.fsio import read_json

FORMAT = "jetcap-bundle"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
MAX_MANIFEST_BYTES = 32 << 20
PRECISIONS = ("fp32", "fp16", "int8", "int8-cpu")
# Variants for ONNX Runtime on a CPU only (the Jetson's ARM cores, x86 edge boxes, a Pi): int8-cpu is dynamic
# u8s8 weight quantisation (MatMulInteger / DynamicQuantizeLinear), a form TensorRT does not build.
CPU_PRECISIONS = ("int8-cpu",)
TENSORRT_PRECISIONS = tuple(p for p in PRECISIONS if p not in CPU_PRECISIONS)
# Variants whose rows are not computed independently: int8-cpu quantises each call's activations with one
# scale over all its rows (DynamicQuantizeLinear), so an image's caption would depend on the images it
# shares a call with.  Their images are never batched with other images (a beam's rows still share calls).
ROW_COUPLED_PRECISIONS = ("int8-cpu",)


def rows_independent(precision):
    """True when a row's result of ``precision``'s graphs does not depend on the other rows of its call."""
    return precision not in ROW_COUPLED_PRECISIONS


def tensorrt_refusal(precision):
    """The one-line reason TensorRT cannot take ``precision`` (a CPU variant), or None when it can."""
    if precision in CPU_PRECISIONS:
        return ("{} is a CPU variant (ONNX Runtime dynamic INT8), not a TensorRT form: run it with "
                "--backend onnxruntime; TensorRT builds {}".format(precision, ", ".join(TENSORRT_PRECISIONS)))
    return None


def resolve_shape(shape, sizes):
    """Concrete shape of ``shape`` (ints and axis names) with axis names looked up in ``sizes``."""
    out = []
    for dim in shape:
        if isinstance(dim, int):
            out.append(dim)
        elif dim in sizes:
            out.append(int(sizes[dim]))
        else:
            raise BundleError("no size given for axis {!r}".format(dim))
    return tuple(out)


def profile_shapes(inputs, axes):
    """min/opt/max shapes of each graph input for an optimization profile.

    Args:
        inputs: the manifest's list of ``{name, dtype, shape}`` of one graph.
        axes: ``{axis: {min, opt, max}}``.
    Returns:
        ``{input_name: (min_shape, opt_shape, max_shape)}``.
    """
    result = {}
    for tensor in inputs:
        shapes = []
        for level in ("min", "opt", "max"):
            sizes = dict((name, rng[level]) for name, rng in axes.items())
            shapes.append(resolve_shape(tensor["shape"], sizes))
        result[tensor["name"]] = tuple(shapes)
    return result


class Manifest(object):
    """A loaded, checked ``manifest.json`` of the bundle in ``bundle_dir``."""

    def __init__(self, data, bundle_dir):
        self.data = data
        self.bundle_dir = os.path.abspath(str(bundle_dir))
        self._check()

    @classmethod
    def load(cls, bundle_dir):
        """Read ``bundle_dir/manifest.json``; BundleError when missing or malformed."""
        bundle_dir = str(bundle_dir)
        path = os.path.join(bundle_dir, MANIFEST_NAME)
        if not os.path.isdir(bundle_dir):
            raise BundleError("bundle directory not found: {}".format(bundle_dir))
        if not os.path.isfile(path):
            raise BundleError("{} has no {} (is it a jetcap bundle?)".format(bundle_dir, MANIFEST_NAME))
        if not os.path.realpath(path).startswith(os.path.realpath(bundle_dir).rstrip(os.sep) + os.sep):
            raise BundleError("{} leads outside the bundle (a link to {})".format(path, os.path.realpath(path)))
        try:
            size = os.path.getsize(path)
            if size > MAX_MANIFEST_BYTES:  # a vocabulary of 100 000 words is about 2 MB
                raise BundleError("{} is {:.0f} MB, over the {} MB a manifest may have".format(
                    path, size / 1e6, MAX_MANIFEST_BYTES >> 20))
            data = read_json(path)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
            raise BundleError("{} is not valid JSON: {}".format(path, exc))
        except (IOError, OSError) as exc:
            raise BundleError("cannot read {}: {}".format(path, exc.strerror or exc))
        return cls(data, bundle_dir)

    def _check(self):
        data = self.data
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise BundleError("manifest is not a {} manifest".format(FORMAT))
        version = data.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise BundleError("manifest format version {!r} is not supported by this jetcap (reads <= {})".format(
                version, FORMAT_VERSION), hint="upgrade jetcap on this device")
        bundle_schema.check_manifest(data, self.bundle_dir)

    # -- accessors ------------------------------------------------------------------------------
    @property
    def family(self):
        return self.data["family"]

    @property
    def config(self):
        return self.data["config"]

    @property
    def axes(self):
        return self.data["axes"]

    @property
    def graph_names(self):
        """Graph names in pipeline order (``graph_order``; sorted for manifests without it)."""
        order = self.data.get("graph_order") or sorted(self.data["graphs"])
        return [name for name in order if name in self.data["graphs"]]

    @property
    def precisions(self):
        return [p for p in PRECISIONS if p in self.data["variants"]]

    @property
    def preprocessing(self):
        return self.data.get("preprocessing", {})

    @property
    def decoding(self):
        return self.data.get("decoding", {})

    @property
    def labels(self):
        return self.data.get("labels")

    def graph(self, name):
        """``{inputs, outputs}`` of graph ``name``."""
        try:
            return self.data["graphs"][name]
        except KeyError:
            raise BundleError("bundle has no graph {!r} (has: {})".format(name, ", ".join(self.graph_names)))

    def variant(self, precision):
        """The variant entry of ``precision``; BundleError listing the available ones."""
        try:
            return self.data["variants"][precision]
        except KeyError:
            failed = (self.data.get("failed_variants") or {}).get(precision)
            if isinstance(failed, dict):  # a partial bundle (export --keep-passing): say why it is not there
                reasons = [str(f) for f in failed.get("failures") or []][:1]
                raise BundleError("the {} variant failed its checks at export and was left out of this bundle "
                                  "(has: {}){}".format(precision, ", ".join(self.precisions),
                                                       ": " + reasons[0][:200] if reasons else ""))
            raise BundleError("bundle has no {} variant (has: {})".format(precision, ", ".join(self.precisions)),
                              hint="re-export with --precision {}".format(precision))

    def graph_path(self, precision, graph):
        """Absolute path of ``graph``'s ONNX file in ``precision``; BundleError if the file is missing."""
        entry = self.variant(precision)["files"][graph]
        path = bundle_schema.bundle_file(self.bundle_dir, entry["path"], "{} {}".format(precision, graph))
        if not os.path.isfile(path):
            raise BundleError("bundle file missing: {}".format(path))
        return path

    def verify_file(self, precision, graph):
        """Check the sha256 of one graph file and its external data against the manifest; BundleError on mismatch."""
        return bundle_schema.verify_graph_file(self.bundle_dir, self.variant(precision)["files"][graph],
                                               "{} {}".format(precision, graph))

    def vocabulary(self):
        """The captioner's :class:`jetcap.runtime.vocab.Vocabulary`."""
        from jetcap.runtime.vocab import Vocabulary

        if "vocabulary" not in self.data:
            raise BundleError("bundle has no vocabulary (family {})".format(self.family))
        return Vocabulary.from_dict(self.data["vocabulary"])

    def profile(self, graph):
        """min/opt/max input shapes of ``graph`` (see :func:`profile_shapes`)."""
        return profile_shapes(self.graph(graph)["inputs"], self.axes)

    def reference_path(self):
        """Absolute path of the reference-data npz (its sha256 checked), or None when the bundle has none."""
        ref = self.data.get("reference")
        if not ref:
            return None
        return bundle_schema.verify_reference(self.bundle_dir, ref)
