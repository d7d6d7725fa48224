"""Task-level inputs from a user's folder (``jetcap validate --data DIR``) (Python 3.6).

The reference for them is PyTorch when ``--checkpoint`` is given, else the bundle's own FP32 graphs
in ONNX Runtime (which were checked against PyTorch at export): on a device without torch this still
tells whether the FP16/INT8 engines say the same as the FP32 model on real data.
"""
import os

import numpy as np

from jetcap.runtime import preprocess
from jetcap.runtime.preprocess import IMAGE_SUFFIXES
from jetcap.runtime.pipeline import CaptionPipeline, ClassifierPipeline, open_onnxruntime, softmax
from jetcap.runtime.sequences import SEQUENCE_SUFFIXES, load_sequence
from jetcap.util.fsio import list_inputs

def task_from_folder(manifest, opts):
    """Task inputs and reference results for the files in ``opts.data``."""
    beam_size = min(3, int(manifest.axes["batch"]["max"]))  # a beam runs in one step call
    if manifest.family == "captioner":
        paths = list_inputs(opts.data, IMAGE_SUFFIXES, opts.samples)
        images = preprocess.load_images(paths, manifest.preprocessing)
        names = [os.path.basename(p) for p in paths]
        if opts.checkpoint:
            from jetcap.validate.live import load_reference_subject, torch_task_reference

            subject = load_reference_subject(manifest, opts.checkpoint, opts.checkpoint_options)
            ref = torch_task_reference(subject, manifest, images=images, beam_size=beam_size)
            source = "{} ({} images), PyTorch reference".format(opts.data, len(paths))
        else:
            runners = open_onnxruntime(manifest, "fp32")
            for r in runners.values():
                r.activate()
            pipeline = CaptionPipeline(manifest, runners)
            ref = {"greedy": [h.tokens for h in pipeline.caption(images)],
                   "beam": [h.tokens for h in pipeline.caption(images, beam_size=beam_size)]}
            source = "{} ({} images), ONNX Runtime FP32 reference".format(opts.data, len(paths))
        return {"source": source, "names": names, "images": images, "greedy": ref["greedy"], "beam": ref["beam"],
                "beam_size": beam_size}
    paths = list_inputs(opts.data, SEQUENCE_SUFFIXES, opts.samples)
    runners = open_onnxruntime(manifest, "fp32")
    pipeline = ClassifierPipeline(manifest, runners)
    sequences = [pipeline.check(load_sequence(p, width=pipeline.width), os.path.basename(p)) for p in paths]
    if opts.checkpoint:
        from jetcap.validate.live import load_reference_subject, torch_task_reference

        subject = load_reference_subject(manifest, opts.checkpoint, opts.checkpoint_options)
        probs = torch_task_reference(subject, manifest, sequences=sequences)["probs"]
        source = "{} ({} sequences), PyTorch reference".format(opts.data, len(paths))
    else:
        runners["model"].activate()
        probs = [softmax(runners["model"].infer({"sequence": s[None]})["logits"])[0] for s in sequences]
        source = "{} ({} sequences), ONNX Runtime FP32 reference".format(opts.data, len(paths))
    return {"source": source, "names": [os.path.basename(p) for p in paths], "sequences": sequences,
            "probs": [np.asarray(p) for p in probs]}
