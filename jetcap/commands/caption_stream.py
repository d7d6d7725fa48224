"""``jetcap caption-stream``: caption a camera, video file or GStreamer pipeline live, without torch (Python 3.6)."""
import json

import click

from jetcap.commands.options import backend_option, log, max_memory_option, precision_option, tsv_field


@click.command("caption-stream")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("source")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True, metavar="N",
              help="Caption every Nth frame (a live source that drops frames: the first frame at least N after "
                   "the last captioned one).")
@backend_option
@precision_option
@click.option("--beam", type=click.IntRange(min=1), default=None,
              help="Beam width; 1 is greedy [default: the bundle's, normally 1].")
@click.option("--max-len", type=click.IntRange(min=1), default=None,
              help="Most words per caption, <end> included [default: the bundle's].")
@click.option("--engine-cache", type=click.Path(file_okay=False), default=None,
              help="TensorRT engine cache directory [default: BUNDLE/engines].")
@max_memory_option
@click.option("--memory-threshold-mb", type=click.FloatRange(min=0), default=None,
              help="Skip captioning (counted, never crashing) while available memory (MemAvailable, or the "
                   "cgroup's) is below this many MiB; 0 turns it off [default: 37.5% of the memory this process "
                   "can have, at most 1536 MiB: the original Nano app's 2.5-GB-of-4 warning].")
@click.option("--jsonl", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="Write one JSON line per captioned frame: frame, timestamp (seconds into a file, wall time "
                   "for a live source), caption, score, latency_ms, batch (frames captioned in the same call); "
                   "flushed per line.")
@click.option("--overlay", type=click.Path(dir_okay=False), default=None, metavar="OUT.mp4|OUT.avi",
              help="Write the video with the current caption drawn on it (mp4v for .mp4, MJPG for .avi).")
@click.option("--display", is_flag=True,
              help="Show the captioned video in a window (q or Esc stops); refused without a display.")
@click.option("--duration", type=float, default=None, metavar="SECONDS",
              help="Stop after this many seconds of streaming.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, metavar="N",
              help="Stop after N source frames.")
@click.option("--status-every", type=click.FloatRange(min=0), default=5.0, show_default=True, metavar="SECONDS",
              help="Print a status line on stderr this often (captions/s, p50/p95 latency, drops, RSS, "
                   "MemAvailable); 0 turns it off.")
@click.option("--queue", type=click.IntRange(min=1), default=2, show_default=True, metavar="N",
              help="Frames that may wait for inference; a live source drops the oldest beyond this.")
@click.option("--decode-loop/--no-decode-loop", default=None,
              help="Frames that queue up join the captions in flight at their next decoder step (the decode "
                   "loop: more captions, each a little older), or are captioned a batch at a time (fresher). "
                   "[default: the loop for a live source, batches for a file]")
@click.option("--loop", is_flag=True, help="Play a video file again from its start at its end (soak tests).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime intra-op threads [default: its own choice].")
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary as JSON on stdout instead of the caption lines.")
def command(bundle, source, every, backend, precision, beam, max_len, engine_cache, max_memory_mb, memory_threshold_mb,
            jsonl, overlay, display, duration, max_frames, status_every, queue, decode_loop, loop, threads, as_json):
    """Caption the video SOURCE with the captioner BUNDLE as it plays (OpenCV capture, no PyTorch).

    SOURCE is a camera index (0), a device (/dev/video0), a video file, a FIFO carrying a video stream,
    a stream URL (rtsp://...) or a GStreamer pipeline (anything containing '!'), e.g. a Jetson CSI camera:

    \b
      'nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! nvvidconv !
       video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1'

    Capture and inference run concurrently: a live source drops its oldest frames when inference falls
    behind (counted); a file is processed completely.  stdout gets FRAME<TAB>TIMESTAMP<TAB>CAPTION each
    time the caption changes; stderr the status lines and a summary.  Ctrl+C / SIGTERM / end of file
    finish the frame in flight, flush the outputs and exit 0; exit 2 when the source cannot be opened or
    an output cannot be written (checked before starting), exit 1 when a live source vanishes mid-run.
    """
    from jetcap.runtime.stream import StreamOptions, run_stream

    options = StreamOptions(source, every=every, backend=backend, precision=precision, engine_cache=engine_cache,
                            beam=beam, max_len=max_len, max_memory_mb=max_memory_mb,
                            memory_threshold_mb=memory_threshold_mb, jsonl=jsonl, overlay=overlay, display=display,
                            duration=duration, max_frames=max_frames, status_every=status_every, queue=queue,
                            loop=loop, threads=threads, decode_loop=decode_loop)
    previous = [None]

    def print_changes(record):
        if record["caption"] != previous[0]:
            previous[0] = record["caption"]
            click.echo("{}\t{:.3f}\t{}".format(record["frame"], record["timestamp"], tsv_field(record["caption"])))

    summary = run_stream(bundle, options, log=log, on_caption=None if as_json else print_changes)
    if as_json:
        click.echo(json.dumps(summary.to_dict(), indent=2, sort_keys=True))
    if summary.exit_code:
        click.get_current_context().exit(summary.exit_code)
