"""Write a Triton model repository from a jetcap bundle (``jetcap triton-repo``).

Layout for a captioner bundle named ``captioner`` (``--backend onnxruntime``)::

    OUT/captioner_encoder/config.pbtxt        platform onnxruntime_onnx, 1/model.onnx
    OUT/captioner_decoder_step/config.pbtxt   platform onnxruntime_onnx, 1/model.onnx
    OUT/captioner/config.pbtxt                backend python: image bytes or images -> caption, score
    OUT/captioner/1/model.py                  subclasses jetcap.triton.pymodels.CaptionerModel
    OUT/captioner/1/bundle/manifest.json      vocabulary, preprocessing, decoding, shapes
    OUT/captioner/1/jetcap/...                the torch-free jetcap runtime the model imports
    OUT/jetcap-repository.json                how the repository was made

``--backend tensorrt`` serves the graphs as ``tensorrt_plan`` from engines ``jetcap build`` cached;
``--backend python`` writes only the Python model, with the bundle's ONNX files in ``1/bundle/``, run
in-process with ONNX Runtime; ``--backend python-bls`` keeps the BLS layout but serves each graph with a
Python model running ONNX Runtime (for a Triton that has only the Python backend, such as PyTriton's).
Classifier bundles get ``<name>_model`` and a Python ``<name>`` model returning label, index and
probabilities.  The repository is written to a temporary directory and renamed.
"""
import glob
import json
import os
import shutil

from jetcap.errors import BundleError, MissingDependencyError, UsageError
from jetcap.check.preflight import verify_graph
from jetcap.runtime import bundle_schema
from jetcap.runtime.manifest import MANIFEST_NAME, Manifest, rows_independent
from jetcap.triton import config as pbtxt
from jetcap.util.fsio import atomic_directory, read_json, sha256_file

BACKENDS = ("onnxruntime", "tensorrt", "python", "python-bls")
PLATFORMS = {"onnxruntime": ("onnxruntime_onnx", "model.onnx"), "tensorrt": ("tensorrt_plan", "model.plan")}
DEFAULT_QUEUE_DELAY_US = 500
VERSION = "1"
REPOSITORY_RECORD = "jetcap-repository.json"
LABELS_FILE = "labels.txt"
# the parts of jetcap a Python-backend model imports (torch-free, Python 3.6 syntax)
VENDORED = ("__init__.py", "errors.py", "util", "runtime", "triton/__init__.py", "triton/bls.py", "triton/pymodels.py")


MAX_INSTANCES = 64


class RepositoryOptions(object):
    """How to write the repository.

    Args:
        backend: "onnxruntime" (default), "tensorrt", "python" (the bundle runs inside the Python model) or
            "python-bls" (graphs as Python-backend ONNX Runtime models, decoding through BLS).
        max_batch: ``max_batch_size`` of every model (default: the bundle's largest batch).
        instances: model instances per device (default 1).
        queue_delay_us: dynamic batcher queue delay in microseconds (default 500).
        precision: the bundle variant served: "fp32" (default), "fp16", "int8".
        engine_cache: TensorRT engine cache (default ``<bundle>/engines``).
        name: model name prefix (default: the bundle's family).
        force: replace an existing OUT_DIR.
    """

    def __init__(self, backend="onnxruntime", max_batch=None, instances=1, queue_delay_us=DEFAULT_QUEUE_DELAY_US,
                 precision="fp32", engine_cache=None, name=None, force=False):
        if backend not in BACKENDS:
            raise UsageError("unknown Triton backend {!r} (one of {})".format(backend, ", ".join(BACKENDS)))
        if max_batch is not None and int(max_batch) < 1:
            raise UsageError("--max-batch must be at least 1")
        if not 1 <= int(instances) <= MAX_INSTANCES:  # each holds its own session or engine context
            raise UsageError("--instances must be between 1 and {}, got {}".format(MAX_INSTANCES, instances))
        if int(queue_delay_us) < 0:
            raise UsageError("--queue-delay-us must not be negative")
        self.backend = backend
        self.max_batch = None if max_batch is None else int(max_batch)
        self.instances = int(instances)
        self.queue_delay_us = int(queue_delay_us)
        self.precision = precision
        self.engine_cache = engine_cache
        self.name = name
        self.force = bool(force)


