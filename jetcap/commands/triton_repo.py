"""``jetcap triton-repo``: write a Triton Inference Server model repository from a bundle."""
import click

from jetcap.commands.options import echo_json, json_option, log, precision_option


@click.command("triton-repo")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt", "python", "python-bls"]),
              default="onnxruntime", show_default=True,
              help="onnxruntime/tensorrt: one Triton model per graph plus a Python model that decodes through "
                   "BLS; python: one Python model running the bundle in-process with ONNX Runtime; python-bls: "
                   "the BLS layout with each graph in a Python model running ONNX Runtime (for a Triton with "
                   "only the Python backend).")
@precision_option
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="max_batch_size of every model [default: the bundle's largest batch].")
@click.option("--instances", type=int, default=1, show_default=True,
              help="Model instances per device (instance_group count, 1 to 64).")
@click.option("--queue-delay-us", type=click.IntRange(min=0), default=500, show_default=True,
              help="Dynamic batcher: most microseconds a request waits for others to batch with.")
@click.option("--engine-cache", type=click.Path(file_okay=False), default=None,
              help="TensorRT engine cache for --backend tensorrt [default: BUNDLE/engines].")
@click.option("--name", default=None, help="Model name prefix [default: the bundle's family].")
@click.option("--force", is_flag=True, help="Replace OUT_DIR when it exists.")
@json_option
def command(bundle, out_dir, backend, precision, max_batch, instances, queue_delay_us, engine_cache, name, force,
            as_json):
    """Write a Triton model repository for BUNDLE to OUT_DIR (atomically: a temporary directory, then a rename).

    Each graph becomes an onnxruntime_onnx or tensorrt_plan model (dynamic batching, dims from the manifest);
    the captioner's data-dependent decoding loop and the classifier's labels live in a Python-backend model
    named after the family, which clients call.  Prints the models written; see docs/TRITON.md.
    """
    from jetcap.triton.repository import RepositoryOptions, write_repository

    options = RepositoryOptions(backend=backend, max_batch=max_batch, instances=instances,
                                queue_delay_us=queue_delay_us, precision=precision, engine_cache=engine_cache,
                                name=name, force=force)
    record = write_repository(bundle, out_dir, options)
    if as_json:
        echo_json(record)
    else:
        for model, entry in sorted(record["models"].items()):
            click.echo("{}\t{}".format(model, entry.get("platform") or "python ({})".format(entry["mode"])))
    log("{}: Triton repository for the {} bundle, entry model {!r}, max_batch_size {}".format(
        out_dir, record["family"], record["entry_model"], record["max_batch_size"]))
