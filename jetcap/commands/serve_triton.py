"""``jetcap serve-triton``: serve a bundle with a local Triton Inference Server (Python backend, CPU)."""
import tempfile

import click

from jetcap.commands.options import log, precision_option


@click.command("serve-triton")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--port", type=click.IntRange(min=0, max=65535), default=8000, show_default=True,
              help="HTTP port on 127.0.0.1 (0: a free one).")
@click.option("--grpc-port", type=click.IntRange(min=0, max=65535), default=8001, show_default=True,
              help="gRPC port on 127.0.0.1 (0: a free one).")
@click.option("--metrics-port", type=click.IntRange(min=0, max=65535), default=8002, show_default=True,
              help="Metrics port on 127.0.0.1 (0: a free one).")
@precision_option
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="max_batch_size [default: the bundle's largest batch].")
@click.option("--instances", type=click.IntRange(min=1), default=1, show_default=True,
              help="Python model instances (processes).")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=500, show_default=True,
              help="Dynamic batcher queue delay in microseconds.")
@click.option("--repository", type=click.Path(file_okay=False), default=None,
              help="Write the repository here (replaced) instead of a temporary directory.")
@click.option("--tritonserver", "binary", type=click.Path(dir_okay=False), default=None,
              help="tritonserver binary [default: nvidia-pytriton's, else tritonserver on PATH].")
@click.option("--ready-timeout", type=click.FloatRange(min=1), default=180.0, show_default=True,
              help="Seconds to wait for the models to load.")
@click.option("--log-verbose", type=click.IntRange(min=0), default=0, show_default=True,
              help="Triton's --log-verbose level.")
def command(bundle, port, grpc_port, metrics_port, precision, max_batch, instances, queue_delay_us, repository,
            binary, ready_timeout, log_verbose):
    """Serve BUNDLE with Triton on 127.0.0.1 until SIGTERM or Ctrl-C (KServe v2 over HTTP and gRPC).

    Writes the --backend python repository (the bundle runs in-process with ONNX Runtime) and runs the
    tritonserver that nvidia-pytriton ships (make triton-env; run .venv-triton/bin/jetcap) or a system Triton.
    Prints the HTTP and gRPC addresses and the model name on stdout once ready.  Exit 0 after a clean
    shutdown.
    """
    from jetcap.triton.repository import RepositoryOptions
    from jetcap.triton.server import serve_bundle

    options = RepositoryOptions(backend="python", max_batch=max_batch, instances=instances,
                                queue_delay_us=queue_delay_us, precision=precision)

    def on_ready(server):
        click.echo("http={} grpc={} metrics=127.0.0.1:{} model={}".format(
            server.http_url, server.grpc_url, server.metrics_port, server.model_name))

    with tempfile.TemporaryDirectory(prefix="jetcap-triton-") as workdir:
        code = serve_bundle(bundle, workdir, options, http_port=port, grpc_port=grpc_port, metrics_port=metrics_port,
                            binary=binary, repository=repository, ready_timeout=ready_timeout, verbose=log_verbose,
                            log=log, on_ready=on_ready)
    log("tritonserver exited with code {}".format(code))
    if code != 0:
        raise click.exceptions.Exit(1)
