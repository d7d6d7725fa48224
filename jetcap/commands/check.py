"""``jetcap check``: TensorRT pre-flight of a bundle, without TensorRT."""
import click

from jetcap.commands.options import echo_json, json_option


@click.command("check")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--tensorrt", "tensorrt", default=None, metavar="VERSION",
              help="TensorRT release to check against (8.2, 8.5, 8.6, 10.x, 11.x; default: the target's).")
@click.option("--target", default=None, metavar="DEVICE|VERSION",
              help="nano, xavier-nx, xavier, orin-nano, orin (the TensorRT of its JetPack), or a TensorRT version. "
                   "Default: nano.")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]),
              help="Precisions to plan builds for (repeatable; default: every variant). A named precision the "
                   "device refuses is an error.")
@click.option("--workspace-mb", type=click.IntRange(min=1), default=None,
              help="Builder workspace in the memory plan (default: jetcap build's).")
@click.option("--os-reserve-mb", type=click.IntRange(min=0), default=None,
              help="RAM the OS keeps on the device (default: the device's headless figure; add ~1000 for a desktop).")
@click.option("--memory-mb", "ram_mb", type=click.IntRange(min=1), default=None, help="Device RAM (default: the device's).")
@click.option("--tactic-libraries/--no-tactic-libraries", default=None,
              help="Count cuBLAS/cuDNN in the context memory (default: what that TensorRT loads by default).")
@json_option
def command(bundle, tensorrt, target, precisions, workspace_mb, os_reserve_mb, ram_mb, tactic_libraries, as_json):
    """Check BUNDLE against the ONNX parser, precisions and memory of a TensorRT release / Jetson.

    Exit 0 when nothing blocks the build (warnings are printed), 1 on an error, 2 on a bad bundle or usage.
    """
    from jetcap.check import preflight_bundle

    report = preflight_bundle(bundle, tensorrt=tensorrt, target=target, precisions=list(precisions) or None,
                              workspace_mb=workspace_mb, os_reserve_mb=os_reserve_mb, ram_mb=ram_mb,
                              tactic_libraries=tactic_libraries)
    if as_json:
        echo_json(report.to_json())
    else:
        click.echo(report.to_text())
    if report.exit_code():
        raise click.exceptions.Exit(report.exit_code())
