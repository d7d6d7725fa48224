"""``jetcap caption``: caption images with a bundle, without torch (Python 3.6)."""
import click

from jetcap.commands.options import (backend_option, echo_json, json_option, log, max_memory_option,
                                     precision_option, tsv_field)


@click.command("caption")
@click.argument("bundle", type=click.Path(file_okay=False))
@click.argument("images", nargs=-1, required=True, type=click.Path())
@backend_option
@precision_option
@click.option("--beam", type=click.IntRange(min=1), default=None,
              help="Beam width; 1 is greedy [default: the bundle's, normally 1].")
@click.option("--max-len", type=click.IntRange(min=1), default=None,
              help="Most words per caption, <end> included [default: the bundle's].")
@click.option("--attention-map", type=click.Path(dir_okay=False), default=None, metavar="OUT.png",
              help="Write a PNG grid of the image with each word's attention overlaid (word as title).  With "
                   "several images, one file per image: OUT_<stem>.png, e.g. maps_cat.png for maps.png and "
                   "cat.jpg (images sharing a stem are refused).")
@click.option("--engine-cache", type=click.Path(file_okay=False), default=None,
              help="TensorRT engine cache directory [default: BUNDLE/engines].")
@max_memory_option
@click.option("-v", "--verbose", is_flag=True, help="Also log the memory estimate and resident-memory growth.")
@json_option
def command(bundle, images, backend, precision, beam, max_len, attention_map, engine_cache, max_memory_mb, verbose,
            as_json):
    """Caption IMAGES with the captioner BUNDLE (ONNX Runtime or TensorRT; no PyTorch needed).

    Prints IMAGE<TAB>CAPTION per image on stdout and the backend, precision and timing on stderr;
    --json prints per image {image, caption, tokens, score, backend, precision, latency_ms}.  Images are
    preprocessed as the bundle's manifest says and batched up to the bundle's largest batch (int8-cpu: one
    image per call, so that no caption depends on its neighbours).
    Exit 0 on success, 2 on bad input (unreadable/oversized image, not a captioner bundle, too little memory).
    """
    from jetcap.errors import UsageError
    from jetcap.runtime.attention_map import attention_map_paths, save_attention_map
    from jetcap.runtime.decoder_protocol import DecoderProtocol
    from jetcap.runtime.inference import caption_images, read_images
    from jetcap.runtime.manifest import Manifest
    from jetcap.runtime.session import expect_family, open_bundle
    from jetcap.util.fsio import check_output_file

    manifest = Manifest.load(bundle)
    expect_family(manifest, "captioner", command="predict")
    if attention_map and DecoderProtocol.from_manifest(manifest).attention is None:
        raise UsageError("--attention-map needs attention weights, but this bundle's decoder step has no attention "
                         "output")
    map_paths = attention_map_paths(attention_map, images) if attention_map else None
    for path in map_paths or ():
        check_output_file(path, "--attention-map", keep_out_of=[bundle], suffixes=(".png",),
                          not_any_of=dict((image, "one of the inputs") for image in images))
    batch = read_images(images, manifest.preprocessing, keep_originals=bool(map_paths))
    with open_bundle(manifest, backend=backend, precision=precision, engine_cache=engine_cache,
                     max_memory_mb=max_memory_mb, log=log if verbose else None) as session:
        results, hypotheses = caption_images(session, batch, beam_size=beam, max_len=max_len)
        image_batch = session.caption_pipeline().image_batch
    if as_json:
        echo_json(results)
    else:
        for result in results:
            click.echo("{}\t{}".format(tsv_field(result["image"]), tsv_field(result["caption"])))
    if map_paths:
        vocab = manifest.vocabulary()
        image_size = manifest.preprocessing.get("image_size")
        for path, original, hypothesis in zip(map_paths, batch.originals, hypotheses):
            words = [vocab.itos[t] for t in hypothesis.tokens]
            save_attention_map(path, original, words, hypothesis.alphas, image_size=image_size)
            log("attention map: " + path)
    total_ms = sum(r["latency_ms"] for r in results)
    log("{}: {} image(s) in batches of up to {}, {:.1f} ms per image (total {:.1f} ms, loading {:.2f} s)".format(
        session.describe(), len(results), image_batch, total_ms / len(results), total_ms,
        session.load_seconds))
