"""The benchmark run: which configurations, their inputs, one child process each, FLOPs and the limit.

:func:`run_benchmark` plans the configurations (PyTorch eager from the checkpoint, both decodes;
ONNX Runtime for every precision in the bundle; TensorRT when it imports and engines are built), runs
the machine's GEMM measurement and each configuration in fresh child processes
(:mod:`jetcap.bench.child`), counts the graphs' FLOPs (:mod:`jetcap.bench.flops`) and hands everything
to :mod:`jetcap.bench.report`.  The parent never imports torch.  Python 3.6 compatible.
"""
import collections
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from jetcap.bench import devices
from jetcap.errors import MissingDependencyError, UsageError
from jetcap.check.preflight import verify_graph
from jetcap.runtime import bundle_schema
from jetcap.runtime.manifest import Manifest
from jetcap.util.fsio import sha256_file

LABELS = {
    "pytorch-reproject": "PyTorch eager{on}, re-projecting every step",
    "pytorch": "PyTorch eager{on}, same algorithm",
    "onnxruntime": "ONNX Runtime{on} {precision}",
    "tensorrt": "TensorRT {precision}",
}
CLASSIFIER_T = (32, 64)  # besides the bundle's min/opt/max T
SAMPLE_IMAGES = 8


class BenchOptions(object):
    """What to benchmark and how.

    Args:
        bundle: the bundle directory.
        checkpoint: the PyTorch checkpoint of the bundle (None: PyTorch configurations are skipped).
        repeat: timed repetitions of every measurement (default 50; decoder steps: 4x, at least 100).
        warmup: untimed repetitions before (default 5).
        cold_runs: fresh processes per configuration and round for the cold start and peak RSS (default 3;
            the median over all of them is reported).
        rounds: passes over all configurations (default 1); each timing is the best round's median, which
            keeps a busy machine's bursts out of the comparison.
        threads: intra-op threads for ONNX Runtime, PyTorch and the BLAS (default: the CPUs this process
            may use).
        precisions: bundle variants for ONNX Runtime / TensorRT (default: all in the bundle).
        only: configuration names to run (e.g. ``["pytorch", "onnxruntime-fp32"]``; default all).
        timeout: seconds allowed per child process (default 900).
        matmul_size: side of the square GEMM measuring the peak matmul rate (default 1024).
        data: a folder of real images / sequences to feed (default: the shipped samples).
        checkpoint_options: where the checkpoint's model comes from when it is the user's code, as
            ``jetcap validate --checkpoint`` takes it (``models``, ``model_args``, ``adapter``,
            ``trust_pickle``, ``code_path``, ``word_map``; default {}: jetcap's built-in families).
        device: "cpu" (default) or "cuda": where PyTorch eager and ONNX Runtime run
            (:mod:`jetcap.bench.devices`); TensorRT runs on the GPU either way.
    """

    def __init__(self, bundle, checkpoint=None, repeat=50, warmup=5, cold_runs=3, threads=None, precisions=None,
                 only=None, timeout=900, matmul_size=1024, rounds=1, data=None, checkpoint_options=None, device="cpu"):
        if device not in devices.DEVICES:
            raise UsageError("unknown device {!r} (one of {})".format(device, ", ".join(devices.DEVICES)))
        self.device = device
        self.bundle = str(bundle)
        self.checkpoint_options = dict(checkpoint_options or {})
        self.data = str(data) if data else None
        self.checkpoint = str(checkpoint) if checkpoint else None
        self.repeat = int(repeat)
        self.warmup = int(warmup)
        self.cold_runs = int(cold_runs)
        self.threads = int(threads) if threads else usable_cpus()
        self.precisions = list(precisions) if precisions else None
        self.only = list(only) if only else None
        self.timeout = float(timeout)
        self.matmul_size = int(matmul_size)
        self.rounds = int(rounds)
        if min(self.repeat, self.threads, self.matmul_size, self.rounds) < 1 or self.warmup < 0 or self.cold_runs < 0:
            raise UsageError("repeat, rounds, threads and the matmul size must be >= 1, warmup and cold runs >= 0")