def _jetcap_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def vendor_runtime(dest):
    """Copy the torch-free jetcap runtime (see :data:`VENDORED`) to ``dest/jetcap``."""
    root = _jetcap_root()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in VENDORED:
        src = os.path.join(root, rel)
        target = os.path.join(dest, "jetcap", rel)
        if os.path.isdir(src):
            shutil.copytree(src, target, ignore=ignore)
        else:
            if not os.path.isdir(os.path.dirname(target)):
                os.makedirs(os.path.dirname(target))
            shutil.copy2(src, target)


MODEL_PY = '''"""Triton Python-backend model written by jetcap triton-repo: {family} bundle, mode {mode}."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # the jetcap runtime copied beside this file wins over any installed jetcap

import triton_python_backend_utils as pb_utils  # noqa: E402  (exists only inside Triton's Python backend)

from jetcap.triton.pymodels import {base}  # noqa: E402


class TritonPythonModel({base}):
    """The {family} model; see jetcap.triton.pymodels.{base}."""

    pb_utils = pb_utils
    model_dir = HERE
'''


def _batch_max(manifest, options):
    bundle_max = int(manifest.axes.get("batch", {}).get("max", 1))
    if options.max_batch is None:
        return bundle_max
    if options.max_batch > bundle_max:  # engines are built, and every variant validated, up to it
        raise UsageError("--max-batch {} exceeds the bundle's largest batch {} (its batch axis: what its TensorRT "
                         "engines are built for and its variants were validated at)".format(options.max_batch,
                                                                                           bundle_max),
                         hint="re-export with --max-batch {} for larger batches".format(options.max_batch))
    return options.max_batch


# -- TensorRT engines -----------------------------------------------------------------------------------
def _variant_hashes(manifest, graph):
    return set(v["files"][graph]["sha256"] for v in manifest.data["variants"].values())


def scan_engine_cache(manifest, precision, cache_dir):
    """``{graph: CachedEngine}`` from the sidecars of ``cache_dir`` when TensorRT is not importable here.

    An engine qualifies when its sidecar names the graph and precision, was built from one of the bundle's
    ONNX files of that graph with the bundle's optimization profile, and its size matches.  All graphs
    must come from one TensorRT version and GPU.  BundleError when a graph has no engine or the cache
    holds engines of several TensorRT versions/GPUs (run on the target machine, where TensorRT picks).
    """
    from jetcap.runtime import engine as engine_module

    found = {}
    for graph in manifest.graph_names:
        profiles = dict((name, [[int(d) for d in shape] for shape in shapes])
                        for name, shapes in manifest.profile(graph).items())
        candidates = []
        for path in sorted(glob.glob(os.path.join(str(cache_dir), "{}-{}-*{}".format(
                graph, precision, engine_module.ENGINE_SUFFIX)))):
            side = engine_module.sidecar_path(path)
            if not os.path.isfile(side):
                continue
            try:
                sidecar = read_json(side)
            except ValueError:
                continue  # a corrupt sidecar never qualifies its engine
            fields = sidecar.get("fields", {}) if isinstance(sidecar, dict) else {}
            if (sidecar.get("graph") == graph and fields.get("precision") == precision
                    and fields.get("onnx_sha256") in _variant_hashes(manifest, graph)
                    and fields.get("profiles") == profiles and sidecar.get("engine_bytes") == os.path.getsize(path)):
                candidates.append(engine_module.CachedEngine(path, side, sidecar))
        if not candidates:
            raise BundleError("no {} TensorRT engine for graph {!r} in {}".format(precision, graph, cache_dir),
                              hint="build the engines on the target GPU first: jetcap build {} --precision {}".format(
                                  manifest.bundle_dir, precision))
        found[graph] = candidates
    targets = set((c.sidecar["fields"]["tensorrt"], c.sidecar["fields"]["gpu"])
                  for cands in found.values() for c in cands)
    if len(targets) > 1 or any(len(cands) > 1 for cands in found.values()):
        raise BundleError("the engine cache {} holds {} engines for several TensorRT versions/GPUs: {}".format(
            cache_dir, precision, "; ".join("TensorRT {} on {}".format(t, g) for t, g in sorted(targets))),
            hint="run triton-repo where TensorRT is installed (it picks the matching engines) or pass "
                 "--engine-cache with one target's engines")
    return dict((graph, cands[0]) for graph, cands in found.items())


