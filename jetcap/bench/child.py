"""The child process of one benchmark configuration: ``python -m jetcap.bench.child SPEC.json OUT.json``.

Each configuration runs in a fresh interpreter so that its peak resident memory (``VmHWM`` of
``/proc/self/status``) and its cold start are its own.  Modes (``spec["mode"]``):

* ``cold``: import what the configuration needs, load the model, read one input from disk, produce
  one result, and record wall-clock stamps (the parent measures from before it started the process);
* ``measure``: warm-up and repeated timings of every stage, at batch 1 and the bundle's largest batch;
* ``matmul``: the machine's GEMM rates (:mod:`jetcap.bench.matmul`), on the GPU for ``--device cuda``;
* ``probe``: what torch finds of a CUDA GPU (the parent never imports torch).

Only the standard library is imported at module level, so a cold start counts every import the
configuration itself needs.  Python 3.6 compatible.
"""
import json
import os
import sys
import time

STARTED_AT = time.time()


def read_status(path="/proc/self/status"):
    """``{VmHWM, VmRSS, ...}`` in KiB from ``/proc/self/status`` (empty where there is none)."""
    out = {}
    try:
        with open(path) as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if name.startswith("Vm") and len(parts) == 2 and parts[1] == "kB":
                    out[name] = int(parts[0])
    except (IOError, OSError):
        return {}
    return out


def _memory():
    status = read_status()
    out = {"peak_rss_mb": status.get("VmHWM", 0) / 1024.0, "rss_mb": status.get("VmRSS", 0) / 1024.0}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():  # PyTorch on a GPU: its allocator's peak there
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 1048576.0
    return out


def _open(spec):
    from jetcap.bench.subjects import open_subject

    return open_subject(spec["config"], spec["bundle"], spec.get("checkpoint"), spec.get("threads"),
                        spec.get("checkpoint_options"))


def _tile(items, count):
    return [items[i % len(items)] for i in range(count)]


# -- cold start ---------------------------------------------------------------------------------------
def cold(spec):
    """Import, load, read one input, run once; stamps (``time.time()``) of each phase and peak RSS."""
    stamps = {"started_at": STARTED_AT}
    kind = spec["config"]["kind"]
    # the framework's import is part of what the process pays; stamped separately from loading
    __import__({"onnxruntime": "onnxruntime", "tensorrt": "tensorrt"}.get(kind, "torch"))
    stamps["imports_done_at"] = time.time()
    subject = _open(spec)
    stamps["loaded_at"] = time.time()
    if spec["family"] == "captioner":
        from jetcap.runtime.preprocess import load_images
        from jetcap.runtime.manifest import Manifest

        images = load_images(spec["inputs"]["images"][:1], Manifest.load(spec["bundle"]).preprocessing)
        result = {"tokens": subject.caption(images)[0]}
    else:
        import numpy as np

        sequence = np.load(spec["inputs"]["cold_sequence"])
        result = {"index": int(np.argmax(subject.logits(sequence[None])[0]))}
    stamps["first_result_at"] = time.time()
    out = dict(stamps, result=result)
    out.update(_memory())
    return out


# -- measurements -------------------------------------------------------------------------------------
def _step_times(subject, images, steps, warmup):
    """Durations of decoder steps at ``len(images)``, feeding each step's argmax back like greedy search.
    A new session (untimed) starts whenever a caption would have reached its maximum length."""
    import numpy as np

    from jetcap.bench.timing import time_calls

    state = {}

    def reset():
        state["session"] = subject.decoder_session(subject.encode(images))
        state["words"] = np.full(len(images), subject.start_id, dtype=np.int64)
        state["count"] = 0

    def before(i):
        if "session" not in state or state["count"] >= subject.max_len:
            reset()

    def call(i):
        log_probs, _ = state["session"].step(state["words"])
        state["words"] = np.asarray(log_probs).argmax(axis=1).astype(np.int64)
        state["count"] += 1

    return time_calls(call, steps, warmup, before=before)


