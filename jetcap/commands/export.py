"""``jetcap export``: checkpoint -> ONNX bundle, validated against PyTorch."""
import click

from jetcap.commands.options import (
    echo_json, json_option, log, model_source_options, parse_json_object, parse_models, parse_triple,
)


@click.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Bundle directory to create.")
@click.option("--family", default=None, help="Model family (captioner, classifier); detected by default.")
@click.option("--opset", type=int, default=13, show_default=True,
              help="ONNX opset; 13 is what TensorRT 8.2 (JetPack 4.6) parses.")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True,
              help="torch.onnx exporter: torchscript for opset <= 17, dynamo for opset >= 18 (TensorRT >= 10).")
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8", "int8-cpu"]),
              help="Variants to produce (repeatable); fp32 is always produced.  int8-cpu: dynamic INT8 for "
                   "ONNX Runtime on CPUs (not for TensorRT).")
@click.option("--max-batch", type=int, default=8, show_default=True, help="Largest batch of the dynamic batch axis.")
@click.option("--image-size", type=click.IntRange(min=1), default=None,
              help="Captioner input size (default: the checkpoint's); the profile's opt with --dynamic-image-size.")
@click.option("--dynamic-image-size", is_flag=True,
              help="Captioner: encoder input height/width (and the feature-pixel axis num_pixels) dynamic over "
                   "--min-image-size..--max-image-size; the runtime still resizes to --image-size.  Needs jetcap's "
                   "built-in captioner family without adaptive pooling (grid none); models from your own code "
                   "export at one image size.")
@click.option("--min-image-size", type=click.IntRange(min=1), default=None,
              help="Smallest square input side with --dynamic-image-size [default: max(32, image size / 2)].")
@click.option("--max-image-size", type=click.IntRange(min=1), default=None,
              help="Largest square input side with --dynamic-image-size [default: 2 x image size].")
@click.option("--mean", default=None, metavar="R,G,B",
              help="Captioner input normalisation mean, when the checkpoint does not store it [default: ImageNet, "
                   "with a warning].")
@click.option("--std", default=None, metavar="R,G,B", help="Captioner input normalisation std (see --mean).")
@click.option("--min-len", type=int, default=None, help="Classifier: shortest sequence (default: the shortest the "
                                                        "model accepts).")
@click.option("--opt-len", type=int, default=None, help="Classifier: typical sequence length (profile 'opt').")
@click.option("--max-len", type=int, default=None,
              help="Classifier: longest sequence (default: the positional-encoding length); captioner: the "
                   "decoding limit (default: the checkpoint's, else 20).")
@click.option("--output", default=None, metavar="NAME|INDEX",
              help="Classifier: which forward output holds the logits (a dict key or a position) "
                   "[default: 'logits', else the first (batch, classes) output]; the others are kept.")
@click.option("--input-size", type=int, default=None,
              help="Classifier: features per frame, when neither the checkpoint nor the first layer tells.")
@click.option("--calibration-data", type=click.Path(file_okay=False), default=None,
              help="Folder of images / sequences for INT8 calibration and reference data (default: built-in samples).")
