"""Caption agreement of a bundle's INT8 variants (``int8`` Q/DQ, ``int8-cpu``) on real-distribution images.

Writes ``--images`` (default 200) images of the realistic captioners' distribution
(``jetcap.samples.shapes.generate`` at seed 20261203, the seed of the 48 test images that
``benchmarks/realistic_captioner.py`` / ``realistic_sat.py`` write to ``OUT/images``, past those 48:
the export calibrates on and checks those, so they are never counted here; resized to ``--size`` the
same way) and runs
``jetcap validate --data DIR --checkpoint CKPT`` on ONNX Runtime (live PyTorch FP32 reference: the
task-level checks are caption agreement with PyTorch) for fp32 and each ``--precision``; also counts how
many greedy captions of each equal ONNX Runtime FP32's.  Prints markdown rows.

    .venv/bin/python benchmarks/int8_agreement.py BUNDLE CKPT [--precision int8-cpu] [--images 200]
        [--size 224] [--trust-pickle --code-path DIR --word-map FILE] [--threads 2]
"""
import argparse
import os
import sys
import tempfile
import time

from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jetcap.runtime.manifest import Manifest  # noqa: E402
from jetcap.runtime.pipeline import CaptionPipeline, open_onnxruntime  # noqa: E402
from jetcap.runtime.preprocess import load_images  # noqa: E402
from jetcap.samples import shapes  # noqa: E402
from jetcap.util.fsio import list_inputs  # noqa: E402
from jetcap.validate.gate import ValidateOptions, validate_bundle  # noqa: E402

SEED = 20261203
TEST_IMAGES = 48  # the builders' OUT/images (calibration and the export's task checks): skipped


def write_images(folder, count, size):
    images, _ = shapes.generate(TEST_IMAGES + count, SEED)
    for i, image in enumerate(images[TEST_IMAGES:]):
        Image.fromarray(image).resize((size, size), Image.BILINEAR).save(
            os.path.join(folder, "agree_{:04d}.png".format(i)))


def ort_greedy(manifest, precision, images, threads):
    runners = open_onnxruntime(manifest, precision, threads=threads)
    for runner in runners.values():
        runner.activate()
    try:
        return [h.tokens for h in CaptionPipeline(manifest, runners).caption(images)]
    finally:
        for runner in runners.values():
            runner.deactivate()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("checkpoint")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--precision", action="append", choices=["int8", "int8-cpu", "fp16"],
                        help="variants to measure besides fp32 (repeat; default int8-cpu)")
    parser.add_argument("--size", type=int, default=224, help="image side written (the bundle resizes anyway)")
    parser.add_argument("--trust-pickle", action="store_true", help="the checkpoint pickles whole modules")
    parser.add_argument("--code-path", default=None, help="the training code the pickles need")
    parser.add_argument("--word-map", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    variants = args.precision or ["int8-cpu"]
    source = {"trust_pickle": args.trust_pickle, "code_path": args.code_path, "word_map": args.word_map}
    started = time.time()
    with tempfile.TemporaryDirectory() as folder:
        write_images(folder, args.images, args.size)
        report = validate_bundle(ValidateOptions(args.bundle, backends=["onnxruntime"],
                                                 precisions=["fp32"] + variants, checkpoint=args.checkpoint,
                                                 checkpoint_options={k: v for k, v in source.items() if v},
                                                 data=folder, preflight=False))
        print("| precision | check (vs PyTorch FP32, {} images) | value | threshold | result |".format(args.images))
        print("|---|---|---|---|---|")
        for check in report.checks:
            if check.graph == "task":
                print("| {} | {} | {:.4f} | {} {} | {} |".format(check.precision, check.name, check.value, check.sense,
                                                              check.threshold, "PASS" if check.passed else "FAIL"))
        manifest = Manifest.load(args.bundle)
        paths = list_inputs(folder, (".png",), None)
        images = load_images(paths, manifest.preprocessing)
        fp32 = ort_greedy(manifest, "fp32", images, args.threads)
        print()
        for variant in variants:
            other = ort_greedy(manifest, variant, images, args.threads)
            same = sum(1 for a, b in zip(fp32, other) if a == b)
            print("{} greedy captions equal to ONNX Runtime FP32's: {}/{} ({:.1%})".format(
                variant, same, len(fp32), same / float(len(fp32))))
        tensor_failures = [c for c in report.checks if c.graph != "task" and not c.passed]
        print("tensor-level checks failed: {} (of {})".format(len(tensor_failures),
                                                            sum(1 for c in report.checks if c.graph != "task")))
        for check in tensor_failures[:5]:
            print("  {} {} {}: {}".format(check.precision, check.graph, check.name, check.detail))
    print("<!-- {:.0f} s -->".format(time.time() - started))


if __name__ == "__main__":
    main()