def usable_cpus():
    """CPUs this process may run on (affinity), else ``os.cpu_count()``."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _read_text(path):
    """The file's text, or "" when it cannot be read (not Linux)."""
    try:
        with open(path) as handle:
            return handle.read()
    except (IOError, OSError):
        return ""


def machine_info():
    """CPU model, CPU count, memory, platform and library versions of this machine."""
    cpu = platform.processor() or platform.machine()
    for line in _read_text("/proc/cpuinfo").splitlines():
        if line.lower().startswith(("model name", "hardware")):
            cpu = line.split(":", 1)[1].strip()
            break
    from jetcap.runtime.memory import read_memory_info

    info = read_memory_info()
    versions = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("onnxruntime", "onnx"):
        spec = importlib.util.find_spec(name)
        if spec is not None:
            versions[name] = __import__(name).__version__
    return {"cpu": cpu, "cpus": os.cpu_count(), "usable_cpus": usable_cpus(), "machine": platform.machine(),
            "memory_total_mb": (info.mem_total or 0) / 1048576.0, "versions": versions,
            "system": platform.platform()}


# -- planning ------------------------------------------------------------------------------------------
def _config(kind, precision=None, family="captioner", device="cpu", providers=None):
    """One configuration: ``name`` (what ``--only`` takes), ``kind``, ``precision``, ``label``, ``device``
    ("cpu"/"cuda"; TensorRT always "cuda") and, for ONNX Runtime, the execution ``providers``."""
    name = kind if precision is None else "{}-{}".format(kind, precision)
    on = devices.label_words(device)
    label = LABELS[kind].format(on=on, precision=(precision or "").upper())
    if family == "classifier" and kind == "pytorch":
        label = "PyTorch eager" + on
    config = {"name": name, "kind": kind, "precision": precision or "fp32", "label": label, "notes": [],
              "device": "cuda" if kind == "tensorrt" else device}
    if providers is not None:
        config["providers"] = list(providers)
    return config


def precision_notes(kind, precision, device="cpu"):
    """Honest notes on what a precision means on this machine's backend."""
    notes = []
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")
    if device == "cuda":
        if kind == "onnxruntime" and precision == "int8":
            notes.append("Q/DQ graph for TensorRT: ONNX Runtime's CUDA provider runs most of it in float; the "
                         "INT8 speed-up belongs to TensorRT")
        return notes
    if kind == "onnxruntime" and precision == "fp16":
        notes.append("FP16 on CPU is a fidelity simulation (FP16 weights, casts around the kernels), not a "
                     "speed-up; it shows what FP16 does to the results before a GPU build")
    if kind == "onnxruntime" and precision == "int8":
        notes.append("symmetric s8s8 Q/DQ, the form TensorRT reads{}".format(
            ": ONNX Runtime's fast x86 INT8 path is u8s8, so on this CPU the variant is often slower than FP32; it "
            "is here for fidelity, the speed-up belongs to TensorRT" if x86 else ""))
    if kind == "onnxruntime" and precision == "int8-cpu":
        notes.append("CPU variant: dynamic u8s8 weight quantisation of the MatMul/Gemm layers (convolutions FP32), "
                     "the form ONNX Runtime runs fast on CPUs; not for TensorRT")
    return notes