def find_plans(manifest, precision, cache_dir=None):
    """``{graph: CachedEngine}``: this machine's engines when TensorRT imports, else the cache's only target."""
    from jetcap.runtime import engine as engine_module

    cache_dir = cache_dir or engine_module.default_cache_dir(manifest.bundle_dir)
    try:
        return engine_module.find_engines(manifest, precision, cache_dir=cache_dir)
    except MissingDependencyError:
        return scan_engine_cache(manifest, precision, cache_dir)


def _served_dtypes(manifest, graph, backend, plan):
    """``{input/output name: manifest dtype}`` as the served graph has them.

    TensorRT before 10 has no INT64 tensors: its ONNX parser turns them into INT32 bindings.
    """
    dtypes = {}
    version = plan.sidecar["fields"]["tensorrt"] if plan is not None else None
    major = int(str(version).split(".")[0]) if version and str(version).split(".")[0].isdigit() else None
    graph_spec = manifest.graph(graph)
    for tensor in graph_spec["inputs"] + graph_spec["outputs"]:
        dtype = tensor["dtype"]
        if backend == "tensorrt" and dtype == "int64" and major is not None and major < 10:
            dtype = "int32"
        dtypes[tensor["name"]] = dtype
    return dtypes


# -- models ---------------------------------------------------------------------------------------------
def _graph_model(root, model_name, manifest, graph, options, max_batch, plan):
    platform, filename = PLATFORMS.get(options.backend, (None, None))
    version_dir = os.path.join(root, model_name, VERSION)
    if options.backend == "python-bls":
        _copy_bundle(manifest, os.path.join(version_dir, "bundle"), options.precision, graphs=[graph])
        vendor_runtime(version_dir)
        _write(os.path.join(version_dir, "model.py"), MODEL_PY.format(family=manifest.family, base="GraphModel",
                                                                      mode="graph " + graph))
    elif options.backend == "tensorrt":
        os.makedirs(version_dir)
        shutil.copy2(plan.path, os.path.join(version_dir, filename))
    else:
        os.makedirs(version_dir)
        shutil.copy2(manifest.graph_path(options.precision, graph), os.path.join(version_dir, filename))
    dtypes = _served_dtypes(manifest, graph, options.backend, plan)
    spec = manifest.graph(graph)

    def entry(tensor):
        return pbtxt.tensor_entry(dict(tensor, dtype=dtypes[tensor["name"]]), batched=True)

    outputs = [entry(t) for t in spec["outputs"]]
    if manifest.family == "classifier" and manifest.labels:
        for out in outputs:
            if out["name"] == "logits":
                out["label_filename"] = LABELS_FILE
                _write_labels(os.path.join(root, model_name), manifest.labels)
    kind = {"tensorrt": "KIND_GPU", "python-bls": "KIND_CPU"}.get(options.backend, "KIND_AUTO")
    python = options.backend == "python-bls"
    config = pbtxt.model_config(model_name, [entry(t) for t in spec["inputs"]], outputs, max_batch,
                                instance_count=options.instances, kind=kind, platform=platform,
                                backend="python" if python else None, queue_delay_us=_batcher_delay(options),
                                parameters={"graph": graph, "precision": options.precision,
                                            "bundle_dir": "bundle"} if python else None)
    _write(os.path.join(root, model_name, "config.pbtxt"), pbtxt.render(config))
    return dtypes


