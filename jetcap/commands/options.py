"""Click options shared by several commands (Python 3.6)."""
import functools
import json
import math

import click

from jetcap.errors import JetcapError
from jetcap.runtime.manifest import PRECISIONS


def json_option(command):
    """``--json``: a machine-readable summary on stdout, and on a failure (a :class:`JetcapError`)
    ``{"error", "exit_code"}`` there too, so stdout stays JSON either way; the one-line message still goes
    to stderr, with the error's exit code.  A command that printed its own JSON for the error marks it
    ``json_echoed``."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except JetcapError as error:
            if kwargs.get("as_json") and not getattr(error, "json_echoed", False):
                echo_json({"error": str(error), "exit_code": error.exit_code})
            raise

    return click.option("--json", "as_json", is_flag=True,
                        help="Print a machine-readable JSON summary on stdout (on failure: the error).")(run)

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


def parse_models(values):
    """``--model [PART=]MODULE:NAME`` values -> ``{part: spec}`` (part ``model`` when not named)."""
    parts = {}
    for value in values:
        part, spec = "model", value
        head = value.split(":", 1)[0]
        if "=" in head:
            part, spec = value.split("=", 1)
        if part in parts:
            raise click.BadParameter("part {!r} given twice".format(part), param_hint="--model")
        parts[part] = spec
    return parts


def parse_json_object(value, option):
    """A JSON object option (e.g. ``--model-args``); BadParameter for anything else."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise click.BadParameter("not valid JSON: {}".format(exc), param_hint=option)
    if not isinstance(parsed, dict):
        raise click.BadParameter("must be a JSON object", param_hint=option)
    return parsed


def parse_triple(value, option):
    """``R,G,B`` -> three floats (``--mean``/``--std``)."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        numbers = ()
    if len(numbers) != 3 or not all(math.isfinite(n) for n in numbers):
        raise click.BadParameter("expected three comma-separated finite numbers, got {!r}".format(value),
                                 param_hint=option)
    return numbers


def model_source_options(command):
    """The options that say where the user's model comes from (export and validate --checkpoint)."""
    decorators = [
        click.option("--model", "models", multiple=True, metavar="[PART=]MODULE:NAME",
                     help="Your model class or factory (MODULE importable from --code-path, or path/file.py); "
                          "repeat as encoder=... --model decoder=... for models saved in parts.  The checkpoint "
                          "then only provides weights (still read with weights_only=True)."),
        click.option("--model-args", default=None, metavar="JSON",
                     help="Constructor arguments for --model: an object, or {part: object} "
                          "[default: the checkpoint's config / Lightning hyper_parameters]."),
        click.option("--adapter", type=click.Path(dir_okay=False), default=None, metavar="FILE.py",
                     help="Captioner: a file saying how one decoder step of your model is wired (docs/EXPORT.md, "
                          "'Captioners: the decoder step and adapters') [default: the built-in Show-Attend-Tell "
                          "adapter]."),
        click.option("--trust-pickle", is_flag=True,
                     help="Use the whole pickled modules in the checkpoint, with their own forward; with --model, "
                          "read a checkpoint that pickles objects beside the weights (a vocabulary); read a "
                          "pickled --word-map (executes code from the file: only for files you trust)."),
        click.option("--code-path", type=click.Path(), default=None,
                     help="Your training code: a folder (searched recursively for pickled classes) or a .py file."),
    ]
    for decorator in reversed(decorators):
        command = decorator(command)
    return command


def tsv_field(value):
    """``value`` safe for one TSV field: backslash, tab, newline and carriage return escaped as ``\\``, ``\\t``..."""
    return (str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def checkpoint_options(checkpoint, models=(), model_args=None, adapter=None, trust_pickle=False, code_path=None,
                       word_map=None, labels=None):
    """The ``--checkpoint`` model-source options of validate and bench as the library takes them (a dict);
    click.UsageError when they are given without ``--checkpoint``."""
    options = {}
    if trust_pickle:
        options["trust_pickle"] = True
    if code_path:
        options["code_path"] = code_path
    if models:
        options["models"] = parse_models(models)
    if model_args:
        options["model_args"] = parse_json_object(model_args, "--model-args")
    if adapter:
        options["adapter"] = adapter
    if word_map:
        options["word_map"] = word_map
    if labels:
        options["labels"] = labels
    if options and not checkpoint:
        raise click.UsageError("--model, --model-args, --adapter, --trust-pickle, --code-path, --word-map and "
                               "--labels go with --checkpoint")
    return options