def plan(manifest, options, providers=None, torch_probe=None, ort_version=None):
    """``(configurations, skipped)``: the configurations to run, and ``[{name, reason}]`` of those skipped.

    ``providers`` and ``ort_version`` (default: the installed onnxruntime's available providers and
    version) and ``torch_probe`` (a callable returning what a child process found of ``torch.cuda``;
    default :func:`probe_torch`, called only for ``--device cuda``) say what this machine can run on the
    options' device."""
    family = manifest.family
    device = getattr(options, "device", "cpu")
    configs, skipped = [], []
    torch_kinds = ["pytorch-reproject", "pytorch"] if family == "captioner" else ["pytorch"]
    user_code = not devices.is_builtin_bundle((manifest.data.get("source") or {}).get("kind"),
                                              getattr(options, "checkpoint_options", None))
    if user_code and "pytorch-reproject" in torch_kinds:
        # the per-step re-projection is a variant of jetcap's built-in decoder; the user's code is timed as is
        torch_kinds.remove("pytorch-reproject")
        skipped.append({"name": "pytorch-reproject", "reason": "the bundle is the user's code: PyTorch is timed "
                        "as that code runs (pytorch), not as jetcap's built-in decoder would"})
    if importlib.util.find_spec("torch") is None:
        skipped += [{"name": k, "reason": "torch is not installed; PyTorch configurations skipped"}
                    for k in torch_kinds]
    elif not options.checkpoint:
        skipped += [{"name": k, "reason": "no --checkpoint given; PyTorch configurations skipped"}
                    for k in torch_kinds]
    else:
        why = None
        wanted = not options.only or any(k in options.only for k in torch_kinds)
        if device != "cpu" and wanted:  # a child looks at torch.cuda (the parent never imports torch)
            probe = {} if user_code else (torch_probe or probe_torch)(options)
            why = devices.torch_reason(device, probe, user_code)
        if why:
            skipped += [{"name": k, "reason": why} for k in torch_kinds]
        else:
            configs += [_config(k, family=family, device=device) for k in torch_kinds]
    from jetcap.runtime.backends.onnxruntime import available_providers, onnxruntime_version

    if providers is None:
        providers = available_providers()
    if ort_version is None and device != "cpu":
        ort_version = onnxruntime_version()
    chosen, why = devices.onnxruntime_providers(device, providers, ort_version)
    precisions = options.precisions or manifest.precisions
    for precision in precisions:
        manifest.variant(precision)  # BundleError naming the variants there are
        name = "onnxruntime-" + precision
        reason = why or devices.precision_reason(device, precision)
        if reason:
            skipped.append({"name": name, "reason": reason})
            continue
        config = _config("onnxruntime", precision, family, device, chosen)
        config["notes"] = precision_notes("onnxruntime", precision, device)
        configs.append(config)
    from jetcap.runtime.backends.trt_api import tensorrt_available

    if not tensorrt_available():
        skipped.append({"name": "tensorrt", "reason": "tensorrt: not installed"})
    else:
        from jetcap.errors import BundleError
        from jetcap.runtime.engine import find_engines

        for precision in precisions:
            try:
                find_engines(manifest, precision)
            except BundleError as exc:
                skipped.append({"name": "tensorrt-" + precision, "reason": exc.message})
                continue
            configs.append(_config("tensorrt", precision, family))
    if options.only:
        known = set(torch_kinds) | set("{}-{}".format(kind, p) for kind in ("onnxruntime", "tensorrt")
                                       for p in manifest.precisions)
        unknown = [n for n in options.only if n not in known]
        if unknown:
            raise UsageError("unknown configuration {} (known: {})".format(
                ", ".join(unknown), ", ".join(sorted(known))))
        configs = [c for c in configs if c["name"] in options.only]
        skipped = [s for s in skipped if s["name"] in options.only or s["name"] == "tensorrt"]
        if not configs:
            raise UsageError("none of {} can run here: {}".format(", ".join(options.only), skip_reasons(skipped)
                                                                 or "not in this bundle"))
    if not configs:
        raise UsageError("nothing to benchmark on {}: {}".format(device, skip_reasons(skipped)))
    return configs, skipped


