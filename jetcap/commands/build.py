"""``jetcap build``: build (or reuse) the TensorRT engines of a bundle on this device (Python 3.6)."""
import click

from jetcap.commands.options import echo_json, json_option, log
from jetcap.runtime.backends.trt_api import DEFAULT_WORKSPACE_MB
from jetcap.runtime.manifest import PRECISIONS


@click.command("build")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp16", show_default=True,
              help="Engine precision. int8 needs a GPU with fast INT8 (Xavier/Orin, not the Nano).")
@click.option("--workspace-mb", type=click.IntRange(min=1), default=DEFAULT_WORKSPACE_MB, show_default=True,
              help="Builder workspace limit in MiB (the default suits a 4 GB Jetson).")
@click.option("--engine-cache", type=click.Path(file_okay=False), default=None,
              help="Engine cache directory [default: BUNDLE/engines].")
@click.option("--timing-cache", type=click.Path(dir_okay=False), default=None,
              help="Load and save TensorRT's timing cache here (faster rebuilds).")
@click.option("--force", is_flag=True, help="Rebuild even when a matching engine is cached.")
@click.option("--allow-slow-int8", is_flag=True,
              help="Build int8 even on a GPU without fast INT8 (it will be slower than fp16).")
@click.option("--tactic-libraries/--no-tactic-libraries", default=None,
              help="Let TensorRT use cuBLAS/cuDNN kernels [default: the release's default: on before 8.5]. "
                   "Without them the engines do not load those libraries at run time: about 400 MB less of a "
                   "Nano's RAM (see jetcap check), possibly slower layers.")
@click.option("--verbose", is_flag=True, help="Show TensorRT's verbose builder log.")
@json_option
def command(bundle, precision, workspace_mb, engine_cache, timing_cache, force, allow_slow_int8, tactic_libraries,
            verbose, as_json):
    """Build one TensorRT engine per graph of BUNDLE for this GPU and TensorRT version.

    Engines are cached by ONNX checksum, TensorRT version, GPU, precision and shape ranges; a cached
    engine is reused only when all of them match.  Needs TensorRT (JetPack on a Jetson).
    """
    from jetcap.runtime.engine import build_engines

    report = build_engines(bundle, precision=precision, workspace_mb=workspace_mb, cache_dir=engine_cache,
                           timing_cache=timing_cache, force=force, allow_int8_without_fast_int8=allow_slow_int8,
                           log=log, verbose=verbose, tactic_libraries=tactic_libraries)
    if as_json:
        echo_json(report)
        return
    for entry in report["engines"]:
        click.echo("{}\t{}\t{}".format(entry["graph"], "cached" if entry["cached"] else "built", entry["path"]))
