"""Soak test of ``jetcap caption-stream``: tens of thousands of frames from a looped video file, watching memory.

Writes a short video of sample shapes (``--video-frames`` frames, 96x96, MJPG AVI at 10 fps) unless
``--video`` names one, then runs the real command line::

    python -m jetcap caption-stream BUNDLE VIDEO --loop --max-frames FRAMES --every EVERY --jsonl ... --json

It stops by itself after ``--frames`` source frames (or ``--max-seconds``, then with SIGTERM).  While it
runs, the child's resident memory (VmRSS from /proc) is sampled every ``--rss-every`` seconds together
with the number of captions written so far; the "start" RSS is the first sample after ``--warmup``
captions (ONNX Runtime's arenas and OpenCV's decoder are allocated by then), the "end" RSS the last
sample before the stream finished.

Prints a markdown snippet (machine, command, captions/s, latency, drops, RSS start/end/growth, peak RSS)
and exits 1 when the run failed: non-zero exit, a frame dropped or not captioned, or RSS growth of
``--max-growth`` (default 5 %) or more.

    python benchmarks/soak_stream.py BUNDLE --frames 20000            # the documented soak
    python benchmarks/soak_stream.py BUNDLE --frames 2000 -- --threads 1

Python 3.6 compatible; needs jetcap's runtime and OpenCV (the same as the command).
"""
import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time

from jetcap.runtime.loader import current_rss_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = float(1 << 20)


def vm_rss(pid):
    """VmRSS of process ``pid`` in bytes (None once it is gone or unreadable)."""
    return current_rss_bytes("/proc/{}/status".format(pid))


def count_lines(path):
    """Complete lines in ``path`` so far (0 when it does not exist yet)."""
    try:
        with open(path, "rb") as handle:
            return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))
    except (IOError, OSError):
        return 0


def write_video(path, frames, seed=7, fps=10.0):
    """A MJPG AVI of ``frames`` sample-shapes images."""
    import cv2
    import numpy as np

    from jetcap.samples import shapes

    images, _ = shapes.generate(frames, seed)
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), fps, (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE))
    if not writer.isOpened():
        raise SystemExit("cannot write {}".format(path))
    for image in images:
        writer.write(np.ascontiguousarray(image[:, :, ::-1]))
    writer.release()
    return path


def machine():
    """One line: CPU model, cores, load, Python, onnxruntime and OpenCV versions."""
    model = platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        model = names[0] if names else model
    versions = []
    for name in ("onnxruntime", "cv2"):
        try:
            versions.append("{} {}".format(name, __import__(name).__version__))
        except ImportError:
            versions.append("{} missing".format(name))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "{}, {} CPU(s), load {:.2f} at start, Python {}, {}".format(
        model, os.cpu_count(), load, platform.python_version(), ", ".join(versions))