def _batcher_delay(options):
    """The dynamic batcher's queue delay, or None (no dynamic batcher) for a variant whose rows depend on
    each other (int8-cpu: one activation scale per call), so Triton never merges two requests in one call."""
    return options.queue_delay_us if rows_independent(options.precision) else None


def _write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def _write_labels(model_dir, labels):
    _write(os.path.join(model_dir, LABELS_FILE), "".join(str(label) + "\n" for label in labels))


def _copy_bundle(manifest, dest, precision, graphs):
    """``dest``: manifest.json and the ONNX files of ``graphs`` in ``precision`` (checked first)."""
    os.makedirs(dest)
    shutil.copy2(os.path.join(manifest.bundle_dir, MANIFEST_NAME), os.path.join(dest, MANIFEST_NAME))
    for graph in graphs:
        manifest.verify_file(precision, graph)
        rel = manifest.variant(precision)["files"][graph]["path"]
        target = os.path.join(dest, rel)
        if not bundle_schema.inside(dest, target):  # the manifest's paths are checked on load; never trust them
            raise BundleError("bundle path {!r} would be written outside the repository".format(rel))
        if not os.path.isdir(os.path.dirname(target)):
            os.makedirs(os.path.dirname(target))
        shutil.copy2(manifest.graph_path(precision, graph), target)


def _python_model(root, name, manifest, options, max_batch, graph_models, dtypes):
    """The Python-backend model: config.pbtxt, model.py, bundle/ and the vendored runtime."""
    inprocess = options.backend == "python"
    model_dir = os.path.join(root, name)
    version_dir = os.path.join(model_dir, VERSION)
    os.makedirs(version_dir)
    _copy_bundle(manifest, os.path.join(version_dir, "bundle"), options.precision,
                 graphs=manifest.graph_names if inprocess else [])
    vendor_runtime(version_dir)
    parameters = {"mode": "inprocess" if inprocess else "bls", "precision": options.precision, "bundle_dir": "bundle"}
    if not inprocess:
        parameters["served_dtypes"] = json.dumps(dtypes, sort_keys=True)
    if manifest.family == "captioner":
        base = "CaptionerModel"
        height, width = manifest.preprocessing["image_size"]
        inputs = [
            {"name": "image", "data_type": "TYPE_STRING", "dims": [1], "optional": True},
            {"name": "images", "data_type": "TYPE_FP32", "dims": [3, int(height), int(width)], "optional": True},
            {"name": "beam_size", "data_type": "TYPE_INT32", "dims": [1], "optional": True},
            {"name": "max_len", "data_type": "TYPE_INT32", "dims": [1], "optional": True},
        ]
        outputs = [{"name": "caption", "data_type": "TYPE_STRING", "dims": [1]},
                   {"name": "score", "data_type": "TYPE_FP32", "dims": [1]}]
        if not inprocess:
            parameters["encoder_model"] = graph_models["encoder"]
            parameters["decoder_model"] = graph_models["decoder_step"]
    elif manifest.family == "classifier":
        base = "ClassifierModel"
        width = int(manifest.config["input_size"])
        inputs = [{"name": "sequence", "data_type": "TYPE_FP32", "dims": [-1, width]}]
        outputs = [{"name": "label", "data_type": "TYPE_STRING", "dims": [1]},
                   {"name": "index", "data_type": "TYPE_INT32", "dims": [1]},
                   {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [len(manifest.labels)],
                    "label_filename": LABELS_FILE}]
        _write_labels(model_dir, manifest.labels)
        if not inprocess:
            parameters["graph_model"] = graph_models["model"]
    else:
        raise BundleError("bundle family {!r} has no Triton model".format(manifest.family))
    config = pbtxt.model_config(name, inputs, outputs, max_batch, instance_count=options.instances, kind="KIND_CPU",
                                backend="python", queue_delay_us=_batcher_delay(options), parameters=parameters)
    _write(os.path.join(model_dir, "config.pbtxt"), pbtxt.render(config))
    _write(os.path.join(version_dir, "model.py"), MODEL_PY.format(family=manifest.family, base=base,
                                                                  mode=parameters["mode"]))


