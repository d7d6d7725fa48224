"""How often a captioner's own FP32 captions change under small input noise, next to its reduced-precision
variants: the yardstick for "N % identical captions".

A variant's caption agreement with FP32 is bounded by how stable the model's captions are under a
perturbation of the same size: a model whose greedy caption flips on 4 % of images when 0.5 % noise is
added to the pixels cannot keep 99 % of its captions through any quantization that perturbs its features
as much.  This script puts both on one axis, the encoder outputs' cosine to FP32 (mean over images):

- FP32 (ONNX Runtime) on the images with Gaussian pixel noise of each ``--noise`` level (a share of the
  0..255 range, added before normalisation, seeded: :func:`jetcap.validate.stability.pixel_noise`, as
  the export's ``task_data.fp32_stability`` record), against FP32 on the clean images;
- each ``--precision`` variant on the clean images, against FP32.

Images: the 200 of ``benchmarks/int8_agreement.py`` (the same generator, seed and skip, so the figures
line up with its agreement).  Prints a markdown table.

    .venv/bin/python benchmarks/caption_stability.py BUNDLE [--precision int8] [--images 200]
        [--size 256] [--noise 0.0025 --noise 0.005 ...] [--threads 2]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from int8_agreement import write_images  # noqa: E402

from jetcap.runtime import decoding  # noqa: E402
from jetcap.runtime.manifest import Manifest  # noqa: E402
from jetcap.runtime.pipeline import CaptionPipeline, open_onnxruntime  # noqa: E402
from jetcap.runtime.preprocess import load_images  # noqa: E402
from jetcap.util.fsio import list_inputs  # noqa: E402
from jetcap.validate.stability import pixel_noise  # noqa: E402

NOISE_SEED = 7  # per level: NOISE_SEED + its index


class Variant(object):
    """One variant's runners, open for the whole run."""

    def __init__(self, manifest, precision, threads):
        self.runners = open_onnxruntime(manifest, precision, threads=threads)
        for runner in self.runners.values():
            runner.activate()
        self.pipeline = CaptionPipeline(manifest, self.runners)

    def run(self, images):
        """(greedy token lists, {encoder output: [batch, ...] array}); each image encoded once."""
        pipeline = self.pipeline
        vocab = pipeline.vocab
        max_len = int(pipeline.manifest.decoding.get("max_len", 20))
        outputs, tokens = {}, []
        for start in range(0, len(images), pipeline.max_batch):
            chunk = images[start:start + pipeline.max_batch]
            encoded = pipeline.encode(chunk)
            for name, value in encoded.items():
                outputs.setdefault(name, []).append(np.asarray(value, dtype=np.float64))
            tokens.extend(h.tokens for h in decoding.greedy_decode(
                pipeline.decoder_session(encoded), len(chunk), vocab.start_id, vocab.end_id, max_len))
        return tokens, {name: np.concatenate(parts) for name, parts in outputs.items()}

    def close(self):
        for runner in self.runners.values():
            runner.deactivate()


def cosines(outputs, reference):
    """Mean over images of each encoder output's cosine to the reference."""
    result = {}
    for name, ref in reference.items():
        a = outputs[name].reshape(len(ref), -1)
        b = ref.reshape(len(ref), -1)
        per_image = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
        result[name] = float(per_image.mean())
    return result


def row(label, tokens, reference_tokens, cos):
    same = sum(1 for a, b in zip(tokens, reference_tokens) if a == b)
    return "| {} | {} | {}/{} ({:.1%}) |".format(
        label, ", ".join("{} {:.4f}".format(k, v) for k, v in sorted(cos.items())), same, len(tokens),
        same / float(len(tokens)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--precision", action="append", default=[], help="variants to place on the same axis")
    parser.add_argument("--noise", action="append", type=float, default=[],
                        help="pixel noise std as a share of 0..255 (repeat; default 0.0025 0.005 0.01 0.02)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    levels = args.noise or [0.0025, 0.005, 0.01, 0.02]
    started = time.time()
    manifest = Manifest.load(args.bundle)
    with tempfile.TemporaryDirectory() as folder:
        write_images(folder, args.images, args.size)
        images = load_images(list_inputs(folder, (".png",), None), manifest.preprocessing)
    fp32 = Variant(manifest, "fp32", args.threads)
    try:
        clean_tokens, clean_outputs = fp32.run(images)
        print("| perturbation | encoder outputs' cosine to FP32 (mean over images) | greedy captions as FP32's |")
        print("|---|---|---|")
        for i, level in enumerate(levels):
            tokens, outputs = fp32.run(pixel_noise(images, level, manifest.preprocessing, NOISE_SEED + i))
            print(row("FP32, pixel noise {:.2%}".format(level), tokens, clean_tokens, cosines(outputs, clean_outputs)))
            sys.stdout.flush()
    finally:
        fp32.close()
    for precision in args.precision:
        variant = Variant(manifest, precision, args.threads)
        try:
            tokens, outputs = variant.run(images)
        finally:
            variant.close()
        print(row("{}, clean images".format(precision), tokens, clean_tokens, cosines(outputs, clean_outputs)))
    print("<!-- {} images, {:.0f} s -->".format(len(images), time.time() - started))


if __name__ == "__main__":
    main()
