"""The captioner encoder on ONNX Runtime (CPU): which session settings matter, at batch 1 and 8.

    .venv/bin/python benchmarks/profile_encoder.py BUNDLE [--threads 2] [--repeat 30]

Times the bundle's fp32 ``encoder.onnx`` (median ms) under each graph optimisation level (basic,
extended, all -- "all" adds the NCHWc layout transformer for convolutions), with intra-op spinning on
and off, and with 1 and ``--threads`` threads; and the time per op type from ONNX Runtime's profiler
(relative shares only: the profiler adds overhead).  Prints a Markdown table.
"""
import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort

LEVELS = collections.OrderedDict([
    ("basic", ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
    ("extended", ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED),
    ("all (NCHWc)", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
])


def session(path, level, threads, spinning, profile=None):
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def median_ms(sess, feed, repeat):
    for _ in range(3):
        sess.run(None, feed)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - began)
    return 1000.0 * sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    path = os.path.join(args.bundle, "encoder.onnx")
    manifest = json.load(open(os.path.join(args.bundle, "manifest.json")))
    shape = manifest["graphs"]["encoder"]["inputs"][0]["shape"]
    rng = np.random.RandomState(0)
    print("| optimisation | threads | spinning | batch 1 ms | batch 8 ms |")
    print("|---|---|---|---|---|")
    for name, level in LEVELS.items():
        for threads in sorted({1, args.threads}):
            for spinning in (True, False):
                sess = session(path, level, threads, spinning)
                row = []
                for batch in (1, 8):
                    images = rng.normal(size=[batch] + [int(d) for d in shape[1:]]).astype(np.float32)
                    row.append(median_ms(sess, {"images": images}, args.repeat if batch == 1 else max(5, args.repeat // 4)))
                print("| {} | {} | {} | {:.2f} | {:.2f} |".format(name, threads, "on" if spinning else "off", *row))
    prefix = os.path.join(tempfile.mkdtemp(), "encoder")
    sess = session(path, LEVELS["all (NCHWc)"], args.threads, False, profile=prefix)
    images = rng.normal(size=[1] + [int(d) for d in shape[1:]]).astype(np.float32)
    for _ in range(20):
        sess.run(None, {"images": images})
    trace = json.load(open(sess.end_profiling()))
    per_op = collections.Counter()
    for event in trace:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0)
    total = float(sum(per_op.values())) or 1.0
    print("\nbatch-1 kernel time by op type (ORT profiler, 'all', {} threads):".format(args.threads))
    for op, micros in per_op.most_common(8):
        print("  {:<22} {:5.1f} %".format(op, 100.0 * micros / total))


if __name__ == "__main__":
    main()
