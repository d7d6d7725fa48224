"""ONNX Runtime backend (CPU everywhere; CUDA execution provider when present) (Python 3.6)."""
import collections

from jetcap.errors import BundleError, JetcapError
from jetcap.runtime.backends.base import Runner, io_mismatches
from jetcap.util.lazy import require

# ONNX Runtime's NCHWc layout transformer crashes (segfault) on some FP16 graphs (see FACTS.md), so it is
# off for those; on FP32/INT8 convolutions it is the largest single speed-up there is (measured on a
# MobileNetV2 encoder at 224x224, 2 threads: 6.1-7.0 ms without it, 2.6-3.6 ms with it).
DISABLED_OPTIMIZERS = ("NchwcTransformer",)
# The ``int8`` variant is explicit Q/DQ for TensorRT, whose int8 layers accumulate in int32 exactly. ONNX
# Runtime on a CPU fuses DQ -> op -> Q into its own int8 kernels, whose results depend on the instruction
# set: without AVX-512 VNNI the AVX2 u8s8 kernel sums pairs of products in saturating int16 (measured on an
# AMD EPYC without VNNI: the sample captioners' INT8 encoder features at 1.7x and 4.0x jetcap's tolerance,
# within it on a VNNI CPU).  Run unfused, each DQ, float op and Q computes what the Q/DQ graph specifies,
# the same on every CPU: that is how jetcap validates and runs the TensorRT Q/DQ variant in ONNX Runtime.
UNFUSED_QDQ_PRECISIONS = ("int8",)


def fuses_qdq(precision):
    """Whether ONNX Runtime may fuse the Q/DQ nodes of a ``precision`` variant into its CPU int8 kernels."""
    return precision not in UNFUSED_QDQ_PRECISIONS


def variant_options(precision):
    """The :func:`make_session` options of a ``precision`` variant, wherever jetcap runs one (runtime,
    export gate, validate, Triton): the NCHWc layout transformer except on FP16 (it crashes on some FP16
    graphs), Q/DQ unfused for the TensorRT int8 variant (:func:`fuses_qdq`)."""
    return {"nchwc": precision != "fp16", "fuse_qdq": fuses_qdq(precision)}


def available_providers():
    """Execution providers of the installed onnxruntime (empty list when it is not installed)."""
    try:
        ort = require("onnxruntime")
    except Exception:  # MissingDependencyError or a broken install: no provider available
        return []
    return list(ort.get_available_providers())


