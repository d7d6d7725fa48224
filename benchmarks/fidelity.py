"""Measure what each precision variant really reaches on held-out data (docs/VALIDATION.md).

Generates held-out images and gesture sequences from seeds never used in training, then runs
`jetcap validate --data DIR --checkpoint CKPT` (live PyTorch reference) on both sample bundles and
prints one markdown row per backend x precision.

    python benchmarks/fidelity.py --captioner BUNDLE --classifier BUNDLE [--images 500] [--sequences 300]
"""
import argparse
import os
import tempfile
import time

import numpy as np
from PIL import Image

from jetcap import samples
from jetcap.samples import gestures, shapes
from jetcap.validate.gate import ValidateOptions, validate_bundle

HELD_OUT_SEED = 4242  # training uses seeds 0.. and the samples their own; this one is for measurement only


def write_images(folder, count):
    images, captions = shapes.generate(count, HELD_OUT_SEED)
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, "heldout_{:04d}.png".format(i)))
    return captions


def write_sequences(folder, count):
    seqs, labels = gestures.generate(count, HELD_OUT_SEED)
    for i, seq in enumerate(seqs):
        np.save(os.path.join(folder, "heldout_{:04d}.npy".format(i)), np.asarray(seq, dtype=np.float32))
    return labels


def rows(bundle, checkpoint, data, count):
    start = time.time()
    report = validate_bundle(ValidateOptions(bundle, backends=["onnxruntime"], precisions="all",
                                             checkpoint=str(checkpoint), data=data, samples=count))
    out = []
    for check in report.checks:
        if check.graph == "task":
            out.append("| {} | {} | {} | {:.4f} | {} {} | {} |".format(
                os.path.basename(str(bundle)), check.precision, check.name, check.value, check.sense,
                check.threshold, "PASS" if check.passed else "FAIL"))
    return out, time.time() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captioner", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--sequences", type=int, default=300)
    args = parser.parse_args()
    print("| bundle | precision | check | value | threshold | result |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as images, tempfile.TemporaryDirectory() as sequences:
        write_images(images, args.images)
        write_sequences(sequences, args.sequences)
        for bundle, ckpt, data, count in ((args.captioner, samples.captioner_checkpoint(), images, args.images),
                                          (args.classifier, samples.classifier_checkpoint(), sequences,
                                           args.sequences)):
            lines, seconds = rows(bundle, ckpt, data, count)
            print("\n".join(lines))
            print("<!-- {} took {:.0f} s -->".format(os.path.basename(str(bundle)), seconds))


if __name__ == "__main__":
    main()