def skip_reasons(skipped):
    """The reasons of ``skipped`` configurations in one line, each reason once with the names it covers."""
    names = collections.OrderedDict()
    for entry in skipped:
        names.setdefault(entry["reason"], []).append(entry["name"])
    return "; ".join(reason if reason.startswith(", ".join(covered) + ":") else "{}: {}".format(
        ", ".join(covered), reason) for reason, covered in names.items())


def probe_torch(options):
    """What a child process finds of ``torch.cuda`` (:func:`jetcap.bench.child.probe`): ``{"cuda": bool,
    "why": str, "gpu": name, ...}``; the parent never imports torch itself."""
    workdir = tempfile.mkdtemp(prefix="jetcap-bench-probe-")
    try:
        return run_child({"mode": "probe"}, workdir, options.timeout, child_env(options.threads))[0]
    except ChildFailed as exc:
        return {"cuda": False, "why": "importing torch failed ({})".format(exc)}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# -- inputs ---------------------------------------------------------------------------------------------
def classifier_lengths(manifest):
    """The sequence lengths T benchmarked: the bundle's min, opt and max and 32, 64 when in range."""
    axis = manifest.axes["T"]
    low, high = int(axis["min"]), int(axis["max"])
    lengths = set([low, int(axis["opt"]), high] + [t for t in CLASSIFIER_T if low <= t <= high])
    return sorted(lengths)


def _sample_sequence_pool(width, data=None):
    from jetcap import samples

    pool = []
    if data:
        from jetcap.runtime.sequences import SEQUENCE_SUFFIXES
        from jetcap.util.fsio import list_inputs

        paths = list_inputs(data, SEQUENCE_SUFFIXES, SAMPLE_IMAGES)
    else:
        paths = samples.sample_sequences()
    from jetcap.runtime.sequences import load_sequence

    for path in paths:
        if data:  # the user's files: .npy or JSON, checked like predict's (pickles never loaded)
            pool.append(np.asarray(load_sequence(path, width=width), dtype=np.float32))
            continue
        array = np.load(str(path), allow_pickle=False)
        if array.ndim == 2 and array.shape[1] == width:
            pool.append(array.astype(np.float32))
    return np.concatenate(pool) if pool else None


