"""How fresh ``caption-stream``'s captions are on a live source: capture-to-caption time at a given fps.

    .venv/bin/python benchmarks/stream_freshness.py BUNDLE [--data DIR] [--fps 100] [--seconds 5]
        [--queue 2] [--threads 2] [--backend onnxruntime] [--precision fp32] [--batches]

A thread writes the images of ``--data`` (PNG/JPEG files; default: the shipped samples), JPEG-encoded,
into a FIFO at ``--fps`` frames per second for ``--seconds`` (a raw MJPEG stream, what ``ffmpeg -f
mjpeg`` sends to a pipe: a LIVE source, whose oldest frames are dropped when inference falls behind),
and the stream (:func:`jetcap.runtime.stream.run_stream`, in this process) captions it.  As a camera,
the writer never catches up on frames it could not deliver in time (while the bundle loads, or while
the pipe is full): it skips them.  For each caption, the time from the frame's capture (its record's
``timestamp``: wall time for a live source) to the caption being written is what a camera app shows
late.  Prints captions/s between the 20th and the last caption (warm-up and the source's end left
out), frames skipped by the writer and dropped by the stream, and that time's p50/p95 over the same
captions, besides the stream's own ``latency_ms`` (from the frame leaving the queue).  ``--batches``
captions the live source a batch at a time (``caption-stream --no-decode-loop``), as it does a file.  It sets ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` (unless set) so that
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


def write_live(path, blobs, fps, count, counts):
    """Offer ``count`` frames to the FIFO ``path`` at ``fps``, then close it (the source ends).  A frame
    whose time has passed (the reader was not there) is skipped, not sent late: ``counts["skipped"]``."""
    try:
        with open(path, "wb") as handle:
            began = time.time()
            for index in range(count):
                due = began + index / fps
                if time.time() > due + 1.0 / fps:
                    counts["skipped"] += 1
                    continue
                handle.write(blobs[index % len(blobs)])
                handle.flush()
                counts["written"] += 1
                delay = began + (index + 1) / fps - time.time()
                if delay > 0:
                    time.sleep(delay)
    except BrokenPipeError:
        pass  # the stream stopped reading first


def main():
    import numpy as np  # noqa: F401 -- jetcap's runtime needs it; fail here, not in the writer thread

    from jetcap.runtime.stream import StreamOptions, percentile, run_stream

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--data", default=None, help="images to stream (default: the shipped samples)")
    parser.add_argument("--fps", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--queue", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--batches", action="store_true", help="a batch at a time, not the decode loop")
    args = parser.parse_args()
    blobs = frames_of(args.data)
    folder = tempfile.mkdtemp(prefix="jetcap-fresh-")
    try:
        fifo = os.path.join(folder, "live.mjpeg")
        os.mkfifo(fifo)
        counts = {"written": 0, "skipped": 0}
        writer = threading.Thread(target=write_live, args=(fifo, blobs, args.fps, int(args.fps * args.seconds), counts))
        writer.daemon = True
        writer.start()
        written = []  # (when the caption was written, how late)

        def on_caption(record):
            now = time.time()
            written.append((now, now - record["timestamp"]))

        summary = run_stream(args.bundle, StreamOptions(fifo, backend=args.backend, precision=args.precision,
                                                        threads=args.threads, queue=args.queue, status_every=0,
                                                        decode_loop=not args.batches),
                             on_caption=on_caption, handle_signals=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    steady = written[WARMUP:]
    if len(steady) < 2:
        raise SystemExit("only {} captions: stream longer (--seconds)".format(len(written)))
    rate = (len(steady) - 1) / max(steady[-1][0] - steady[0][0], 1e-9)
    late = [1000.0 * value for _, value in steady]
    print("live MJPEG pipe at {:g} fps, --queue {}, {}: {} frames sent ({} skipped by the source), {} dropped by "
          "the stream, {} captions, {:.1f}/s; capture-to-caption p50 {:.1f} ms, p95 {:.1f} ms; latency_ms p50 "
          "{:.1f}".format(args.fps, args.queue, "batches" if args.batches else "decode loop", counts["written"],
                          counts["skipped"], summary.dropped, summary.captions, rate, percentile(late, 50),
                          percentile(late, 95), summary.latency_p50_ms or 0.0))


if __name__ == "__main__":
    main()
