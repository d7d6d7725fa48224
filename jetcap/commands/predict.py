"""``jetcap predict``: classify keypoint sequences with a bundle, without torch (Python 3.6)."""
import click

from jetcap.commands.options import (backend_option, echo_json, json_option, log, max_memory_option,
                                     precision_option, tsv_field)


@click.command("predict")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("files", nargs=-1, required=True, type=click.Path())
@backend_option
@precision_option
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of the most probable classes to print.")
@click.option("--engine-cache", type=click.Path(file_okay=False), default=None,
              help="TensorRT engine cache directory [default: BUNDLE/engines].")
@max_memory_option
@click.option("-v", "--verbose", is_flag=True, help="Also log the memory estimate and resident-memory growth.")
@json_option
def command(bundle, files, backend, precision, top, engine_cache, max_memory_mb, verbose, as_json):
    """Classify keypoint sequences FILES (.npy or JSON) with the classifier BUNDLE.

    A sequence is (T, F), or (T, hands, joints, xyz) and the like with F values per frame (flattened
    row-major, as ``x.reshape(T, -1)``).

    Prints FILE<TAB>LABEL<TAB>top probabilities per file on stdout and the backend, precision and timing
    on stderr; --json prints per file {file, label, index, probabilities, top, backend, precision,
    latency_ms}.  A sequence longer than the bundle's largest T (its T axis), of the wrong
    width or with NaN/Inf values is refused (exit 2) before the model is loaded.
    """
    from jetcap.runtime.inference import predict_sequences, read_sequences
    from jetcap.runtime.manifest import Manifest
    from jetcap.runtime.session import expect_family, open_bundle

    manifest = Manifest.load(bundle)
    expect_family(manifest, "classifier", command="caption")
    sequences = read_sequences(files, manifest)
    with open_bundle(manifest, backend=backend, precision=precision, engine_cache=engine_cache,
                     max_memory_mb=max_memory_mb, log=log if verbose else None) as session:
        results = predict_sequences(session, sequences, top=top)
    if as_json:
        echo_json(results)
    else:
        for result in results:
            click.echo("{}\t{}\t{}".format(tsv_field(result["file"]), tsv_field(result["label"]), " ".join(
                "{}={:.4f}".format(tsv_field(entry["label"]), entry["probability"]) for entry in result["top"])))
    total_ms = sum(r["latency_ms"] for r in results)
    log("{}: {} sequence(s), {:.2f} ms per sequence (loading {:.2f} s)".format(
        session.describe(), len(results), total_ms / len(results), session.load_seconds))