def measure_captioner(subject, spec, images, max_batch):
    """Encoder, decoder-step and per-caption timings at batch 1 and ``max_batch``."""
    from jetcap.bench.timing import summarize, time_calls

    import numpy as np

    repeat, warmup = int(spec["repeat"]), int(spec["warmup"])
    singles = [images[i:i + 1] for i in range(len(images))]
    full = np.ascontiguousarray(np.stack(_tile(list(images), max_batch)))
    out = {"batches": [1, max_batch], "encoder": {}, "decoder_step": {}, "caption": {}}
    step_repeat = max(4 * repeat, 100)
    for batch, pick in ((1, lambda i: singles[i % len(singles)]), (max_batch, lambda i: full)):
        key = str(batch)
        out["encoder"][key] = summarize(time_calls(lambda i: subject.encode(pick(i)), repeat, warmup))
        out["decoder_step"][key] = summarize(_step_times(subject, pick(0), step_repeat, warmup))
        stats = summarize(time_calls(lambda i: subject.caption(pick(i)), repeat, warmup))
        stats["captions_per_s"] = batch * stats["n"] / stats["total_s"]
        stats["ms_per_caption"] = stats["p50_ms"] / batch
        out["caption"][key] = stats
    out["captions"] = subject.caption(images)
    out["mean_words"] = float(sum(len(t) for t in out["captions"])) / len(out["captions"])
    return out


def measure_classifier(subject, spec, sequences, max_batch):
    """Latency at batch 1 for every T of ``sequences`` and at ``max_batch`` for the typical T."""
    from jetcap.bench.timing import summarize, time_calls

    import numpy as np

    repeat, warmup = int(spec["repeat"]), int(spec["warmup"])
    out = {"batch1": {}, "labels": {}}
    for length in sorted(sequences, key=int):
        batch = sequences[length][None]
        out["batch1"][length] = summarize(time_calls(lambda i: subject.logits(batch), repeat, warmup))
        out["labels"][length] = int(np.argmax(subject.logits(batch)[0]))
    opt = str(spec["inputs"]["opt_T"])
    full = np.ascontiguousarray(np.stack([sequences[opt]] * max_batch))
    stats = summarize(time_calls(lambda i: subject.logits(full), repeat, warmup))
    stats["sequences_per_s"] = max_batch * stats["n"] / stats["total_s"]
    out["max_batch"] = {"batch": max_batch, "T": int(opt), "stats": stats}
    return out


def measure(spec):
    """Load the configuration (timed), then run every measurement; peak RSS at the end."""
    import numpy as np

    from jetcap.runtime.manifest import Manifest

    manifest = Manifest.load(spec["bundle"])
    max_batch = int(manifest.axes["batch"]["max"])
    start = time.perf_counter()
    subject = _open(spec)
    out = {"load_s": time.perf_counter() - start, "after_load": _memory(), "max_batch": max_batch,
           "ran_on": subject.ran_on()}
    if spec["family"] == "captioner":
        from jetcap.runtime.preprocess import load_images

        images = load_images(spec["inputs"]["images"], manifest.preprocessing)
        out.update(measure_captioner(subject, spec, images, max_batch))
    else:
        sequences = dict((length, np.load(path)) for length, path in spec["inputs"]["sequences"].items())
        out.update(measure_classifier(subject, spec, sequences, max_batch))
    out.update(_memory())
    out["versions"] = dict((name, str(getattr(sys.modules[name], "__version__", "?")))
                           for name in ("torch", "torchvision", "onnxruntime", "tensorrt") if name in sys.modules)
    subject.close()
    return out


def matmul(spec):
    """The GEMM rates for the shapes the parent asks for."""
    from jetcap.bench.matmul import measure_matmul

    return measure_matmul(threads=spec.get("threads"), shapes=[tuple(s) for s in spec.get("shapes", [])],
                          peak_size=int(spec.get("peak_size", 1024)), repeat=int(spec.get("peak_repeat", 10)),
                          device=spec.get("device", "cpu"))


def probe(spec):
    """``{"cuda": bool, "why": str, "gpu": name, "torch": version, "cuda_version": str}`` of this machine."""
    try:
        import torch
    except ImportError as exc:
        return {"cuda": False, "why": "torch does not import: {}".format(exc)}
    out = {"torch": torch.__version__, "cuda_version": torch.version.cuda, "cuda": False}
    if torch.version.cuda is None:
        out["why"] = "torch {} is a CPU-only build".format(torch.__version__)
    elif not torch.cuda.is_available():
        out["why"] = "torch {} (CUDA {}) sees no GPU".format(torch.__version__, torch.version.cuda)
    else:
        out.update(cuda=True, gpu=torch.cuda.get_device_name(0))
    return out


MODES = {"cold": cold, "measure": measure, "matmul": matmul, "probe": probe}


def main(argv=None):
    """Entry point: read the spec, run its mode, write the result JSON (errors go to stderr, exit 1)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        sys.stderr.write("usage: python -m jetcap.bench.child SPEC.json OUT.json\n")
        return 2
    with open(argv[0]) as handle:
        spec = json.load(handle)
    result = MODES[spec["mode"]](spec)
    tmp = argv[1] + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(result, handle)
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
