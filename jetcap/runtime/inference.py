"""The work behind ``jetcap caption`` and ``jetcap predict``, as plain functions (Python 3.6, no torch).

Inputs are read and checked against the bundle *before* any graph is loaded, so a bad file costs
nothing; then :func:`caption_images` / :func:`predict_sequences` run a
:class:`jetcap.runtime.session.BundleSession` and return one JSON-ready dict per input.
"""
import os
import time

import numpy as np

from jetcap.errors import UsageError
from jetcap.runtime import preprocess
from jetcap.runtime.sequences import check_sequence, load_sequence
from jetcap.runtime.session import sequence_limits


def _require_file(path, what):
    path = str(path)
    if not os.path.exists(path):
        raise UsageError("{} not found: {}".format(what, path))
    if not os.path.isfile(path):
        raise UsageError("{} is not a file: {}".format(what, path))
    return path


class ImageBatch(object):
    """Images read for captioning.

    Attributes:
        names: the paths as given.
        arrays: float32 NCHW batch, preprocessed as the manifest says.
        originals: the decoded RGB PIL images (only when asked for, e.g. for attention maps), else None.
    """

    def __init__(self, names, arrays, originals):
        self.names = names
        self.arrays = arrays
        self.originals = originals

    def __len__(self):
        return len(self.names)


def read_images(paths, preprocessing, max_pixels=preprocess.DEFAULT_MAX_PIXELS, keep_originals=False):
    """Open, check and preprocess every image; UsageError naming the first bad one.

    Args:
        paths: image files.
        preprocessing: the manifest's ``preprocessing`` entry.
        max_pixels: refuse images with more pixels than this (checked from the header, before decoding).
        keep_originals: keep the decoded images (needed to draw attention maps).
    """
    if not paths:
        raise UsageError("no images given")
    if not preprocessing:
        raise UsageError("the bundle's manifest has no preprocessing entry (not a captioner bundle?)")
    names, arrays, originals = [], [], []
    for path in paths:
        image = preprocess.open_image(_require_file(path, "image"), max_pixels)
        arrays.append(preprocess.preprocess_image(image, preprocessing))
        names.append(str(path))
        if keep_originals:
            originals.append(image)
    return ImageBatch(names, np.stack(arrays).astype(np.float32), originals if keep_originals else None)


def caption_images(session, images, beam_size=None, max_len=None):
    """Caption an :class:`ImageBatch`, batching up to the bundle's largest batch.

    Args:
        session: an open captioner :class:`jetcap.runtime.session.BundleSession`.
        images: the :class:`ImageBatch`.
        beam_size: beam width (default: the manifest's ``decoding.beam_size``, else 1; 1 is greedy).
        max_len: most decoding steps (default: the manifest's ``decoding.max_len``).
    Returns:
        ``(results, hypotheses)``: per image ``{image, caption, tokens, score, backend, precision,
        latency_ms}`` (latency: its batch's encoder + decoding time divided by the batch's images) and
        the :class:`jetcap.runtime.decoding.Hypothesis` objects (with the attention weights).
    """
    pipeline = session.caption_pipeline()
    decoding = session.manifest.decoding
    beam_size = int(beam_size or decoding.get("beam_size") or 1)
    max_len = int(max_len or decoding.get("max_len") or 20)
    if beam_size < 1 or max_len < 1:
        raise UsageError("beam size and max length must be at least 1")
    results, hypotheses = [], []
    for start in range(0, len(images), pipeline.image_batch):
        chunk = images.arrays[start:start + pipeline.image_batch]
        began = time.time()
        found = pipeline.caption(chunk, beam_size=beam_size, max_len=max_len)
        latency_ms = (time.time() - began) * 1000.0 / len(chunk)
        for offset, hypothesis in enumerate(found):
            results.append({
                "image": images.names[start + offset],
                "caption": pipeline.text(hypothesis),
                "tokens": [int(t) for t in hypothesis.tokens],
                "score": float(hypothesis.score),
                "backend": session.backend,
                "precision": session.precision,
                "latency_ms": round(latency_ms, 3),
            })
        hypotheses.extend(found)
    return results, hypotheses


def read_sequences(paths, manifest):
    """Load and check every sequence file against a classifier bundle; UsageError naming the first bad one.

    Returns:
        ``[(name, float32 (T, F) array)]``.
    """
    if not paths:
        raise UsageError("no sequence files given")
    width, min_len, max_len = sequence_limits(manifest)
    out = []
    for path in paths:
        name = str(path)
        array = load_sequence(_require_file(path, "sequence file"), max_len=max_len, width=width)
        out.append((name, check_sequence(array, os.path.basename(name), width=width, max_len=max_len,
                                         min_len=min_len)))
    return out


def predict_sequences(session, sequences, top=3):
    """Classify ``[(name, (T, F) array)]`` one by one.

    Returns:
        per sequence ``{file, label, index, probabilities {label: p}, top [{label, probability}], backend,
        precision, latency_ms}``; ``top`` holds the ``top`` most probable classes, best first.
    """
    pipeline = session.classifier_pipeline()
    results = []
    for name, sequence in sequences:
        began = time.time()
        prediction = pipeline.predict(sequence, os.path.basename(name))
        latency_ms = (time.time() - began) * 1000.0
        ranked = sorted(prediction["probabilities"].items(), key=lambda item: -item[1])[:max(1, int(top))]
        results.append({
            "file": name,
            "label": prediction["label"],
            "index": prediction["index"],
            "probabilities": prediction["probabilities"],
            "top": [{"label": label, "probability": p} for label, p in ranked],
            "backend": session.backend,
            "precision": session.precision,
            "latency_ms": round(latency_ms, 3),
        })
    return results