def prepare_inputs(manifest, workdir, data=None):
    """Write/choose the inputs of every configuration under ``workdir``.

    Captioner: the images of ``data`` (``--data DIR``), else the shipped sample images (random PNGs when
    absent).  Classifier: one ``(T, F)`` sequence per benchmarked T, cut from the sequences of ``data``
    or the shipped sample sequences when their width fits (seeded noise otherwise).
    """
    if manifest.family == "captioner":
        from jetcap import samples
        from jetcap.runtime.preprocess import IMAGE_SUFFIXES
        from jetcap.util.fsio import list_inputs

        if data:
            from jetcap.runtime.inference import read_images

            paths = list_inputs(data, IMAGE_SUFFIXES, SAMPLE_IMAGES)
            read_images(paths, manifest.preprocessing)  # a bad image: exit 2 now, not a failed run later
            return {"images": paths}
        images = [str(p) for p in samples.sample_images()]
        if not images:
            from PIL import Image

            rng = np.random.RandomState(0)
            for i in range(SAMPLE_IMAGES):
                path = os.path.join(workdir, "image_{:02d}.png".format(i))
                Image.fromarray(rng.randint(0, 256, size=(96, 96, 3)).astype(np.uint8), "RGB").save(path)
                images.append(path)
        return {"images": images}
    width = int(manifest.config["input_size"])
    pool = _sample_sequence_pool(width, data)
    rng = np.random.RandomState(0)
    sequences = {}
    for length in classifier_lengths(manifest):
        if pool is not None:
            reps = -(-length // len(pool))
            sequence = np.concatenate([pool] * reps)[:length]
        else:
            sequence = rng.standard_normal((length, width)).astype(np.float32)
        path = os.path.join(workdir, "sequence_T{}.npy".format(length))
        np.save(path, np.ascontiguousarray(sequence, dtype=np.float32))
        sequences[str(length)] = path
    opt = int(manifest.axes["T"]["opt"])
    return {"sequences": sequences, "opt_T": opt, "cold_sequence": sequences[str(opt)]}


# -- FLOPs ------------------------------------------------------------------------------------------------
def _sizes(manifest, **fixed):
    sizes = dict((axis, int(rng["opt"])) for axis, rng in manifest.axes.items())
    sizes.update(fixed)
    return sizes


def count_graph_flops(manifest, log):
    """``{key: GraphFlops JSON}`` of the FP32 graphs at the benchmarked shapes (empty without onnx).

    Keys: ``"encoder@1"``, ``"decoder_step@8"``, ``"model@1,T=74"``, ...
    """
    try:
        from jetcap.bench.flops import count_flops, graph_input_shapes

        __import__("onnx")
    except ImportError as exc:
        log("FLOPs not counted: {}".format(exc))
        return {}
    max_batch = int(manifest.axes["batch"]["max"])
    counts = {}
    if manifest.family == "captioner":
        for graph in manifest.graph_names:
            for batch in sorted(set([1, max_batch])):
                shapes = graph_input_shapes(manifest.graph(graph), _sizes(manifest, batch=batch))
                counts["{}@{}".format(graph, batch)] = count_flops(manifest.graph_path("fp32", graph), shapes).to_json()
    else:
        path = manifest.graph_path("fp32", "model")
        for length in classifier_lengths(manifest):
            shapes = graph_input_shapes(manifest.graph("model"), _sizes(manifest, batch=1, T=length))
            counts["model@1,T={}".format(length)] = count_flops(path, shapes).to_json()
        opt = int(manifest.axes["T"]["opt"])
        shapes = graph_input_shapes(manifest.graph("model"), _sizes(manifest, batch=max_batch, T=opt))
        counts["model@{},T={}".format(max_batch, opt)] = count_flops(path, shapes).to_json()
    return counts


EQUAL_WORK_K = 1024


def limit_shapes(manifest, flops):
    """GEMM shapes ``(m, k, n)`` to measure besides the peak, for the decoder step (captioner) or the
    model at the typical T (classifier) at batch 1: one MatMul with the graph's rows (the largest
    matmul's M: 1 for a decoder step) and as many multiply-accumulates as the whole graph, so it reads
    as many weights.  Its rate is what a single well-shaped call of that size reaches here; a batch-1
    decoder step is matrix-vector work, bound by memory bandwidth rather than the peak GEMM rate."""
    key = "decoder_step@1" if manifest.family == "captioner" else "model@1,T={}".format(manifest.axes["T"]["opt"])
    count = flops.get(key) or {}
    largest = count.get("largest_gemm")
    if not largest or not count.get("macs"):
        return []
    rows = max(1, int(largest["gemm"][0]))
    columns = max(1, int(round(count["macs"] / float(rows * EQUAL_WORK_K))))
    return [[rows, EQUAL_WORK_K, columns]]


# -- children ---------------------------------------------------------------------------------------------
def child_env(threads):
    """The child's environment: BLAS/OpenMP threads fixed and this jetcap importable."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


class ChildFailed(Exception):
    """A benchmark child process failed (crash, error or timeout); the message says how."""


def run_child(spec, workdir, timeout, env):
    """Run one child with ``spec``; ``(result, parent_started_at, wall_s)``; ChildFailed on failure."""
    handle, spec_path = tempfile.mkstemp(prefix="spec-", suffix=".json", dir=workdir)
    with os.fdopen(handle, "w") as stream:
        json.dump(spec, stream)
    out_path = spec_path[:-len(".json")] + ".out.json"
    started_at = time.time()
    try:
        proc = subprocess.run([sys.executable, "-m", "jetcap.bench.child", spec_path, out_path], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ChildFailed("did not finish within {:.0f} s".format(timeout))
    wall = time.time() - started_at
    if proc.returncode != 0 or not os.path.isfile(out_path):
        lines = [l for l in proc.stderr.decode("utf-8", "replace").splitlines() if l.strip()]
        if proc.returncode < 0:
            how = "killed by signal {}".format(-proc.returncode)
        else:
            how = "exit {}".format(proc.returncode)
        raise ChildFailed("{}: {}".format(how, lines[-1] if lines else "no error output"))
    with open(out_path) as stream:
        return json.load(stream), started_at, wall


def cold_start(spec, workdir, timeout, env):
    """One fresh process: its phases (seconds, from the parent's clock before it started) and peak RSS."""
    result, started_at, wall = run_child(dict(spec, mode="cold"), workdir, timeout, env)
    return {
        "cold_start_s": result["first_result_at"] - started_at,
        "interpreter_s": result["started_at"] - started_at,
        "imports_s": result["imports_done_at"] - result["started_at"],
        "load_s": result["loaded_at"] - result["imports_done_at"],
        "first_result_s": result["first_result_at"] - result["loaded_at"],
        "peak_rss_mb": result["peak_rss_mb"], "process_wall_s": wall, "result": result["result"],
    }


def combine_cold(samples):
    """The median run's phases, the median peak RSS and every run's cold start."""
    ordered = sorted(samples, key=lambda s: s["cold_start_s"])
    median = dict(ordered[len(ordered) // 2])
    median["runs"] = [s["cold_start_s"] for s in samples]
    median["peak_rss_mb"] = sorted(s["peak_rss_mb"] for s in samples)[len(samples) // 2]
    return median


def best_of_rounds(results):
    """Merge the measurement results of several rounds: every timing summary (a dict with ``p50_ms``)
    is taken from the round where its median was lowest, the rest from the first round; ``rounds``
    lists each round's figures' p50s so the spread stays visible."""
    first = results[0]
    if isinstance(first, dict) and "p50_ms" in first:
        best = dict(min(results, key=lambda r: r["p50_ms"]))
        best["round_p50_ms"] = [r["p50_ms"] for r in results]
        return best
    if isinstance(first, dict):
        return dict((key, best_of_rounds([r[key] for r in results]) if all(key in r for r in results) else value)
                    for key, value in first.items())
    return first


def best_limit(limits):
    """The matmul rates of several rounds, each rate the best round's (a busy machine only lowers them)."""
    best = dict(limits[0])
    if not all(l.get("peak_gflops") for l in limits):  # not measured (a GPU without torch.cuda): said once
        return best
    for key in ("numpy_peak", "onnxruntime_peak", "torch_peak"):
        rates = [l[key] for l in limits if "gflops" in l.get(key, {})]
        if rates:
            best[key] = max(rates, key=lambda r: r["gflops"])
    best["peak_gflops"] = max(l["peak_gflops"] for l in limits)
    best["shapes"] = [max(same, key=lambda r: r["gflops"]) for same in zip(*[l["shapes"] for l in limits])]
    best["rounds"] = len(limits)
    return best


def run_benchmark(options, log=lambda message: None):
    """Run every configuration of ``options`` and return the report (see :mod:`jetcap.bench.report`).

    Raises:
        BundleError: not a bundle / a requested precision missing.
        UsageError: bad options, unknown configuration names, a checkpoint of another model.
    """
    from jetcap.bench import report as report_module

    manifest = Manifest.load(options.bundle)
    if manifest.family not in ("captioner", "classifier"):
        raise UsageError("jetcap bench knows captioner and classifier bundles, not {!r}".format(manifest.family))
    bundle_schema.require_entries(manifest, "bench")
    if importlib.util.find_spec("onnxruntime") is None:
        raise MissingDependencyError("onnxruntime is required for jetcap bench", hint="pip install onnxruntime")
    if options.checkpoint and not os.path.isfile(options.checkpoint):
        raise UsageError("checkpoint not found: {}".format(options.checkpoint))
    configs, skipped = plan(manifest, options)
    notes = []
    if options.checkpoint:
        source = manifest.data.get("source", {})
        if source.get("sha256") and sha256_file(options.checkpoint) != source["sha256"]:
            notes.append("the checkpoint is not the file the bundle was exported from (sha256 differs)")
    env = child_env(options.threads)
    workdir = tempfile.mkdtemp(prefix="jetcap-bench-")
    try:
        inputs = prepare_inputs(manifest, workdir, options.data)
        for graph in manifest.graph_names:  # a damaged or replaced graph: one line, before anything reads it
            verify_graph(manifest, "fp32", graph)
        log("counting FLOPs")
        try:
            flops = count_graph_flops(manifest, log)
        except Exception as exc:  # noqa: BLE001 -- the counter's limits (an op it does not know): said, not fatal
            log("FLOPs not counted: {}: {}".format(type(exc).__name__, exc))
            flops = {}
        matmul_spec = {"mode": "matmul", "threads": options.threads, "shapes": limit_shapes(manifest, flops),
                       "peak_size": options.matmul_size, "device": options.device}
        limits = []
        entries = [dict(config, measures=[], colds=[], seconds=0.0) for config in configs]
        for round_index in range(options.rounds):
            log("round {}/{}: measuring {} matmul rate{}".format(
                round_index + 1, options.rounds, "the GPU's" if options.device == "cuda" else "the machine's",
                "" if options.device == "cuda" else " ({} threads)".format(options.threads)))
            limits.append(run_child(matmul_spec, workdir, options.timeout, env)[0])
            for entry in entries:
                if "error" in entry:
                    continue
                spec = {"config": dict((k, entry[k]) for k in ("name", "kind", "precision", "label", "device",
                                                               "providers") if k in entry),
                        "bundle": manifest.bundle_dir, "checkpoint": options.checkpoint, "family": manifest.family,
                        "checkpoint_options": options.checkpoint_options, "threads": options.threads, "repeat": options.repeat, "warmup": options.warmup,
                        "inputs": inputs}
                started = time.time()
                log("{}: round {}/{}: measuring ({} repetitions after {} warm-up), {} cold start(s)".format(
                    entry["name"], round_index + 1, options.rounds, options.repeat, options.warmup, options.cold_runs))
                try:
                    entry["measures"].append(run_child(dict(spec, mode="measure"), workdir, options.timeout, env)[0])
                    for _ in range(options.cold_runs):
                        entry["colds"].append(cold_start(spec, workdir, options.timeout, env))
                except ChildFailed as exc:
                    entry["error"] = str(exc)
                    log("{}: FAILED: {}".format(entry["name"], exc))
                entry["seconds"] += time.time() - started
        limit = best_limit(limits)
        results = []
        for entry in entries:
            measures, colds = entry.pop("measures"), entry.pop("colds")
            if "error" not in entry:
                entry["measure"] = best_of_rounds(measures)
                if colds:
                    entry["cold"] = combine_cold(colds)
            results.append(entry)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    run = {
        "bundle": manifest.bundle_dir, "family": manifest.family, "checkpoint": options.checkpoint,
        "threads": options.threads, "repeat": options.repeat, "warmup": options.warmup,
        "cold_runs": options.cold_runs, "rounds": options.rounds, "max_batch": int(manifest.axes["batch"]["max"]),
        "device": options.device,
        "float32_math": devices.float32_math(options.device, next(
            (c.get("providers") for c in configs if c["kind"] == "onnxruntime"), None)),
        "machine": machine_info(), "limit": limit, "flops": flops, "configurations": results,
        "skipped": skipped, "notes": notes,
    }
    if manifest.family == "classifier":
        run["lengths"] = classifier_lengths(manifest)
        run["opt_T"] = int(manifest.axes["T"]["opt"])
    return report_module.finish(run)
