"""Click options shared by several commands (Python 3.6)."""
import json

import click

from jetcap.runtime.manifest import PRECISIONS

json_option = click.option("--json", "as_json", is_flag=True, help="Print a machine-readable JSON summary on stdout.")

precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
    help="Which precision variant of the bundle to run.")

backend_option = click.option(
    "--backend", type=click.Choice(["auto", "onnxruntime", "tensorrt"]), default="auto", show_default=True,
    help="auto: a built TensorRT engine when one is loadable, else ONNX Runtime (the choice is printed).")

max_memory_option = click.option(
    "--max-memory-mb", type=click.IntRange(min=1), default=None,
    help="Refuse to load when the estimate exceeds this budget (default: what the system has available).")


def echo_json(obj):
    """Print ``obj`` as JSON on stdout."""
    click.echo(json.dumps(obj, indent=2, sort_keys=True))


def log(message):
    """Progress and log lines go to stderr, results to stdout."""
    click.echo(message, err=True)
