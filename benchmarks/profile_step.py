"""Where a batch-1 decoder step's time goes in ONNX Runtime (the analysis behind docs/BENCHMARKS.md).

    python benchmarks/profile_step.py BUNDLE [--precision fp32] [--threads 2] [--steps 3000]

Prints, for one decoder step at batch 1 (median microseconds over ``--steps`` runs):

* jetcap's decoder session (I/O binding, what ``CaptionPipeline`` uses) and a plain ``session.run``
  with numpy feeds;
* one ONNX Runtime MatMul doing as many multiply-adds as the whole step (1 x 1024 x N), the same
  with 1 thread, and an empty one-node graph (the fixed cost of one ``run`` call);
* ONNX Runtime's own per-node kernel times (its profiler; they add overhead, compare them with each
  other rather than with the totals above).
"""
import argparse
import collections
import json
import os
import sys
import tempfile
import time

import numpy as np


def _median_us(call, steps, warmup=200):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    times.sort()
    return times[len(times) // 2] * 1e6


def _session(model, threads, profile_dir=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if profile_dir:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(profile_dir, "step")
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["NchwcTransformer"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)

    import onnx
    from onnx import TensorProto, helper

    from jetcap.bench.flops import count_flops, graph_input_shapes
    from jetcap.bench.matmul import matmul_model
    from jetcap.runtime.manifest import Manifest
    from jetcap.runtime.pipeline import OrtBoundDecoderSession
    from jetcap.runtime.backends.onnxruntime import OnnxRuntimeRunner

    manifest = Manifest.load(args.bundle)
    path = manifest.graph_path(args.precision, "decoder_step")
    spec = manifest.graph("decoder_step")
    sizes = dict((axis, int(r["opt"])) for axis, r in manifest.axes.items())
    sizes["batch"] = 1
    shapes = graph_input_shapes(spec, sizes)
    count = count_flops(manifest.graph_path("fp32", "decoder_step"), shapes)
    rng = np.random.RandomState(0)
    feed = {}
    for tensor in spec["inputs"]:
        shape = shapes[tensor["name"]]
        feed[tensor["name"]] = (np.ones(shape, dtype=np.int64) if tensor["dtype"] == "int64"
                                else rng.standard_normal(shape).astype(np.float32))
    rows = collections.OrderedDict()
    runner = OnnxRuntimeRunner(path, spec, threads=args.threads)
    runner.activate()
    bound = OrtBoundDecoderSession(runner, feed["features"], feed["projected"], feed["h"], feed["c"])
    words = feed["prev_word"]
    rows["jetcap decoder session (I/O binding)"] = _median_us(lambda: bound.step(words), args.steps)
    session = runner.session
    rows["session.run, numpy feeds, all outputs"] = _median_us(lambda: session.run(None, feed), args.steps)
    columns = max(1, int(round(count.macs / 1024.0)))
    for threads in sorted(set([args.threads, 1])):
        matmul = _session(matmul_model(1024, columns).SerializeToString(), threads)
        x = rng.standard_normal((1, 1024)).astype(np.float32)
        rows["one MatMul 1x1024x{} ({} thread{})".format(columns, threads, "s" if threads > 1 else "")] = _median_us(
            lambda: matmul.run(None, {"x": x}), args.steps)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "empty",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    empty = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    empty.ir_version = 7
    empty_session = _session(empty.SerializeToString(), args.threads)
    one = np.ones(1, dtype=np.float32)
    rows["empty one-node graph (fixed cost of a run call)"] = _median_us(lambda: empty_session.run(None, {"x": one}),
                                                                         args.steps)
    print("decoder step, batch 1, {} ({} threads): {:.2f} MFLOP, {:.2f} M multiply-adds, {} nodes".format(
        args.precision, args.threads, count.flops / 1e6, count.macs / 1e6, len(onnx.load(path).graph.node)))
    for label, value in rows.items():
        print("  {:<52} {:8.1f} us".format(label, value))

    with tempfile.TemporaryDirectory() as tmp:
        profiled = _session(path, args.threads, tmp)
        for _ in range(args.steps):
            profiled.run(None, feed)
        with open(profiled.end_profiling()) as handle:
            events = json.load(handle)
    kernels = collections.defaultdict(list)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kernels[(event["args"].get("op_name"), event["name"][:-len("_kernel_time")])].append(event["dur"])
    medians = sorted(((sorted(v)[len(v) // 2], k) for k, v in kernels.items()), reverse=True)
    total = sum(m for m, _ in medians)
    print("ONNX Runtime profiler, per-node kernel medians (us; profiling adds overhead): sum {} over {} nodes".format(
        total, len(medians)))
    for value, (op, name) in medians[:8]:
        print("  {:>5}  {:<12} {}".format(value, op, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