@click.option("--calibration-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="INT8 activation-range calibration.")
@click.option("--calibration-samples", type=int, default=32, show_default=True, help="Calibration inputs to use.")
@click.option("--int8-max-float-fraction", type=float, default=0.25, show_default=True,
              help="INT8: the most of a graph's quantizable MACs the accuracy search may keep in float to meet "
                   "the family's tolerance.")
@click.option("--int8-error-budget", type=float, default=1.0, show_default=True,
              help="INT8: the accuracy search's target as a share of the family's INT8 tolerance (0.5: half).")
@click.option("--task-samples", type=int, default=200, show_default=True,
              help="The most inputs of --calibration-data after the calibration ones on which the export checks "
                   "that each variant's captions / labels are PyTorch's; never fewer than the 16 images / 12 "
                   "sequences the bundle keeps.")
@click.option("--int8-task-samples", type=int, default=100, show_default=True,
              help="INT8: the most inputs of --calibration-data (none of the verdict's) on which the accuracy "
                   "search checks that captions / labels stay PyTorch's.")
@click.option("--no-int8-search", is_flag=True,
              help="INT8: quantize every candidate layer; no accuracy search.")
@click.option("--keep-passing", is_flag=True,
              help="When a variant fails its check, still write the bundle with the variants that passed "
                   "(the failed ones are listed in the manifest and the output; exit 1).")
@click.option("--word-map", type=click.Path(dir_okay=False), default=None, help="Captioner word map: JSON ({word: id}, an id-ordered list, {\"itos\": [...]}) or a "
                   "pickled vocabulary object (vocab.pkl; read only with --trust-pickle).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Classifier labels: a JSON list/map, a classes .npy (no pickle), a text file (one per line) "
                   "or a scikit-learn LabelEncoder pickle (read safely).")
@click.option("--num-heads", type=int, default=None, help="Classifier attention heads, when the checkpoint lacks them.")
@click.option("--backbone", default=None, help="Captioner backbone, when it cannot be inferred.")
@click.option("--grid", type=click.IntRange(min=0), default=None,
              help="Built-in captioner family: side of the pooled feature map (0: no pooling) when the checkpoint "
                   "does not store it [default: 7, with a warning].")
@click.option("--no-simplify", is_flag=True,
              help="Skip graph simplification (onnxslim, and the exact rewrite of attention-weighted sums as MatMul).")
@click.option("--target", default=None, metavar="DEVICE|VERSION",
              help="Device (nano, xavier-nx, xavier, orin-nano, orin) or TensorRT version the bundle is for: "
                   "the TensorRT pre-flight (jetcap check) runs for it at the end [default: nano].")
@click.option("--no-check", is_flag=True, help="Skip that pre-flight.")
@click.option("--force", is_flag=True, help="Replace an existing bundle directory.")
@model_source_options
@json_option
def command(checkpoint, out_dir, family, opset, exporter, precisions, max_batch, image_size, dynamic_image_size,
            min_image_size, max_image_size, mean, std, min_len, opt_len, max_len, output, input_size,
            calibration_data, calibration_method, calibration_samples, int8_max_float_fraction, int8_error_budget,
            task_samples, int8_task_samples, no_int8_search, keep_passing, word_map, labels,
            num_heads, backbone, grid, no_simplify, target, no_check, force, models, model_args, adapter, trust_pickle,
            code_path, as_json):
    """Export CHECKPOINT to an ONNX bundle (graphs, manifest, reference data), checked against PyTorch.

    The model is your own code where jetcap can have it: --model MODULE:NAME (your class, the checkpoint's
    weights), or --trust-pickle for checkpoints that pickle whole modules; otherwise jetcap rebuilds one of
    its built-in families from the tensors (and says so).  Exit 0 on success, 1 when a variant does not
    match PyTorch, 2 on bad input.
    """
    from pathlib import Path

    from jetcap.export import ExportOptions, export_bundle
    from jetcap.export.bundle import PartialBundle

    hints = {}
    if num_heads is not None:
        hints["num_heads"] = num_heads
    if backbone is not None:
        hints["backbone"] = backbone
    if grid is not None:
        hints["grid"] = grid or None
    opts = ExportOptions(
        checkpoint=Path(checkpoint), out_dir=Path(out_dir), family=family, opset=opset, exporter=exporter,
        precisions=tuple(precisions) or ("fp32",), max_batch=max_batch, image_size=image_size,
        dynamic_image_size=dynamic_image_size, image_size_range=(min_image_size, max_image_size),
        seq_len=(min_len, opt_len, max_len), calibration_data=Path(calibration_data) if calibration_data else None,
        calibration_method=calibration_method, calibration_samples=calibration_samples,
        int8_search=not no_int8_search, int8_max_float_fraction=int8_max_float_fraction,
        int8_error_budget=int8_error_budget, int8_task_samples=int8_task_samples, keep_passing=keep_passing,
        task_samples=task_samples,
        trust_pickle=trust_pickle,
        code_path=Path(code_path) if code_path else None, word_map=Path(word_map) if word_map else None,
        labels=Path(labels) if labels else None, hints=hints, simplify=not no_simplify, force=force,
        models=parse_models(models), model_args=parse_json_object(model_args, "--model-args"),
        adapter=Path(adapter) if adapter else None, output=output, input_size=input_size,
        mean=parse_triple(mean, "--mean"), std=parse_triple(std, "--std"), caption_max_len=max_len,
        target=target, preflight=not no_check)
    try:
        if target is not None:  # an unknown device: refused now, not after the whole export
            from jetcap.check.targets import resolve_target

            resolve_target(target=target)
        summary = export_bundle(opts, log=log)
    except PartialBundle as error:  # --keep-passing: the bundle is written, without the failed variants
        if as_json:
            echo_json(dict(error.summary, error=str(error), exit_code=error.exit_code))
            error.json_echoed = True  # json_option prints nothing more
        else:
            _echo_summary(error.summary)
        raise
    if as_json:
        echo_json(summary)
    else:
        _echo_summary(summary)


def _echo_summary(summary):
    click.echo("bundle {} ({}, {}): {}".format(summary["bundle"], summary["family"], summary["source"], ", ".join(
        "{} {}".format(p, "PASS" if ok else "FAIL") for p, ok in summary["validation"].items())))
    if summary.get("failed_variants"):
        click.echo("left out of the bundle (failed their check): {}".format(", ".join(summary["failed_variants"])))
    click.echo("export took {:.1f} s".format(summary["seconds"]["total"]))