def write_repository(bundle_dir, out_dir, options=None):
    """Write the Triton model repository of ``bundle_dir`` to ``out_dir`` (atomically).

    Args:
        bundle_dir: a jetcap bundle (captioner or classifier).
        out_dir: the repository directory to create (refused when it exists and is not empty, unless
            ``options.force``).
        options: :class:`RepositoryOptions` (default: onnxruntime, the bundle's batch, 1 instance).
    Returns:
        the record written to ``OUT/jetcap-repository.json``: ``{bundle, family, backend, precision, models
        {name: {kind, ...}}, entry_model}``.
    """
    options = options or RepositoryOptions()
    manifest = bundle_dir if isinstance(bundle_dir, Manifest) else Manifest.load(bundle_dir)
    bundle_schema.require_entries(manifest, "caption" if manifest.family == "captioner" else "predict")
    manifest.variant(options.precision)
    name = options.name or manifest.family
    if not bundle_schema.NAME.match(name):
        raise UsageError("model name {!r} is not a plain name (letters, digits, '_', '.', '-')".format(name))
    for root, path, where in ((manifest.bundle_dir, out_dir, "is or is inside"), (out_dir, manifest.bundle_dir,
                                                                                "contains")):
        if bundle_schema.inside(root, path):  # writing (or --force replacing) it would destroy the bundle
            raise UsageError("the repository directory {} {} the bundle {}".format(out_dir, where, manifest.bundle_dir),
                             hint="choose an OUT_DIR outside the bundle")
    max_batch = _batch_max(manifest, options)
    plans = find_plans(manifest, options.precision, options.engine_cache) if options.backend == "tensorrt" else {}
    if options.backend != "python":
        for graph in manifest.graph_names:
            verify_graph(manifest, options.precision, graph)
    record = {"bundle": manifest.bundle_dir, "family": manifest.family, "backend": options.backend,
              "precision": options.precision, "max_batch_size": max_batch, "instances": options.instances,
              "queue_delay_us": options.queue_delay_us, "entry_model": name, "models": {}}
    try:
        with atomic_directory(out_dir, force=options.force) as tmp:
            graph_models, dtypes = {}, {}
            if options.backend != "python":
                for graph in manifest.graph_names:
                    model_name = "{}_{}".format(name, graph)
                    graph_models[graph] = model_name
                    dtypes[graph] = _graph_model(tmp, model_name, manifest, graph, options, max_batch, plans.get(graph))
                    entry = {"graph": graph, "platform": PLATFORMS.get(options.backend, ("python",))[0]}
                    if graph in plans:
                        fields = plans[graph].sidecar["fields"]
                        entry.update({"engine": os.path.basename(plans[graph].path), "tensorrt": fields["tensorrt"],
                                      "gpu": fields["gpu"], "engine_sha256": sha256_file(plans[graph].path)})
                    record["models"][model_name] = entry
            _python_model(tmp, name, manifest, options, max_batch, graph_models, dtypes)
            mode = "inprocess" if options.backend == "python" else "bls"
            record["models"][name] = {"backend": "python", "mode": mode}
            with open(os.path.join(tmp, REPOSITORY_RECORD), "w") as handle:
                json.dump(record, handle, indent=2, sort_keys=True)
    except FileExistsError:
        raise UsageError("{} exists and is not empty".format(out_dir), hint="pass --force to replace it")
    return record
