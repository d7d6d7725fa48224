"""``jetcap validate``: the numeric-equivalence gate for CI."""
import math

import click

from jetcap.commands.options import checkpoint_options, echo_json, json_option, log, model_source_options

TOLERANCE_FORM = "OUTPUT=ATOL,RTOL[,MIN_COSINE[,OUTLIER_FRACTION[,OUTLIER_CAP]]]"


def _tolerance_option(ctx, param, values):
    """``--tolerance OUTPUT=ATOL,RTOL[,MIN_COSINE[,OUTLIER_FRACTION[,OUTLIER_CAP]]]`` ->
    {output: {atol, rtol, ...}}; the fields left out take the precision's min_cosine and no outlier
    allowance (a fraction without a cap gets ``DEFAULT_OUTLIER_CAP``)."""
    fields = ("atol", "rtol", "min_cosine", "outlier_fraction", "outlier_cap")
    parsed = {}
    for value in values:
        try:
            name, numbers = value.split("=", 1)
            parts = [float(x) for x in numbers.split(",")]
            if not name or not 2 <= len(parts) <= len(fields):
                raise ValueError
        except ValueError:
            raise click.BadParameter("expected {}, got {!r}".format(TOLERANCE_FORM, value))
        if not all(math.isfinite(x) for x in parts):
            raise click.BadParameter("tolerances must be finite numbers, got {!r}".format(value))
        if name in parsed:
            raise click.BadParameter("{} is given twice".format(name))
        parsed[name] = dict(zip(fields, parts))
    return parsed


@click.command("validate")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--backend", "backends", multiple=True, type=click.Choice(["all", "onnxruntime", "tensorrt"]),
              help="Backends to check (repeatable; default: every installed one).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["all", "fp32", "fp16", "int8", "int8-cpu"]),
              help="Precisions to check (repeatable; default: every variant in the bundle).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Recompute the PyTorch reference live from this checkpoint (needs torch).")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="Folder of real images / sequences for the task-level checks (default: the bundle's samples).")
@click.option("--samples", type=click.IntRange(min=1), default=None, help="Use at most this many task inputs.")
@click.option("--seed", type=int, default=None,
              help="With --checkpoint: also compare on fresh random inputs drawn with this seed.")
@click.option("--tolerance", "tolerances", multiple=True, callback=_tolerance_option,
              help="Override an output's tolerance: {} (repeatable).".format(TOLERANCE_FORM))
@click.option("--engine-cache", type=click.Path(file_okay=False), default=None, help="TensorRT engine cache.")
@click.option("--word-map", type=click.Path(dir_okay=False), default=None,
              help="With --checkpoint: the captioner's word map, if the checkpoint lacks it [default: the bundle's].")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="With --checkpoint: the class-name file the bundle was exported with (export --labels), if "
                   "it overrode the checkpoint's.")
@click.option("--junit", type=click.Path(dir_okay=False), default=None, help="Also write JUnit XML here.")
@click.option("--target", default=None, metavar="DEVICE|VERSION",
              help="Device or TensorRT version of the TensorRT pre-flight [default: the bundle's export target].")
@click.option("--no-check", is_flag=True, help="Skip the TensorRT pre-flight (jetcap check).")
@model_source_options
@json_option
def command(bundle, backends, precisions, checkpoint, data, samples, seed, tolerances, engine_cache, word_map, labels,
            junit, target, no_check, models, model_args, adapter, trust_pickle, code_path, as_json):
    """Compare BUNDLE's variants on each backend with PyTorch, tensor by tensor and caption by caption.

    With --checkpoint the PyTorch reference is recomputed from your model -- the same --model /
    --trust-pickle / --adapter options as export -- so a bundle that does not compute what your code
    computes fails.  Exit 0 when every check passes, 1 on a numeric failure, 2 on a usage or
    environment error.
    """
    from jetcap.util.fsio import check_output_file, write_bytes_atomic
    from jetcap.validate.gate import ValidateOptions, validate_bundle

    if junit:
        check_output_file(junit, "--junit", keep_out_of=[bundle])
    options = checkpoint_options(checkpoint, models, model_args, adapter, trust_pickle, code_path, word_map, labels)
    opts = ValidateOptions(bundle, backends=list(backends) or "all", precisions=list(precisions) or "all",
                           checkpoint=checkpoint, data=data, samples=samples, tolerances=tolerances,
                           engine_cache=engine_cache, checkpoint_options=options, seed=seed, target=target,
                           preflight=not no_check)
    report = validate_bundle(opts, log=log)
    if junit:
        write_bytes_atomic(junit, report.to_junit_xml().encode("utf-8"))
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(report.to_table())
    code = report.exit_code()
    if code:
        failures = report.failures()
        raise click.exceptions.Exit(code) if not failures else _fail(failures, code)


def _fail(failures, code):
    first = failures[0]
    click.echo("FAILED: {} check(s); first: {} {} {} {}: {}".format(
        len(failures), first.backend, first.precision, first.graph, first.name, first.detail), err=True)
    raise click.exceptions.Exit(code)
