"""Train the sample models that jetcap ships (needs torch and torchvision).

    python -m jetcap.samples.train captioner  [--minutes 60] [--out PATH] [--seed 0] [--steps N]
    python -m jetcap.samples.train classifier [--minutes 30] [--out PATH] [--seed 0] [--steps N]
    python -m jetcap.samples.train samples    [--out DIR]  # (re)write the sample images/sequences/samples.json

Both models are built through the model registry, trained on data generated on the fly
(:mod:`jetcap.samples.shapes`, :mod:`jetcap.samples.gestures`) with a fixed, seeded step schedule
(Adam, linear warm-up, cosine decay), evaluated on held-out data from seeds that training never uses,
and stop early once the held-out target is met.  ``--minutes`` is only a safety limit: a run that
completes its steps (or stops early at an evaluation) is reproducible; one cut off by the clock is
not.  Progress goes to stderr; the final metrics are printed as JSON on stdout.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jetcap.models.registry import get_family
from jetcap.samples import captioner_checkpoint, classifier_checkpoint, gestures, sample_dir, shapes
from jetcap.util.fsio import atomic_path, write_json_atomic

# Training seeds are in [0, 2**31); held-out data sets use seeds at or above 2**31, so they differ.
VALIDATION_SEED = 2 ** 31 + 1  # evaluated during training (early stopping)
TEST_SEED = 2 ** 31 + 2  # evaluated once at the end; reported in the checkpoint
SAMPLE_SEED = 2 ** 31 + 3  # the shipped sample inputs
BN_SEED = 2 ** 31 + 4  # images for re-estimating BatchNorm statistics (training distribution)
SAMPLE_IMAGES = 8
SAMPLE_LENGTHS = (24, 41, 58, 77, 96, 118)  # one per gesture class, in class order

CAPTIONER_CONFIG: Dict[str, Any] = {
    "backbone": "mobilenet_v3_small", "width_mult": 1.0, "grid": None, "image_size": 96,
    "embed_dim": 96, "decoder_dim": 256, "attention_dim": 128, "encoder_dim": 576, "dropout": 0.2,
    "max_len": shapes.MAX_WORDS + 2, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
}
CLASSIFIER_CONFIG: Dict[str, Any] = {
    "input_size": gestures.NUM_FEATURES, "num_classes": len(gestures.CLASSES), "conv_channels": [64, 128],
    "kernel_size": 3, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "max_len": 128, "dropout": 0.2,
    "min_len": gestures.MIN_FRAMES,
}


def log(message: str) -> None:
    """Progress line on stderr."""
    print(message, file=sys.stderr, flush=True)


def train_seed(seed: int, step: int) -> int:
    """Seed of the generated training batch ``step`` of run ``seed`` (always below 2**31)."""
    return (seed * 1000003 + step + 1) % (2 ** 31)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.02) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


# -- captioner ----------------------------------------------------------------------------------------

def image_batch(images: np.ndarray, config: Dict[str, Any]) -> torch.Tensor:
    """uint8 ``(n, H, W, 3)`` -> normalized float ``(n, 3, H, W)`` in channels_last memory format."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["std"]).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def reestimate_batchnorm(module: nn.Module, batches) -> None:
    """Recompute BatchNorm running statistics as plain averages over ``batches`` (forward passes in
    train mode without gradients); MobileNetV3's momentum of 0.01 leaves them far behind the weights
    on short runs.  ``module`` is left in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    module.train()
    for batch in batches:
        module(batch)
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    module.eval()


def captioner_bn_batches(config: Dict[str, Any], images: int = 512, batch_size: int = 64):
    """Batches of training-distribution images for :func:`reestimate_batchnorm`."""
    data, _ = shapes.generate(images, BN_SEED)
    return [image_batch(data[i:i + batch_size], config) for i in range(0, images, batch_size)]


@torch.no_grad()
def caption_accuracy(model, images: np.ndarray, captions: List[str], word_map: Dict[str, int],
                     config: Dict[str, Any], batch_size: int = 128) -> Dict[str, Any]:
    """Greedy captions (the shared decoding of ``model.caption``) compared with the ground truth."""
    itos = {i: w for w, i in word_map.items()}
    model.eval()
    predicted: List[str] = []
    for i in range(0, len(images), batch_size):
        hyps = model.caption(image_batch(images[i:i + batch_size], config), word_map["<start>"],
                             word_map["<end>"], config["max_len"])
        predicted += [" ".join(itos[t] for t in h.tokens) for h in hyps]
    exact = sum(p == c for p, c in zip(predicted, captions))
    errors = [(c, p) for p, c in zip(predicted, captions) if p != c]
    return {"exact_match": exact / len(captions), "images": len(captions), "predicted": predicted,
            "errors": errors[:10]}


def train_captioner(minutes: float = 15.0, out: Optional[str] = None, seed: int = 0, steps: int = 1400,
                    batch_size: int = 64, lr: float = 2e-3, warmup: int = 100, eval_every: int = 200,
                    eval_from: int = 800, val_images: int = 500, test_images: int = 1000,
                    stop_at: float = 0.995) -> Dict[str, Any]:
    """Train the sample captioner and save its checkpoint; returns the final metrics.

    Args:
        minutes: wall-clock safety limit (default 15).
        out: checkpoint path (default the shipped ``captioner.pt``).
        seed: run seed (weights, dropout and training batches).
        steps: length of the step schedule (default 1400 batches).
        batch_size: images per step (default 64).
        lr: peak Adam learning rate (default 2e-3), reached after ``warmup`` steps.
        eval_every, eval_from: validate every ``eval_every`` steps from step ``eval_from`` on.
        val_images, test_images: sizes of the validation and final test sets.
        stop_at: stop early once validation exact-match reaches this fraction (default 0.995).
    """
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    config = dict(CAPTIONER_CONFIG)
    word_map = shapes.word_map()
    config["vocab_size"] = len(word_map)
    model = get_family("captioner").build(config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    pad = word_map["<pad>"]
    val_x, val_y = shapes.generate(val_images, VALIDATION_SEED)
    bn_batches = captioner_bn_batches(config)
    start = time.time()
    deadline = start + minutes * 60.0
    best: Dict[str, Any] = {"exact_match": -1.0}
    losses: List[float] = []
    step = 0
    stopped = "steps"
    while step < steps:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        images, captions = shapes.generate(batch_size, train_seed(seed, step))
        tokens = torch.from_numpy(shapes.encode(captions, word_map, config["max_len"]))
        scores, _ = model(image_batch(images, config), tokens)
        loss = F.cross_entropy(scores.reshape(-1, scores.size(-1)), tokens[:, 1:].reshape(-1), ignore_index=pad)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            elapsed = time.time() - start
            log("step {:5d}  loss {:.4f}  lr {:.2e}  {:.0f} img/s  {:.1f} min".format(
                step, float(np.mean(losses[-50:])), lr_at(step - 1, steps, lr, warmup),
                step * batch_size / elapsed, elapsed / 60.0))
        last = step == steps
        out_of_time = time.time() > deadline
        if (step >= eval_from and step % eval_every == 0) or last or out_of_time:
            candidate = copy.deepcopy(model)
            reestimate_batchnorm(candidate.encoder, bn_batches)
            result = caption_accuracy(candidate, val_x, val_y, word_map, config)
            log("step {:5d}  validation exact match {:.3f} ({} images)  e.g. {}".format(
                step, result["exact_match"], result["images"], result["errors"][:2]))
            if result["exact_match"] >= best["exact_match"]:
                best = {"exact_match": result["exact_match"], "step": step, "model": candidate}
            if result["exact_match"] >= stop_at:
                stopped = "target"
                break
        if out_of_time:
            stopped = "time"
            log("time limit of {} min reached at step {}".format(minutes, step))
            break
    elapsed = time.time() - start
    model = best["model"]
    test_x, test_y = shapes.generate(test_images, TEST_SEED)
    test = caption_accuracy(model, test_x, test_y, word_map, config)
    metrics = {
        "test_exact_match": test["exact_match"], "test_images": test["images"], "test_seed": TEST_SEED,
        "validation_exact_match": best["exact_match"], "validation_images": val_images,
        "validation_seed": VALIDATION_SEED, "best_step": best["step"], "steps_run": step,
        "steps_scheduled": steps, "stopped_by": stopped, "images_seen": step * batch_size,
        "train_loss": float(np.mean(losses[-50:])), "train_minutes": round(elapsed / 60.0, 2),
        "torch_threads": torch.get_num_threads(), "seed": seed,
    }
    log("test exact match {:.4f} on {} images; errors: {}".format(test["exact_match"], test["images"],
                                                                     test["errors"][:5]))
    checkpoint = {
        "model_state_dict": model.state_dict(), "config": config, "word_map": word_map,
        "epoch": best["step"] * batch_size // EPOCH_IMAGES, "step": best["step"], "metrics": metrics,
        "training": {"optimizer": "Adam", "lr": lr, "warmup_steps": warmup, "schedule": "cosine",
                     "batch_size": batch_size, "epoch_images": EPOCH_IMAGES, "data": "jetcap.samples.shapes"},
    }
    save_checkpoint(checkpoint, out or str(captioner_checkpoint()))
    return metrics


EPOCH_IMAGES = 6400  # on-the-fly data has no epochs; checkpoints count these virtual ones


def save_checkpoint(checkpoint: Dict[str, Any], path: str) -> None:
    """Save atomically, with contiguous tensors only (loadable with ``weights_only=True``)."""
    checkpoint = dict(checkpoint)
    checkpoint["model_state_dict"] = {k: v.detach().contiguous().clone()
                                      for k, v in checkpoint["model_state_dict"].items()}
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
        os.chmod(tmp, 0o644)
    log("saved " + path)


# -- classifier ---------------------------------------------------------------------------------------

@torch.no_grad()
def classifier_accuracy(model, sequences: List[np.ndarray], labels: List[int]) -> Dict[str, Any]:
    """Top-1 accuracy of ``model`` (eval mode) over variable-length ``sequences``; sequences of equal
    length are batched together, so no padding ever reaches the model."""
    model.eval()
    by_length: Dict[int, List[int]] = {}
    for i, seq in enumerate(sequences):
        by_length.setdefault(len(seq), []).append(i)
    predicted = [0] * len(sequences)
    for indices in by_length.values():
        logits, _ = model(torch.from_numpy(np.stack([sequences[i] for i in indices])))
        for i, p in zip(indices, logits.argmax(dim=1).tolist()):
            predicted[i] = int(p)
    correct = sum(int(p == y) for p, y in zip(predicted, labels))
    confusion = np.zeros((len(gestures.CLASSES),) * 2, dtype=np.int64)
    for p, y in zip(predicted, labels):
        confusion[y, p] += 1
    return {"accuracy": correct / len(labels), "sequences": len(labels), "predicted": predicted,
            "confusion": confusion.tolist()}


def train_classifier(minutes: float = 10.0, out: Optional[str] = None, seed: int = 0, steps: int = 1500,
                     batch_size: int = 32, lr: float = 2e-3, warmup: int = 50, eval_every: int = 100,
                     eval_from: int = 200, val_sequences: int = 600, test_sequences: int = 1000,
                     stop_at: float = 0.99) -> Dict[str, Any]:
    """Train the sample gesture classifier and save its checkpoint; returns the final metrics.

    Every step draws one length (20..120 frames) and a batch of ``batch_size`` sequences of that
    length, so the model never sees padding.  Arguments as for :func:`train_captioner` (defaults:
    10 min, 1500 steps of 32, peak lr 2e-3, stop at 99 % validation accuracy).
    """
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    torch.manual_seed(seed)
    config = dict(CLASSIFIER_CONFIG)
    model = get_family("classifier").build(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    lengths = np.random.RandomState(seed).randint(gestures.MIN_FRAMES, gestures.MAX_FRAMES + 1, size=steps)
    val_x, val_y = gestures.generate(val_sequences, VALIDATION_SEED)
    start = time.time()
    deadline = start + minutes * 60.0
    best: Dict[str, Any] = {"accuracy": -1.0}
    losses: List[float] = []
    step = 0
    stopped = "steps"
    while step < steps:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, lr, warmup)
        sequences, labels = gestures.generate(batch_size, train_seed(seed, step), length=int(lengths[step]))
        logits, _ = model(torch.from_numpy(np.stack(sequences)))
        loss = F.cross_entropy(logits, torch.tensor(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        losses.append(loss.item())
        step += 1
        if step % 50 == 0:
            log("step {:5d}  loss {:.4f}  lr {:.2e}  {:.1f} min".format(
                step, float(np.mean(losses[-50:])), lr_at(step - 1, steps, lr, warmup), (time.time() - start) / 60.0))
        last = step == steps
        out_of_time = time.time() > deadline
        if (step >= eval_from and step % eval_every == 0) or last or out_of_time:
            result = classifier_accuracy(model, val_x, val_y)
            log("step {:5d}  validation accuracy {:.4f} ({} sequences)".format(step, result["accuracy"],
                                                                             result["sequences"]))
            if result["accuracy"] >= best["accuracy"]:
                best = {"accuracy": result["accuracy"], "step": step, "model": copy.deepcopy(model)}
            if result["accuracy"] >= stop_at:
                stopped = "target"
                break
        if out_of_time:
            stopped = "time"
            log("time limit of {} min reached at step {}".format(minutes, step))
            break
    elapsed = time.time() - start
    model = best["model"]
    test_x, test_y = gestures.generate(test_sequences, TEST_SEED)
    test = classifier_accuracy(model, test_x, test_y)
    metrics = {
        "test_accuracy": test["accuracy"], "test_sequences": test["sequences"], "test_seed": TEST_SEED,
        "test_confusion": test["confusion"], "validation_accuracy": best["accuracy"],
        "validation_sequences": val_sequences, "validation_seed": VALIDATION_SEED, "best_step": best["step"],
        "steps_run": step, "steps_scheduled": steps, "stopped_by": stopped,
        "sequences_seen": step * batch_size, "train_loss": float(np.mean(losses[-50:])),
        "train_minutes": round(elapsed / 60.0, 2), "torch_threads": torch.get_num_threads(), "seed": seed,
    }
    log("test accuracy {:.4f} on {} sequences; confusion (rows: truth) {}".format(
        test["accuracy"], test["sequences"], test["confusion"]))
    checkpoint = {
        "model_state_dict": model.state_dict(), "config": config, "classes": list(gestures.CLASSES),
        "epoch": best["step"] * batch_size // EPOCH_SEQUENCES, "step": best["step"], "metrics": metrics,
        "training": {"optimizer": "Adam", "lr": lr, "warmup_steps": warmup, "schedule": "cosine",
                     "batch_size": batch_size, "epoch_sequences": EPOCH_SEQUENCES,
                     "data": "jetcap.samples.gestures"},
    }
    save_checkpoint(checkpoint, out or str(classifier_checkpoint()))
    return metrics


EPOCH_SEQUENCES = 3200


# -- sample inputs ------------------------------------------------------------------------------------

def write_samples(directory: Optional[str] = None) -> Dict[str, Any]:
    """Write the sample inputs and ``samples.json`` (ground truth) from :data:`SAMPLE_SEED`.

    Writes ``images/sample_00.png`` .. ``sample_07.png`` and ``sequences/<class>.npy`` (one per class,
    lengths :data:`SAMPLE_LENGTHS`) under ``directory`` (default the package's ``data``); returns the
    ``samples.json`` content.
    """
    from PIL import Image

    root = sample_dir() if directory is None else Path(directory)
    images, captions = shapes.generate(SAMPLE_IMAGES, SAMPLE_SEED)
    image_entries = []
    for i, (image, caption) in enumerate(zip(images, captions)):
        name = "images/sample_{:02d}.png".format(i)
        with atomic_path(root / name) as tmp:
            Image.fromarray(image).save(tmp, format="PNG")
            os.chmod(tmp, 0o644)
        image_entries.append({"file": name, "caption": caption})
    rng = np.random.RandomState(SAMPLE_SEED)
    sequence_entries = []
    for label, frames in enumerate(SAMPLE_LENGTHS):
        name = "sequences/{}.npy".format(gestures.CLASSES[label])
        with atomic_path(root / name) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, gestures.make_sequence(rng, label, frames))
            os.chmod(tmp, 0o644)
        sequence_entries.append({"file": name, "label": label, "class": gestures.CLASSES[label], "frames": frames})
    content = {"images": image_entries, "sequences": sequence_entries, "classes": list(gestures.CLASSES),
               "word_map": shapes.word_map(), "seed": SAMPLE_SEED,
               "generated_by": "python -m jetcap.samples.train samples"}
    write_json_atomic(root / "samples.json", content)
    os.chmod(str(root / "samples.json"), 0o644)
    return content


# -- command line -------------------------------------------------------------------------------------

# Wall-clock safety limits of the command line (captioner, classifier), minutes: well above a run's length
# (the seed-0 captioner measured 16.5 minutes on a 2-core machine, docs/SAMPLES.md), since a run the clock
# stops is not reproducible.
SAFETY_MINUTES = (60.0, 30.0)

def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m jetcap.samples.train``."""
    parser = argparse.ArgumentParser(prog="python -m jetcap.samples.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=["captioner", "classifier", "samples"])
    parser.add_argument("--minutes", type=float, default=None,
                        help="wall-clock safety limit (captioner {:g}, classifier {:g}); a run it stops is not "
                             "reproducible".format(*SAFETY_MINUTES))
    parser.add_argument("--out", default=None,
                        help="checkpoint path (default: the shipped one); for samples, the folder to write")
    parser.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    parser.add_argument("--steps", type=int, default=None, help="length of the step schedule")
    args = parser.parse_args(argv)
    options: Dict[str, Any] = {"seed": args.seed, "out": args.out}
    if args.steps is not None:
        options["steps"] = args.steps
    if args.model == "captioner":
        metrics = train_captioner(minutes=SAFETY_MINUTES[0] if args.minutes is None else args.minutes, **options)
    elif args.model == "classifier":
        metrics = train_classifier(minutes=SAFETY_MINUTES[1] if args.minutes is None else args.minutes, **options)
    else:
        if args.minutes is not None or args.steps is not None or args.seed != 0:
            parser.error("samples takes only --out (its inputs come from the fixed sample seed)")
        metrics = write_samples(args.out)
    print(json.dumps(metrics, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
