"""ONNX Runtime backend (CPU everywhere; CUDA execution provider when present) (Python 3.6)."""
import collections

from jetcap.errors import BundleError, JetcapError, UsageError
from jetcap.runtime.backends.base import Runner, io_mismatches
from jetcap.util import versions
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
# ``spinning`` of a session: its intra-op pool may spin while a run lasts and stops spinning when the run
# returns (``session.force_spinning_stop``), so a layer's workers need no wake-up from the one before, and
# no core is held between runs.  ONNX Runtime reads that key from 1.12 on (JetPack's 1.10 lacks it: a
# pool there either spins between runs too or not at all).
SPIN_DURING_RUNS = "during-runs"
SPIN_DURING_RUNS_SINCE = (1, 12)


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
        spinning: True (the default): idle intra-op threads spin, between runs too; False: they never
            spin; :data:`SPIN_DURING_RUNS`: they spin while a run lasts and stop when it returns (ONNX
            Runtime 1.12+: :func:`spinning_policy` decides which to ask for).  Sessions that alternate
            within one request (encoder, decoder step) must not spin between runs: each one's pool steals
            the cores the other needs (measured: a caption 9.8-11.1 ms with spinning, 4.9-6.9 ms without,
            2 cores).
        nchwc: allow the NCHWc layout transformer (default False: it crashes on some FP16 graphs;
            :func:`bundle_runners` allows it for FP32 and INT8 variants).
        fuse_qdq: let ONNX Runtime fuse Q/DQ nodes into its int8 kernels (default True; see
            :func:`fuses_qdq`).
    """
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    if spinning == SPIN_DURING_RUNS and not spins_during_runs():
        spinning = False  # an older ONNX Runtime ignores the key: its pool would spin between runs too
    if spinning == SPIN_DURING_RUNS:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    elif not spinning:
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

    def infer_impl(self, feed, outputs):
        return dict(zip(outputs, self.session.run(outputs, feed)))

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


def onnxruntime_version(version=None):
    """``version`` (a string or tuple; default the installed onnxruntime's) as a tuple of ints, ``(0,)`` for a
    custom build's string that names no release: such a build gets what every release takes."""
    if version is None:
        version = getattr(require("onnxruntime"), "__version__", "")
    try:
        return versions.parse_version(version, "onnxruntime version")
    except UsageError:
        return (0,)


def spins_during_runs(version=None):
    """Whether the installed ONNX Runtime (or ``version``, a string or tuple) can stop its pools spinning
    when a run returns (``session.force_spinning_stop``, read from 1.12 on; ignored by older releases).  An
    unreadable version gets the older policies: spinning is only a speed choice."""
    return onnxruntime_version(version) >= SPIN_DURING_RUNS_SINCE


def spinning_policy(graphs, graph, spinning=None, during_runs=None):
    """How ``graph``'s intra-op pool spins (``make_session``'s ``spinning``), of a bundle loaded with the
    graphs ``graphs``, for a caller that asks for ``spinning``:

    - None, one caller whose runs never overlap and who needs no core between them (``jetcap caption``,
      bench): every pool spins during its runs where ONNX Runtime can (:data:`SPIN_DURING_RUNS`).
      Measured on the COCO-sized captioner, 2 threads, batch 1, ONNX Runtime 1.32 (docs/BENCHMARKS.md):
      a caption 19.3 ms, against 21.3 ms with only the step spinning and 22.4 ms with no spinning (the
      step alone, run back to back, is slower: 1.12-1.15 ms against 0.98, each run waking its pool; the
      encoder is faster, 3.0-3.2 against 3.9 ms, and no pool spins through the other's runs).
      Without it (ONNX Runtime < 1.12, JetPack's 1.10): the pool of a single-graph bundle and of a
      captioner's decoder step spin, whose runs follow each other back to back, not the encoder's (it
      would spin through the steps after it: a caption 15.0 ms with no spinning, 13.5 ms with the step
      spinning, 16.1 / 24.0 ms with the encoder spinning).
    - :data:`SPIN_DURING_RUNS`, runs that never overlap, with other threads needing the cores between
      them (``serve-engine``'s decode loop: HTTP, image decoding, the search between steps): spinning
      during runs where ONNX Runtime can (1 client 49.8-50.0 -> 58.5-59.3 captions/s, 8 clients
      93.7-99.2 -> 96.0-97.3), else none (a pool spinning between runs held the cores the request
      threads need: 8 clients 40-47 -> 54-62 captions/s without spinning).
    - False, runs that overlap (``serve-engine``'s workers): no spinning at all; each concurrent run's
      pool spinning took the cores of the others (8 clients 80 -> 66 captions/s spinning during runs).
    - True: every pool spins, between runs too.

    ``during_runs`` (None: :func:`spins_during_runs` of the installed ONNX Runtime) says whether
    :data:`SPIN_DURING_RUNS` is possible.
    """
    if not (spinning is None or spinning is True or spinning is False
            or isinstance(spinning, str) and spinning == SPIN_DURING_RUNS):
        raise ValueError("spinning must be None, True, False or {!r}, not {!r}".format(SPIN_DURING_RUNS, spinning))
    if spinning is True or spinning is False:
        return spinning
    if during_runs is None:
        during_runs = spins_during_runs()
    if during_runs:
        return SPIN_DURING_RUNS
    if spinning == SPIN_DURING_RUNS:
        return False
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
