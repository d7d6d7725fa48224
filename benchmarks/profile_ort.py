"""Where jetcap's ONNX Runtime captioning time goes on a CPU (the analysis behind docs/BENCHMARKS.md).

    python benchmarks/profile_ort.py BUNDLE [--precision fp32] [--threads N] [--steps 3000] [--captions 100]
        [--data IMAGES]

1. One decoder step at batch 1 (median microseconds): jetcap's decoder session (I/O binding, what
   ``CaptionPipeline`` uses), a plain ``session.run`` with numpy feeds, one MatMul with as many
   multiply-adds as the step (1 x 1024 x N; with N threads and with 1), an empty one-node graph (the
   fixed cost of a ``run`` call), and ONNX Runtime's own per-node kernel times (its profiler adds
   overhead: compare those with each other, not with the totals).
2. Whole captions at batch 1 and at the bundle's largest batch (median ms) with the sessions as
   jetcap makes them for one caller, then with each other way a pool can spin: never, between runs too,
   and only while a run lasts (``session.force_spinning_stop``, ONNX Runtime 1.12+).  The encoder and
   the decoder step each own an intra-op thread pool; a pool spinning between runs competes with the
   other's on a small CPU, a pool that never spins pays a wake-up on each of its layers.
3. What an encoder call costs the decoder steps after it (median us, batch 1 and the bundle's largest):
   steps back to back; the steps that follow one batch-1 encoder call, by position (#1 .. #8); a step
   after each encoder call ("alternating", as in a decode loop fed a new image every step); a step after
   both cores idled as long as an encoder call ("after idle": the control, nothing touches memory); and
   a step after a sweep through N MB of memory instead (read and written), beside the encoder's own
   footprint (its weights and, at most, its intermediate tensors at batch 1).  Then the machine alone:
   a numpy matvec over as many bytes as the step graph's initializers, after sleeping 0 to 30 ms.  A
   step whose weights are still in the last-level cache is faster than one that reads them from DRAM;
   whatever runs between two steps (an encoder call, the server's other work, nothing at all on a VM
   whose host others share) gives them time to leave it.
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np


def _median(call, count, warmup):
    for i in range(warmup):
        call(i)
    times = []
    for i in range(count):
        start = time.perf_counter()
        call(i)
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2]


def _session(model, threads, spinning=True, profile_dir=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "step")
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["NchwcTransformer"])


def decoder_step(manifest, precision, threads, steps):
    """Part 1: the batch-1 decoder step, its equal-work matmul and ONNX Runtime's per-node times."""
    import onnx
    from onnx import TensorProto, helper

    from jetcap.bench.flops import count_flops
    from jetcap.bench.matmul import matmul_model
    from jetcap.runtime.backends.onnxruntime import OnnxRuntimeRunner, spinning_policy
    from jetcap.runtime.decoder_protocol import DecoderProtocol
    from jetcap.runtime.pipeline import HostDecoderSession, OrtBoundDecoderSession

    path = manifest.graph_path(precision, "decoder_step")
    spec = manifest.graph("decoder_step")
    rng = np.random.RandomState(0)
    feed = _step_feed(manifest, 1, rng)
    count = count_flops(manifest.graph_path("fp32", "decoder_step"), dict((k, v.shape) for k, v in feed.items()))
    protocol = DecoderProtocol.from_manifest(manifest)
    initial = dict((name, value) for name, value in feed.items() if name != protocol.word_input)
    words = feed[protocol.word_input]
    rows = collections.OrderedDict()
    # jetcap's pool for one caller (spinning during runs where ONNX Runtime can), then one spinning between
    # runs too, as the matmul and empty-graph rows below: steps run back to back here, with no encoder between
    policy = spinning_policy(manifest.graph_names, "decoder_step")
    for spinning, label in ((policy, "jetcap's pool: {}".format(policy)), (True, "pool spinning between runs")):
        runner = OnnxRuntimeRunner(path, spec, threads=threads, spinning=spinning)
        runner.activate()
        host = HostDecoderSession(runner, initial, protocol)
        rows["host-array decoder session ({})".format(label)] = _median(lambda i: host.step_topk(words), steps, 200)
    bound = OrtBoundDecoderSession(runner, initial, protocol)
    rows["I/O-binding decoder session (a GPU's; spinning)"] = _median(lambda i: bound.step_topk(words), steps, 200)
    rows["session.run, numpy feeds, all outputs"] = _median(lambda i: runner.session.run(None, feed), steps, 200)
    columns = max(1, int(round(count.macs / 1024.0)))
    x = rng.standard_normal((1, 1024)).astype(np.float32)
    for pool in sorted(set([threads, 1]), reverse=True):
        matmul = _session(matmul_model(1024, columns).SerializeToString(), pool)
        rows["one MatMul 1x1024x{} ({} thread{})".format(columns, pool, "s" if pool > 1 else "")] = _median(
            lambda i: matmul.run(None, {"x": x}), steps, 200)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    empty = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    empty.ir_version = 7
    empty_session = _session(empty.SerializeToString(), threads)
    one = np.ones(1, dtype=np.float32)
    rows["empty one-node graph (fixed cost of a run call)"] = _median(
        lambda i: empty_session.run(None, {"x": one}), steps, 200)
    print("1. decoder step, batch 1, {} ({} threads): {:.2f} MFLOP, {:.2f} M multiply-adds, {} nodes".format(
        precision, threads, count.flops / 1e6, count.macs / 1e6, len(onnx.load(path).graph.node)))
    for label, seconds in rows.items():
        print("  {:<52} {:8.1f} us".format(label, seconds * 1e6))

    with tempfile.TemporaryDirectory() as tmp:
        profiled = _session(path, threads, profile_dir=tmp)
        for _ in range(steps):
            profiled.run(None, feed)
        with open(profiled.end_profiling()) as handle:
            events = json.load(handle)
    kernels = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernels[(event["args"].get("op_name"), event["name"][:-len("_kernel_time")])].append(event["dur"])
    medians = sorted(((sorted(v)[len(v) // 2], k) for k, v in kernels.items()), reverse=True)
    print("  ONNX Runtime profiler: per-node kernel medians sum to {} us over {} nodes; the largest:".format(
        sum(m for m, _ in medians), len(medians)))
    for value, (op, name) in medians[:6]:
        print("    {:>5} us  {:<10} {}".format(value, op, name))


def captions(manifest, precision, threads, count, data=None):
    """Part 2: whole captions with the sessions as jetcap makes them and with each spinning mode."""
    from jetcap import samples
    from jetcap.runtime.backends.onnxruntime import SPIN_DURING_RUNS, bundle_runners, spins_during_runs
    from jetcap.runtime.pipeline import CaptionPipeline
    from jetcap.runtime.preprocess import IMAGE_SUFFIXES, load_images
    from jetcap.util.fsio import list_inputs

    paths = list_inputs(data, IMAGE_SUFFIXES, 8) if data else samples.sample_images()
    images = load_images(paths, manifest.preprocessing)
    max_batch = int(manifest.axes["batch"]["max"])
    full = np.stack([images[i % len(images)] for i in range(max_batch)])
    print("2. captions, {} ({} threads), median ms (batch 1 cycles through {} images):".format(
        precision, threads, len(images)))
    print("  {:<58} {:>9} {:>11}".format("thread pools", "batch 1", "batch {}".format(max_batch)))
    modes = [(None, "jetcap's for one caller"), (False, "never spinning"), (True, "spinning between runs too")]
    if spins_during_runs():
        modes.append((SPIN_DURING_RUNS, "spinning during runs only"))
    for spinning, label in modes:
        runners = bundle_runners(manifest, precision, threads=threads, spinning=spinning)
        for runner in runners.values():
            runner.activate()
        pipeline = CaptionPipeline(manifest, runners, precision)
        one = _median(lambda i: pipeline.caption(images[i % len(images):i % len(images) + 1]), count, 10)
        many = _median(lambda i: pipeline.caption(full), max(10, count // 4), 3)
        spins = ", ".join("{} {}".format(g, r.spinning) for g, r in runners.items())
        for runner in runners.values():
            runner.deactivate()  # its pool's threads go before the next mode is measured
        print("  {:<58} {:9.2f} {:11.2f}".format("{} ({})".format(label, spins), one * 1e3, many * 1e3))


def _step_feed(manifest, batch, rng):
    """A decoder-step feed of ``batch`` rows at the bundle's opt sizes: word ids 1, the rest random."""
    from jetcap.bench.flops import graph_input_shapes

    spec = manifest.graph("decoder_step")
    sizes = dict((axis, int(r["opt"])) for axis, r in manifest.axes.items())
    sizes["batch"] = batch
    shapes = graph_input_shapes(spec, sizes)
    return dict((t["name"], np.ones(shapes[t["name"]], dtype=np.int64) if t["dtype"] == "int64"
                 else rng.standard_normal(shapes[t["name"]]).astype(np.float32)) for t in spec["inputs"])


def _encoder_footprint(path, shapes):
    """(weights MB, sum of the intermediate tensors' MB) of an ONNX graph fed inputs of ``shapes`` (``{input:
    shape}``): at most what one call touches (ONNX Runtime fuses nodes and reuses buffers)."""
    import onnx
    from onnx import helper

    from jetcap.bench.flops import _fix_inputs, _infer
    from jetcap.export.int8_cpu import _initializer_bytes

    model = onnx.load(path)
    weights = _initializer_bytes(model)
    _fix_inputs(model, shapes)
    model, _ = _infer(model, "onnx")
    total = 0
    for value in model.graph.value_info:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        if dims and all(dims):
            total += int(np.prod(dims)) * helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).itemsize
    return weights / 1e6, total / 1e6


def _median_after(call, rounds, before):
    """Median seconds of ``call()`` timed ``rounds`` times, each right after an untimed ``before()``."""
    from jetcap.bench.timing import percentile, time_calls

    return percentile(time_calls(lambda i: call(), rounds, before=lambda i: before()), 50)


def interference(manifest, precision, threads, rounds, data=None):
    """Part 3: decoder steps right after an encoder call, by position, and after memory sweeps."""
    import onnx

    from jetcap import samples
    from jetcap.bench.timing import percentile
    from jetcap.export.int8_cpu import _initializer_bytes
    from jetcap.runtime.backends.onnxruntime import bundle_runners
    from jetcap.runtime.decoder_protocol import DecoderProtocol
    from jetcap.runtime.preprocess import IMAGE_SUFFIXES, load_images
    from jetcap.util.fsio import list_inputs

    paths = list_inputs(data, IMAGE_SUFFIXES, 1) if data else samples.sample_images()[:1]
    image = load_images(paths, manifest.preprocessing)[:1]
    runners = bundle_runners(manifest, precision, threads=threads)
    for runner in runners.values():
        runner.activate()
    encoder, step = runners["encoder"].session, runners["decoder_step"].session
    encoder_feed = {encoder.get_inputs()[0].name: image}
    protocol = DecoderProtocol.from_manifest(manifest)
    fetch = list(protocol.state_outputs) + list(protocol.fetch_topk or protocol.fetch)
    weights, intermediates = _encoder_footprint(manifest.graph_path(precision, "encoder"),
                                                dict((name, value.shape) for name, value in encoder_feed.items()))
    encoder_seconds = _median(lambda i: encoder.run(None, encoder_feed), rounds, 5)
    print("3. decoder steps after an encoder call, {} ({} threads), median us; a batch-1 encoder call ({:.1f} ms) "
          "reads {:.1f} MB of weights and writes at most {:.1f} MB of intermediate tensors".format(
              precision, threads, encoder_seconds * 1e3, weights, intermediates))
    positions = 8
    sweeps = (16, 32, 64, 128)
    print("  {:>5} {:>12} {}  {:>11}  {:>10}  {}".format(
        "batch", "back to back", " ".join("{:>6}".format("#{}".format(i + 1)) for i in range(positions)),
        "alternating", "after idle", " ".join("{:>8}".format("{} MB".format(mb)) for mb in sweeps)))
    rng = np.random.RandomState(0)
    for batch in sorted(set([1, int(manifest.axes["batch"]["max"])])):
        feed = _step_feed(manifest, batch, rng)

        def run_step():
            step.run(fetch, feed)

        alone = _median(lambda i: run_step(), rounds * positions, 50)
        after = [[] for _ in range(positions)]
        for _ in range(rounds):
            encoder.run(None, encoder_feed)
            for position in range(positions):
                began = time.perf_counter()
                run_step()
                after[position].append(time.perf_counter() - began)
        alternating = _median_after(run_step, rounds, lambda: encoder.run(None, encoder_feed))
        # the control: both cores idle for as long as an encoder call, no memory touched
        idle = _median_after(run_step, rounds, lambda: time.sleep(encoder_seconds))
        swept = []
        for mb in sweeps:
            buffer = np.ones(mb << 18, dtype=np.float32)  # every line read and written, as activations are
            swept.append(_median_after(run_step, rounds, lambda: np.add(buffer, 1, out=buffer)))
            del buffer
        print("  {:>5} {:>12.0f} {}  {:>11.0f}  {:>10.0f}  {}".format(
            batch, alone * 1e6, " ".join("{:>6.0f}".format(percentile(t, 50) * 1e6) for t in after),
            alternating * 1e6, idle * 1e6, " ".join("{:>8.0f}".format(t * 1e6) for t in swept)))
    for runner in runners.values():
        runner.deactivate()
    _cache_decay(_initializer_bytes(onnx.load(manifest.graph_path(precision, "decoder_step"))), rounds)


def _cache_decay(size, rounds, gaps=(0.0, 0.001, 0.004, 0.01, 0.03)):
    """The machine, without ONNX Runtime: one numpy matvec over ``size`` bytes of float32 after sleeping
    each of ``gaps`` seconds.  Where the last-level cache keeps a working set only while it is used (other
    tenants of a VM's host, other work of this one), the matvec slows the longer it pauses."""
    columns = 1024
    matrix = np.ones((max(1, size // (4 * columns)), columns), dtype=np.float32)
    vector = np.ones(columns, dtype=np.float32)
    medians = [_median_after(lambda: matrix.dot(vector), rounds, lambda: gap and time.sleep(gap)) for gap in gaps]
    print("  one numpy matvec over {:.0f} MB (the step graph's initializers) after sleeping: {}".format(
        matrix.nbytes / 1e6, ", ".join("{:.0f} ms {:.0f} us".format(g * 1e3, m * 1e6) for g, m in zip(gaps, medians))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--captions", type=int, default=100)
    parser.add_argument("--data", default=None, help="images to caption (default: the sample images)")
    args = parser.parse_args(argv)

    from jetcap.runtime.manifest import Manifest

    manifest = Manifest.load(args.bundle)
    print("load average before: {}".format(open("/proc/loadavg").read().strip()))
    decoder_step(manifest, args.precision, args.threads, args.steps)
    captions(manifest, args.precision, args.threads, args.captions, args.data)
    interference(manifest, args.precision, args.threads, max(20, args.captions), args.data)
    print("load average after: {}".format(open("/proc/loadavg").read().strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