def default_providers(use_gpu=None):
    """CUDA then CPU when the CUDA provider exists (or ``use_gpu`` is True), else CPU only."""
    providers = available_providers()
    if use_gpu is not False and "CUDAExecutionProvider" in providers:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(path, providers=None, threads=None, spinning=True, nchwc=False, fuse_qdq=True):
    """An ``onnxruntime.InferenceSession`` for ``path`` with jetcap's session options.

    Args:
        path: ONNX file.
        providers: execution providers; default :func:`default_providers`.
        threads: intra-op threads (None: onnxruntime's default).
        spinning: let idle intra-op threads spin (default True).  Sessions that alternate within one
            request (encoder, decoder step) must not: each one's spinning pool steals the cores the
            other needs (measured: a caption 9.8-11.1 ms with spinning, 4.9-6.9 ms without, 2 cores).
        nchwc: allow the NCHWc layout transformer (default False: it crashes on some FP16 graphs;
            :func:`bundle_runners` allows it for FP32 and INT8 variants).
        fuse_qdq: let ONNX Runtime fuse Q/DQ nodes into its int8 kernels (default True; see
            :func:`fuses_qdq`).
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if not fuse_qdq:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.log_severity_level = 3
    if nchwc:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or default_providers())
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or default_providers(),
                                    disabled_optimizers=list(DISABLED_OPTIMIZERS))
    except TypeError:
        # onnxruntime builds older than 1.9 have no disabled_optimizers argument
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or default_providers())


class OnnxRuntimeRunner(Runner):
    """Runs one ONNX graph with ONNX Runtime.

    Args:
        path: the ONNX file.
        io_spec: the manifest's I/O description of the graph.
        name: readable name; default the file name.
        providers, threads, spinning, nchwc, fuse_qdq: see :func:`make_session`.
    """

    backend = "onnxruntime"

    def __init__(self, path, io_spec, name=None, providers=None, threads=None, spinning=True, nchwc=False,
                 fuse_qdq=True):
        super(OnnxRuntimeRunner, self).__init__(name or "onnxruntime:" + str(path), io_spec)
        self.path = str(path)
        self.providers = providers
        self.threads = threads
        self.spinning = spinning
        self.nchwc = nchwc
        self.fuse_qdq = fuse_qdq
        self.session = None

    def activate_impl(self):
        try:
            session = make_session(self.path, self.providers, self.threads, self.spinning, self.nchwc,
                                   self.fuse_qdq)
        except JetcapError:
            raise
        except MemoryError:
            raise
        except Exception as exc:  # ONNX Runtime's InvalidProtobuf, InvalidGraph, NoSuchFile, Fail ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError("ONNX Runtime cannot load {}: {}".format(self.path, first[:300]),
                              hint="a damaged or replaced graph file: re-export the bundle")
        check_graph_io(self.path, self.io_spec, [(t.name, t.shape) for t in session.get_inputs()],
                       [(t.name, t.shape) for t in session.get_outputs()])
        self.session = session

    def infer_impl(self, feed):
        values = self.session.run(self.output_names, feed)
        return dict(zip(self.output_names, values))

    def deactivate_impl(self):
        self.session = None


def check_graph_io(path, io_spec, inputs, outputs):
    """BundleError unless a graph's ``inputs`` / ``outputs`` (``(name, shape)`` as the backend reads them
    from the file) are the manifest's ``io_spec``: same input names, every manifest output present, same
    ranks, and no fixed dimension that differs from a fixed dimension of the manifest.  A graph file
    swapped for another (the decoder step in the encoder's place, a model of another size) is refused at
    load, in one line, instead of failing somewhere inside the first inference."""
    problems = io_mismatches(io_spec, inputs, outputs, exact=False)
    if problems:
        raise BundleError("{} is not the graph the manifest describes: {}".format(path, "; ".join(problems[:4])),
                          hint="a damaged or replaced graph file: re-export the bundle")


def spinning_policy(graphs, graph, spinning=None):
    """Whether ``graph``'s intra-op pool spins, of a bundle loaded with the graphs ``graphs``.

    ``spinning`` None (the default, for one caller running one request at a time: ``jetcap caption``,
    bench): the pool spins when the bundle has a single graph, and for a captioner's decoder step, whose
    runs follow each other back to back; the encoder's does not (it would spin through the steps that
    follow it).  Measured on a COCO-sized captioner, 2 threads, batch 1: a caption 15.0 ms with no
    spinning, 13.5 ms with the step spinning, 16.1 / 24.0 ms with the encoder spinning.  A bool decides
    for every graph: a server passes False, since its request threads (HTTP, image decoding, the search
    between steps) need the cores a spinning pool holds (measured: ``serve-engine`` 8 clients 40-47 ->
    54-62 captions/s, 1 client no slower, docs/BENCHMARKS.md).
    """
    if spinning is not None:
        return bool(spinning)
    return len(list(graphs)) == 1 or graph == "decoder_step"


def bundle_runners(manifest, precision="fp32", graphs=None, providers=None, threads=None, spinning=None):
    """``{graph: OnnxRuntimeRunner}`` (in pipeline order, not yet activated) for a bundle's variant.

    Which thread pools spin: :func:`spinning_policy` (``spinning`` None: the single-caller policy).  The
    NCHWc layout transformer runs except on FP16 variants (``make_session``'s ``nchwc``); the ``int8``
    (TensorRT Q/DQ) variant runs unfused (:func:`fuses_qdq`).
    """
    graphs = list(graphs or manifest.graph_names)
    return collections.OrderedDict(
        (graph, OnnxRuntimeRunner(manifest.graph_path(precision, graph), manifest.graph(graph),
                                  name="onnxruntime:{}[{}]".format(graph, precision), providers=providers,
                                  threads=threads, spinning=spinning_policy(graphs, graph, spinning),
                                  **variant_options(precision)))
        for graph in graphs)
