"""How fresh ``caption-stream``'s captions are on a live source: capture-to-caption time at a given fps.

    .venv/bin/python benchmarks/stream_freshness.py BUNDLE [--data DIR] [--fps 100] [--seconds 5]
        [--queue 2] [--threads 2] [--backend onnxruntime] [--precision fp32]

A thread writes the images of ``--data`` (PNG/JPEG files; default: the shipped samples), JPEG-encoded,
into a FIFO at ``--fps`` frames per second for ``--seconds`` (a raw MJPEG stream, what ``ffmpeg -f
mjpeg`` sends to a pipe: a LIVE source, whose oldest frames are dropped when inference falls behind),
and the stream (:func:`jetcap.runtime.stream.run_stream`, in this process) captions it.  For each
caption, the time from the frame's capture (its record's ``timestamp``: wall time for a live source) to
the caption being written is what a camera app shows late.  Prints captions/s, dropped frames and that
time's p50/p95 (the first 20 captions, warm-up, left out), besides the stream's own ``latency_ms``
(from the frame leaving the queue).  It sets ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (unless set) so that
OpenCV's FFmpeg backend does not probe 5 MB of the pipe first, which would hold back the first seconds
of frames and deliver them in one burst.  Needs OpenCV, as the command does; Python 3.6 compatible.
"""
import argparse
import glob
import os
import shutil
import sys
import tempfile
import threading
import time

# OpenCV's FFmpeg backend probes up to 5 MB of a pipe before its first frame: at a few KB per JPEG that
# holds back seconds of frames and delivers them in a burst, which is not a live source any more
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "probesize;32|analyzeduration;0")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

WARMUP = 20


def frames_of(data):
    import cv2

    from jetcap import samples

    paths = (sorted(p for p in glob.glob(os.path.join(data, "*")) if p.lower().endswith((".png", ".jpg", ".jpeg")))
             if data else [str(p) for p in samples.sample_images()])
    if not paths:
        raise SystemExit("no images in {}".format(data))
    return [cv2.imencode(".jpg", cv2.imread(path))[1].tobytes() for path in paths]


def write_live(path, blobs, fps, count):
    """Write ``count`` frames into the FIFO ``path`` at ``fps``, then close it (the source ends)."""
    try:
        with open(path, "wb") as handle:
            began = time.time()
            for index in range(count):
                handle.write(blobs[index % len(blobs)])
                handle.flush()
                delay = began + (index + 1) / fps - time.time()
                if delay > 0:
                    time.sleep(delay)
    except BrokenPipeError:
        pass  # the stream stopped reading first


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def main():
    import numpy as np  # noqa: F401 -- jetcap's runtime needs it; fail here, not in the writer thread

    from jetcap.runtime.stream import StreamOptions, run_stream

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", default=None, help="images to stream (default: the shipped samples)")
    parser.add_argument("--fps", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--queue", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()
    blobs = frames_of(args.data)
    folder = tempfile.mkdtemp(prefix="jetcap-fresh-")
    try:
        fifo = os.path.join(folder, "live.mjpeg")
        os.mkfifo(fifo)
        writer = threading.Thread(target=write_live, args=(fifo, blobs, args.fps, int(args.fps * args.seconds)))
        writer.daemon = True
        writer.start()
        fresh = []
        summary = run_stream(args.bundle, StreamOptions(fifo, backend=args.backend, precision=args.precision,
                                                        threads=args.threads, queue=args.queue, status_every=0),
                             on_caption=lambda record: fresh.append(time.time() - record["timestamp"]),
                             handle_signals=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    fresh = [1000.0 * value for value in fresh[WARMUP:]]
    print("live MJPEG pipe at {:g} fps, --queue {}: {} captions in {:.2f} s ({:.1f}/s), {} frames dropped; "
          "capture-to-caption p50 {:.1f} ms, p95 {:.1f} ms; latency_ms p50 {:.1f}".format(
              args.fps, args.queue, summary.captions, summary.seconds, summary.captions / max(summary.seconds, 1e-9),
              summary.dropped, percentile(fresh, 0.5), percentile(fresh, 0.95), summary.latency_p50_ms or 0.0))


if __name__ == "__main__":
    main()
