"""``jetcap serve-engine``: serve a bundle over HTTP (Python 3.6, standard library server)."""
import click

from jetcap.commands.options import backend_option, max_memory_option, precision_option


@click.command("serve-engine")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 exposes the server to the network: put a proxy in front).")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="TCP port; 0 picks a free one (printed at start-up).")
@backend_option
@precision_option
@click.option("--engine-cache", type=click.Path(file_okay=False), default=None,
              help="TensorRT engine cache directory [default: BUNDLE/engines].")
@max_memory_option
@click.option("--max-concurrency", type=click.IntRange(min=1), default=None,
              help="Requests served at once [default: 8 with --batching, else 1].  With batching they share each "
                   "encoder / decoder-step call; without, TensorRT still runs one at a time.")
@click.option("--batching/--no-batching", default=True, show_default=True,
              help="Captioners: requests in flight share every encoder and decoder-step call (iteration-level "
                   "batching up to the bundle's max batch); captions are those of single requests.")
@click.option("--queue", type=click.IntRange(min=0), default=8, show_default=True,
              help="Requests that may wait for a free worker; beyond that new ones get 503 + Retry-After.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=8.0, show_default=True,
              help="Largest request body; larger ones get 413 before being read.")
@click.option("--timeout", type=click.FloatRange(min=0.001), default=30.0, show_default=True,
              help="Seconds a request may wait for its result (queueing included); then 504.")
@click.option("--memory-threshold-mb", type=click.IntRange(min=0), default=64, show_default=True,
              help="Shed new inferences (503) while available memory (MemAvailable / cgroup) is below this; 0: off.")
@click.option("--max-rss-mb", type=click.IntRange(min=1), default=None,
              help="Shed new inferences (503) while this process's resident memory is above this [default: off].")
@click.option("--max-pixels", type=click.IntRange(min=1), default=None,
              help="Largest image (width x height) accepted, from its header [default: 40 000 000].")
@click.option("--max-connections", type=click.IntRange(min=1), default=64, show_default=True,
              help="Connections served at once; more are answered 503 immediately.")
@click.option("--probe-slots", type=click.IntRange(min=0), default=8, show_default=True,
              help="Extra connections taken while every --max-connections slot is busy, only for GET/HEAD "
                   "/health, /ready and /metrics (so probes work while slow clients hold the slots).")
@click.option("--header-timeout", type=click.FloatRange(min=0.001), default=10.0, show_default=True,
              help="Seconds from a connection's start until its request line and headers are in; then 408.")
@click.option("--min-body-rate-kib", type=click.FloatRange(min=0.001), default=64.0, show_default=True,
              help="Slowest body upload accepted, all along the upload (KiB/s, after --header-timeout of "
                   "grace); then 408.")
@click.option("--max-buffered-mb", type=click.FloatRange(min=0.001), default=None,
              help="Request bodies held in memory by all connections together; beyond it 503 before reading "
                   "[default: 4 x --max-body-mb].")
@click.option("--allowed-host", "allowed_hosts", multiple=True, metavar="NAME",
              help="Accept only requests whose Host header is NAME (repeatable; others get 421): a defence "
                   "against DNS rebinding when a browser can reach the server [default: any].")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="ONNX Runtime intra-op threads [default: onnxruntime's choice].")
def command(bundle, host, port, backend, precision, engine_cache, max_memory_mb, max_concurrency, batching, queue, max_body_mb,
            timeout, memory_threshold_mb, max_rss_mb, max_pixels, max_connections, probe_slots, header_timeout,
            min_body_rate_kib, max_buffered_mb, allowed_hosts, threads):
    """Serve BUNDLE over HTTP: POST /caption or /predict, GET /health /ready /model /metrics.

    The model loads in the background; /ready turns 200 once it is loaded and warmed up (a load failure
    keeps the server up and /ready says why).  One JSON log line per request on stderr.  SIGTERM or
    Ctrl-C stops accepting, finishes requests in flight, releases the model and exits 0.
    See docs/SERVING.md.
    """
    from jetcap.runtime import preprocess
    from jetcap.serve.app import serve
    from jetcap.serve.options import ServeOptions

    options = ServeOptions(host=host, port=port, backend=backend, precision=precision, engine_cache=engine_cache,
                           max_memory_mb=max_memory_mb, max_concurrency=max_concurrency, batching=batching, queue=queue,
                           max_body_mb=max_body_mb, timeout=timeout, memory_threshold_mb=memory_threshold_mb,
                           max_rss_mb=max_rss_mb, max_pixels=max_pixels or preprocess.DEFAULT_MAX_PIXELS,
                           max_connections=max_connections, threads=threads, probe_slots=probe_slots,
                           header_timeout=header_timeout, min_body_rate_kib=min_body_rate_kib,
                           max_buffered_mb=max_buffered_mb, allowed_hosts=allowed_hosts)
    code = serve(bundle, options)
    if code:
        raise click.exceptions.Exit(code)
