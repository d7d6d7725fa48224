"""Task-level inputs from a user's folder (``jetcap validate --data DIR``) (Python 3.6).

The reference for them is PyTorch when ``--checkpoint`` is given, else the bundle's own FP32 graphs
in ONNX Runtime (which were checked against PyTorch at export): on a device without torch this still
tells whether the FP16/INT8 engines say the same as the FP32 model on real data.
"""
import os

import numpy as np

from jetcap.errors import UsageError
from jetcap.runtime import preprocess
from jetcap.runtime.preprocess import IMAGE_SUFFIXES
from jetcap.runtime.pipeline import CaptionPipeline, ClassifierPipeline, open_onnxruntime
from jetcap.runtime.sequences import SEQUENCE_SUFFIXES, SequenceLengthError, load_sequence
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
    runners = open_onnxruntime(manifest, "fp32")
    pipeline = ClassifierPipeline(manifest, runners)
    paths, sequences, skipped = _sequences_in_range(pipeline, list_inputs(opts.data, SEQUENCE_SUFFIXES), opts.samples)
    if opts.checkpoint:
        from jetcap.validate.live import load_reference_subject, torch_task_reference

        subject = load_reference_subject(manifest, opts.checkpoint, opts.checkpoint_options)
        probs = torch_task_reference(subject, manifest, sequences=sequences)["probs"]
        source = "{} ({} sequences{}), PyTorch reference".format(opts.data, len(paths), skipped)
    else:
        runners["model"].activate()
        probs = [pipeline.run_probabilities(s[None])[0] for s in sequences]
        source = "{} ({} sequences{}), ONNX Runtime FP32 reference".format(opts.data, len(paths), skipped)
    return {"source": source, "names": [os.path.basename(p) for p in paths], "sequences": sequences,
            "probs": [np.asarray(p) for p in probs]}


def _sequences_in_range(pipeline, paths, limit):
    """The first ``limit`` sequences (all: None) whose length the bundle takes, their paths, and a note of the
    files skipped for their length ('' if none).

    A folder of real recordings holds clips longer (or shorter) than the bundle's T range; they say nothing
    about the variants' agreement and are skipped, counted in the report's source. A file that cannot be read
    or has the wrong width is still a UsageError: the folder is not what the user thinks it is.
    """
    kept, sequences, outside = [], [], []
    for path in paths:
        if limit and len(kept) >= limit:
            break
        name = os.path.basename(path)
        try:
            # a .npy's length is read from its header: a long recording is skipped without being read
            sequence = pipeline.check(load_sequence(path, max_len=pipeline.max_len, width=pipeline.width), name)
        except SequenceLengthError:
            outside.append(name)
            continue
        kept.append(path)
        sequences.append(sequence)
    bounds = "T {}..{}".format(pipeline.min_len, pipeline.max_len)
    if not kept:
        raise UsageError("no sequence in the folder has a length the bundle takes ({}): {} file(s) outside it, "
                         "e.g. {}".format(bounds, len(outside), outside[0]),
                         hint="trim or split the clips, or re-export with --max-len/--min-len")
    if not outside:
        return kept, sequences, ""
    return kept, sequences, "; {} file(s) skipped, their length outside the bundle's {}: {}{}".format(
        len(outside), bounds, ", ".join(outside[:3]), ", ..." if len(outside) > 3 else "")