def run(args, video, jsonl):
    command = [sys.executable, "-m", "jetcap", "caption-stream", args.bundle, video, "--loop",
               "--max-frames", str(args.frames), "--every", str(args.every), "--jsonl", jsonl, "--json",
               "--status-every", str(args.status_every)] + args.extra
    started = time.time()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True)
    samples = []  # (seconds, captions written, rss bytes)
    killed = False
    stderr_lines = []

    def drain():
        for line in process.stderr:
            stderr_lines.append(line.rstrip("\n"))
            if args.verbose:
                sys.stderr.write(line)

    reader = threading.Thread(target=drain)
    reader.daemon = True
    reader.start()
    while process.poll() is None:
        rss = vm_rss(process.pid)
        if rss is not None and process.poll() is None:
            samples.append((time.time() - started, count_lines(jsonl), rss))
        if time.time() - started > args.max_seconds and not killed:
            process.send_signal(signal.SIGTERM)
            killed = True
        time.sleep(args.rss_every)
    stdout = process.stdout.read()
    reader.join(10)
    return command, process.returncode, stdout, stderr_lines, samples, time.time() - started, killed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="captioner bundle directory")
    parser.add_argument("--frames", type=int, default=20000, help="source frames to stream (default 20000)")
    parser.add_argument("--every", type=int, default=1, help="caption every Nth frame (default 1)")
    parser.add_argument("--video", default=None, help="video file to loop (default: generated sample shapes)")
    parser.add_argument("--video-frames", type=int, default=240, help="frames of the generated video (default 240)")
    parser.add_argument("--warmup", type=int, default=500, help="captions before the start RSS (default 500)")
    parser.add_argument("--rss-every", type=float, default=1.0, help="seconds between RSS samples (default 1)")
    parser.add_argument("--status-every", type=float, default=30.0, help="the command's status interval (default 30)")
    parser.add_argument("--max-growth", type=float, default=0.05, help="largest RSS growth accepted (default 0.05)")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="SIGTERM after this long (default 3600)")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo the command's stderr")
    parser.add_argument("extra", nargs="*", help="more caption-stream options, after --")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="jetcap-soak-stream-")
    video = args.video or write_video(os.path.join(work, "shapes.avi"), args.video_frames)
    jsonl = os.path.join(work, "captions.jsonl")
    machine_line = machine()
    command, code, stdout, stderr_lines, samples, wall, killed = run(args, video, jsonl)
    try:
        summary = json.loads(stdout)
    except ValueError:
        summary = None
    captions_written = count_lines(jsonl)
    warm = [s for s in samples if s[1] >= args.warmup]
    start_rss = warm[0][2] if warm else None
    end_rss = warm[-1][2] if warm else None
    growth = (end_rss - start_rss) / float(start_rss) if start_rss else None
    expected_captions = (args.frames + args.every - 1) // args.every

    problems = []
    if code != 0 or killed:
        problems.append("exit code {}{}".format(code, " after SIGTERM at --max-seconds" if killed else ""))
    if summary is None:
        problems.append("no JSON summary on stdout")
    else:
        if summary["dropped"]:
            problems.append("{} frames dropped from a file".format(summary["dropped"]))
        if summary["frames_read"] != args.frames or summary["captions"] != expected_captions:
            problems.append("{} frames / {} captions, expected {} / {}".format(
                summary["frames_read"], summary["captions"], args.frames, expected_captions))
    if captions_written != expected_captions:
        problems.append("{} JSONL lines, expected {}".format(captions_written, expected_captions))
    if growth is None:
        problems.append("no RSS sample after {} captions".format(args.warmup))
    elif growth >= args.max_growth:
        problems.append("RSS grew {:.1%} (limit {:.0%})".format(growth, args.max_growth))

    shown = " ".join(["jetcap", "caption-stream"] + [os.path.basename(a) if a in (video, jsonl) else a
                                                     for a in command[4:]])
    print("### caption-stream soak ({})".format(time.strftime("%Y-%m-%d")))
    print("")
    print("- machine: {}".format(machine_line))
    print("- command: `{}` (looping a {}-frame 96x96 MJPG video of sample shapes)".format(
        shown, args.video_frames if not args.video else "given"))
    print("")
    print("| frames | captions | wall s | captions/s | p50 ms | p95 ms | dropped | RSS after {} captions | "
          "RSS at end | growth | peak RSS | exit |".format(args.warmup))
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    if summary is not None:
        print("| {} | {} | {:.0f} | {:.1f} | {} | {} | {} | {} | {} | {} | {:.1f} MiB | {} |".format(
            summary["frames_read"], summary["captions"], summary["seconds"], summary["captions_per_second"],
            "{:.1f}".format(summary["latency_p50_ms"]), "{:.1f}".format(summary["latency_p95_ms"]), summary["dropped"],
            "{:.1f} MiB".format(start_rss / MIB) if start_rss else "-",
            "{:.1f} MiB".format(end_rss / MIB) if end_rss else "-",
            "{:+.2%}".format(growth) if growth is not None else "-", summary["peak_rss_bytes"] / MIB, code))
    if warm:
        picks = [warm[int(round(i * (len(warm) - 1) / 5.0))] for i in range(6)]
        print("")
        print("RSS over the run (captions: MiB): " + ", ".join(
            "{}: {:.1f}".format(c, r / MIB) for _, c, r in picks))
    print("")
    print("Result: {}".format("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    if problems:
        print("\nlast stderr lines of the command:\n" + "\n".join(stderr_lines[-5:]), file=sys.stderr)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
