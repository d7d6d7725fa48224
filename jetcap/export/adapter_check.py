"""Does the adapter reproduce the user's decoder?  Checked against the decoder's own ``forward``.

The step graph is the adapter calling the user's modules; a wrong wiring (another concatenation
order, a gate the adapter does not know) would give a bundle that agrees with itself and not with
the model.  So export runs the user's own teacher-forced ``forward`` (Show-Attend-Tell decoders:
``decoder(encoder_out, captions, caption_lengths)`` or ``decoder(features, captions)``; an adapter file
may define ``teacher_forced(model, images, captions)``) and replays the same words through the
adapter's step: the per-step scores must agree, fed either the given words (teacher forcing) or the
forward's own previous argmax (decoders whose eval-mode forward runs free).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from jetcap.export.onnx_graph import ExportError
from jetcap.util.lazy import require

torch = require("torch")
F = torch.nn.functional

CAPTION_LEN = 6
TOLERANCE = 1e-4


def _forward_scores(adapter, model, images, captions) -> Optional[Any]:
    """``(B, L', V)`` scores of the user's own forward, or None with the reason in ``adapter.notes``."""
    custom = getattr(adapter, "teacher_forced", None)
    with torch.no_grad():
        if custom is not None:
            return custom(model, images, captions)
        decoder = getattr(adapter, "decoder", None)
        encoder = getattr(adapter, "encoder", None)
        if decoder is None or encoder is None:
            return None
        raw = encoder(images)
        lengths = torch.full((captions.shape[0], 1), captions.shape[1], dtype=torch.int64)
        errors: List[str] = []
        for args in ((raw, captions, lengths), (raw, captions, lengths.squeeze(1)), (raw, captions)):
            try:
                out = decoder(*args)
            except Exception as exc:  # noqa: BLE001 -- another signature; reported if none fits
                errors.append("{}: {}".format(type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip()
                                              else ""))
                continue
            scores = out[0] if isinstance(out, (tuple, list)) else out
            if not isinstance(scores, torch.Tensor) or scores.dim() != 3:
                errors.append("forward returned no (batch, steps, vocab) scores")
                continue
            if isinstance(out, (tuple, list)) and len(out) >= 5 and isinstance(out[4], torch.Tensor) \
                    and out[4].dim() == 1 and out[4].dtype == torch.int64:
                order = out[4]  # Show-Attend-Tell sorts the batch by caption length: undo it
                unsorted = torch.empty_like(scores)
                unsorted[order] = scores
                scores = unsorted
            return scores
        adapter.notes.append("decoder.forward could not be called as a teacher-forced forward ({})".format(
            "; ".join(errors[:2])))
        return None


def _replay(adapter, model, images, words_per_step: List[Any]) -> Any:
    """Scores ``(B, steps, V)`` of the adapter's step fed ``words_per_step``."""
    with torch.no_grad():
        tensors = adapter.encode(model, images)
        names = list(adapter.state) + list(adapter.context)
        out = []
        for words in words_per_step:
            result = adapter.step(model, words, **{n: tensors[n] for n in names})
            scores = result.get("scores", result.get("log_probs"))
            out.append(scores)
            for name in adapter.state:
                tensors[name] = result[name]
        return torch.stack(out, dim=1)


def check_adapter_against_forward(adapter, model, image_size: int, vocab_size: int, start_id: int,
                                  seed: int = 0) -> Dict[str, Any]:
    """A check record; raises ExportError when the adapter and the user's forward disagree."""
    rng = np.random.RandomState(seed)
    images = torch.from_numpy(rng.normal(0.0, 1.0, size=(2, 3, image_size, image_size)).astype(np.float32))
    captions = torch.from_numpy(rng.randint(0, vocab_size, size=(2, CAPTION_LEN)).astype(np.int64))
    captions[:, 0] = start_id
    try:
        reference = _forward_scores(adapter, model, images, captions)
    except Exception as exc:  # the user's teacher_forced(): one line
        raise ExportError("the adapter's teacher_forced() failed: {}: {}".format(type(exc).__name__, exc)) from None
    if reference is None:
        return {"check": "adapter reproduces the model's own forward", "status": "not checked",
                "detail": "; ".join(adapter.notes[-1:]) or "the model has no teacher-forced forward jetcap can call"}
    steps = reference.shape[1]
    ref = F.log_softmax(reference.float(), dim=-1)
    scale = max(1.0, float(ref.abs().max()))
    teacher = _replay(adapter, model, images, [captions[:, t] for t in range(steps)])
    diff_teacher = float((F.log_softmax(teacher, dim=-1) - ref).abs().max())
    if diff_teacher <= TOLERANCE * scale:
        return {"check": "adapter reproduces the model's own forward", "status": "passed",
                "detail": "teacher-forced, {} steps: max abs log-prob diff {:.3g}".format(steps, diff_teacher)}
    free_words = [captions[:, 0]] + [reference[:, t - 1].argmax(dim=-1) for t in range(1, steps)]
    free = _replay(adapter, model, images, free_words)
    diff_free = float((F.log_softmax(free, dim=-1) - ref).abs().max())
    if diff_free <= TOLERANCE * scale:
        return {"check": "adapter reproduces the model's own forward", "status": "passed",
                "detail": "free-running, {} steps: max abs log-prob diff {:.3g}".format(steps, diff_free)}
    raise ExportError(
        "the {} does not reproduce your decoder's own forward (max abs log-prob diff {:.3g} teacher-forced, {:.3g} "
        "free-running)".format(adapter.name, diff_teacher, diff_free),
        hint="write an adapter file for your decoder (docs/EXPORT.md, 'Adapters') and pass --adapter FILE.py")
