"""Build a COCO-sized captioner checkpoint for benchmarks, deterministically, in a few minutes on 2 cores.

    .venv/bin/python benchmarks/realistic_captioner.py OUT_DIR [--steps 400] [--images 256]
        [--decoder-lr 4e-4] [--encoder-lr 1e-4] [--noise-copies 2] [--max-noise 0.03] [--pretrain-steps 0]

Writes ``OUT_DIR/realistic_captioner.pt`` (jetcap's built-in captioner layout: a real torchvision
MobileNetV2 trunk at 224x224 -> 7x7x1280 features, embed/decoder/attention 512, a 10 000-word
vocabulary) and ``OUT_DIR/images/*.png`` (224x224 images to caption, ``jetcap bench --data``).  Never
committed: build it on demand.

With ``--pretrain-steps N`` the whole trunk is first trained from scratch to recognise the shapes
(``pretrain_trunk``: N batches of 32 at 160x160, 0.6-0.9 s each on 2 cores), standing in for the
ImageNet pretraining of a real captioner's trunk; that is the model to measure INT8 on.  Without it
the trunk keeps its (seeded) random weights -- what is measured is the compute and memory of the real
topology, not caption quality -- with its BatchNorm statistics estimated on the images and its residual
branches damped so that it is stable to input noise, as a trained trunk is (see
``damp_residual_branches``: an undamped random trunk is chaotic, and would measure INT8 rounding as a
different image), and the decoder is trained for a few hundred Adam steps together with the
trunk's last blocks (the 7x7 stage and the 1280-wide head, as SAT training fine-tunes the top of its
trunk; their input computed once), to say the synthetic-shapes captions (``jetcap.samples.shapes``: 1-2 shapes,
up to 10 words) with their words placed at scattered ids of the 10 000-word vocabulary.  So it emits
varied multi-word captions of realistic length and its output layer really is 10 000 wide.  Each
training image is also seen under input noise (``--noise-copies``, ``--max-noise``; ``cache_trunk``), as
a trained captioner has seen augmented images; measured on 2048 images and 1500 steps it got 7 of 8
unseen test captions right instead of 4, but kept changing about 10 % of them under 0.5 % input noise
(near-ties where a random trunk's features barely differ).  The builder ends by printing that stability
on the test images: it bounds what any rounding (INT8's) can keep.

Learning rates are the Show-Attend-Tell tutorial's (decoder 4e-4, fine-tuned encoder 1e-4).  With
1e-3 / 3e-4 (the builder until 2026-12-03) the same 400 steps reach the same loss (0.19 vs 0.17) but
inflate the decoder's input layers: on real images ``projected`` std 14.2 and ``h0`` std 11.9 (vs 4.1 and
6.2), and even the FP16 variant fails the export gate (docs/VALIDATION.md).
"""
import argparse
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jetcap.models.captioner import IMAGENET_MEAN, IMAGENET_STD, MobileNetCaptioningModel  # noqa: E402
from jetcap.samples import shapes  # noqa: E402

VOCAB = 10000
SIZE = 224
SEED = 20261202
DAMPING = 0.2
# noise augmentation (``cache_trunk``): without it the converged model (2048 images, 1500 steps) kept its
# greedy captions under 0.5 % / 1 % input noise on only 91 % / 83 % of 200 unseen images
NOISE_COPIES = 2
MAX_NOISE = 0.03
TRAINED_FROM = 14  # MobileNetV2 feature blocks 14.. are fine-tuned with the decoder
PRETRAIN_SIZE = 160  # image size of the trunk's pretraining (--pretrain-steps)


def word_map():
    """10 000 words: the specials at 0..3, the shapes words spread over the vocabulary, fillers elsewhere."""
    rng = np.random.RandomState(SEED)
    small = shapes.word_map()
    specials = {w: i for w, i in small.items() if w.startswith("<")}
    words = sorted(w for w in small if not w.startswith("<"))
    ids = rng.choice(np.arange(len(specials), VOCAB), size=len(words), replace=False)
    mapping = dict(specials)
    mapping.update({w: int(i) for w, i in zip(words, ids)})
    used = set(mapping.values())
    for i in range(VOCAB):
        if i not in used:
            mapping["word{:05d}".format(i)] = i
    return mapping


def upscale(images, size=SIZE):
    """uint8 (n, 96, 96, 3) -> float (n, 3, size, size), normalised as the manifest will say."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def estimate_batchnorm(encoder, images, size):
    """Estimate a random trunk's BatchNorm statistics on ``images`` (one pass, cumulative average).

    Its BatchNorm layers still hold mean 0 / variance 1, so without this the features hardly vary with
    the image (as a trained trunk's do) and the decoder, having nothing to look at, says one caption for
    everything."""
    for module in encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    encoder.train()
    with torch.no_grad():
        for i in range(0, len(images), 32):
            encoder(upscale(images[i:i + 32], size))
    encoder.eval()


def caption_targets(captions):
    """``(n, 7)`` int64 class indices of the shapes captions: first shape's size, colour, shape; the
    relation (0: one shape, 1: left of, 2: above); second shape's size, colour, shape (-1 when absent)."""
    out = np.full((len(captions), 7), -1, dtype=np.int64)
    for row, caption in enumerate(captions):
        words = caption.split()
        out[row, :3] = shapes.SIZES.index(words[1]), shapes.COLOURS.index(words[2]), shapes.SHAPES.index(words[3])
        out[row, 3] = 0
        if len(words) > 4:
            out[row, 3] = 1 if words[4] == "left" else 2
            second = words[-3:]
            out[row, 4:] = (shapes.SIZES.index(second[0]), shapes.COLOURS.index(second[1]),
                            shapes.SHAPES.index(second[2]))
    return torch.from_numpy(out)


TARGET_CLASSES = (len(shapes.SIZES), len(shapes.COLOURS), len(shapes.SHAPES), 3,
                  len(shapes.SIZES), len(shapes.COLOURS), len(shapes.SHAPES))


def pretrain_trunk(trunk, images, captions, steps, size=PRETRAIN_SIZE, max_noise=MAX_NOISE, lr=1e-3, seed=SEED,
                   began=None, channels=1280, batch=32, bf16=False):
    """Train the whole ``trunk`` from its random initialisation to recognise what the shapes captions
    say (each shape's size, colour and kind, and their relation: ``caption_targets``) through a global
    average pool and a linear layer, on ``images`` under input noise, channels-last at ``size`` (160:
    measured 0.6 s per batch of 32 on the 2-core EPYC, 224: 2.4 s).  A stand-in for the ImageNet
    pretraining a real captioner's trunk has: its features then carry the image's content with the
    margins of a trained network, where a random trunk's barely vary from image to image (INT8's
    rounding was as large as the difference between two images' features, docs/VALIDATION.md).
    ``channels``: the trunk's output channels (MobileNetV2 1280, ResNet-101 2048); ``batch``: images per step;
    ``bf16``: run the forward pass under CPU bfloat16 autocast (weights, gradients and Adam stay float32;
    only worth it where the CPU has AMX or AVX-512 BF16: ResNet-101 at 256, batch 16, 1.5 s a step instead
    of 3.5-4 s on a 2-core Xeon with AMX).  The trunk the captioner uses is float32 either way."""
    began = time.time() if began is None else began
    generator = torch.Generator().manual_seed(seed)
    targets = caption_targets(captions)
    head = torch.nn.Linear(channels, sum(TARGET_CLASSES))
    trunk.train()
    trunk.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(list(trunk.parameters()) + list(head.parameters()), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15)
    rng = np.random.RandomState(seed)
    bounds = np.cumsum((0,) + TARGET_CLASSES)
    for step in range(steps):
        pick = rng.choice(len(images), batch, replace=False)
        x = upscale(images[pick], size)
        sigma = max_noise * torch.rand(x.shape[0], 1, 1, 1, generator=generator)
        x = (x + sigma * x.std() * torch.randn(x.shape, generator=generator)).contiguous(
            memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = head(trunk(x).mean((2, 3))).float()
        y = targets[torch.from_numpy(pick)]
        loss = sum(torch.nn.functional.cross_entropy(logits[:, bounds[k]:bounds[k + 1]], y[:, k], ignore_index=-1)
                   for k in range(len(TARGET_CLASSES)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            correct = [(logits[:, bounds[k]:bounds[k + 1]].argmax(1) == y[:, k])[y[:, k] >= 0].float().mean()
                       for k in range(len(TARGET_CLASSES))]
            print("pretrain step {} loss {:.3f}, batch accuracy {} ({:.0f} s)".format(
                step, float(loss.detach()), " ".join("{:.2f}".format(float(c)) for c in correct),
                time.time() - began), flush=True)
    trunk.to(memory_format=torch.contiguous_format)
    trunk.eval()


def damp_residual_branches(encoder, factor=DAMPING):
    """Scale the last BatchNorm of every residual branch by ``factor``, after its statistics were estimated.

    A random trunk with estimated BatchNorm statistics is *chaotic*: measured on this MobileNetV2, 1 %
    Gaussian noise on the input image moves the 7x7x1280 features to cosine 0.63 of the clean ones --
    as far as a different image -- and 0.1 % noise to 0.96.  A trained trunk is nothing like that (it
    must be robust to noise to be of any use), and in a chaotic one any rounding -- INT8's, FP16's --
    is amplified into "another image", so it would measure the benchmark model, not the quantization.
    Damping the residual branches (what trained residual networks tend to, and what zero-init-residual
    schemes start from) puts the trunk in the stable regime: 1 % input noise -> cosine 0.997, while
    the features still vary from image to image.  ``feature_stability`` prints the check."""
    from torchvision.models.mobilenetv2 import InvertedResidual
    from torchvision.models.resnet import BasicBlock, Bottleneck

    for block in encoder.modules():
        if isinstance(block, InvertedResidual) and block.use_res_connect:
            norm = block.conv[-1]
        elif isinstance(block, Bottleneck):
            norm = block.bn3
        elif isinstance(block, BasicBlock):
            norm = block.bn2
        else:
            continue
        norm.weight.data.mul_(factor)
        norm.bias.data.mul_(factor)


def feature_stability(encoder, x, noise=0.01, seed=SEED):
    """``(cosine of the features under noise, relative spread of the features across images)`` of
    ``encoder`` on the batch ``x``: a trunk fit to quantize has the first near 1 and the second > 0."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = encoder(x).flatten(1).double()
        noisy = encoder(x + noise * x.std() * torch.randn(x.shape, generator=generator)).flatten(1).double()
    cosine = (clean * noisy).sum(1) / (clean.norm(dim=1) * noisy.norm(dim=1))
    return float(cosine.mean()), float(clean.std(0).mean() / clean.mean().abs())


def cache_trunk(lower, images, size, copies=0, max_noise=0.0, batch=32, seed=SEED):
    """``lower`` (the frozen part of the trunk) on every image, clean and then ``copies`` times under
    Gaussian input noise of a std drawn per image from U(0, ``max_noise``) x the pixels' std: the noise
    augmentation a trained captioner's training gives it (real augmentation -- crops, colour jitter --
    moves the input far more), so its head and decoder learn margins around each image instead of
    memorising its exact features.  Row ``r`` of the result is image ``r // (copies + 1)``."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = upscale(images[i:i + batch], size)
            rows = [lower(x)]
            for _ in range(copies):
                sigma = max_noise * torch.rand(x.shape[0], 1, 1, 1, generator=generator)
                rows.append(lower(x + sigma * x.std() * torch.randn(x.shape, generator=generator)))
            out.append(torch.stack(rows, 1))
    return torch.cat(out).flatten(0, 1)


def caption_stability(caption, x, noises=(0.005, 0.01, 0.02), seed=SEED):
    """``{noise: fraction of greedy captions unchanged}`` when ``x`` gets Gaussian noise of ``noise`` x its
    std: how far a rounding (INT8's is about 0.5-1 % of input noise on these trunks) can move the model
    before its captions change.  ``caption(batch) -> [token lists]``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        clean = caption(x)
        out = {}
        for noise in noises:
            noisy = caption(x + noise * x.std() * torch.randn(x.shape, generator=generator))
            out[noise] = sum(1 for a, b in zip(clean, noisy) if a == b) / float(len(clean))
    return out


def save_test_images(out, size, count=48):
    """``count`` images of the training distribution, not seen in training, as ``OUT/images/*.png``: with
    ``--calibration-data OUT/images`` the export calibrates on the first 32 and runs its task checks on
    the other 16 (held out from calibration)."""
    from PIL import Image

    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    test, _ = shapes.generate(count, SEED + 1)
    for i, image in enumerate(test):
        Image.fromarray(image).resize((size, size), Image.BILINEAR).save(
            os.path.join(out, "images", "shapes_{:02d}.png".format(i)))
    return test


def add_noise_options(parser):
    parser.add_argument("--noise-copies", type=int, default=NOISE_COPIES,
                        help="noisy copies of each training image besides the clean one (0: no augmentation)")
    parser.add_argument("--max-noise", type=float, default=MAX_NOISE,
                        help="largest input-noise std of a copy, as a fraction of the pixels' std")


def print_stability(stability, count):
    print("greedy captions of the {} test images unchanged under input noise: {}".format(
        count, ", ".join("{:.1%}: {:.1%}".format(k, v) for k, v in sorted(stability.items()))), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--images", type=int, default=256, help="training images (the trunk's lower blocks run once)")
    parser.add_argument("--decoder-lr", type=float, default=4e-4)
    parser.add_argument("--encoder-lr", type=float, default=1e-4, help="of the fine-tuned trunk blocks")
    add_noise_options(parser)
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="train the whole trunk first (batches of 32 at 160x160) to recognise the shapes; "
                             "0: a random trunk, its BatchNorm estimated and its residual branches damped")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    began = time.time()
    mapping = word_map()
    model = MobileNetCaptioningModel(vocab_size=VOCAB, embed_dim=512, decoder_dim=512, attention_dim=512,
                                     backbone="mobilenet_v2", grid=7, dropout=0.1)
    images, captions = shapes.generate(args.images, SEED)
    if args.pretrain_steps:
        pretrain_trunk(model.encoder.backbone, images, captions, args.pretrain_steps, began=began)
        estimate_batchnorm(model.encoder, images[:512], SIZE)  # the statistics at the size it runs at
    else:
        estimate_batchnorm(model.encoder, images, SIZE)
        damp_residual_branches(model.encoder)
    print("features under 1 % input noise: cosine {:.4f}; spread across images {:.2f}".format(
        *feature_stability(model.encoder, upscale(images[:16]))), flush=True)
    # the last blocks (the 7x7 stage and the 1280-wide head) are fine-tuned with the decoder, as SAT
    # training fine-tunes the top of its trunk: their input is computed once, the rest stays random
    trunk = model.encoder.backbone
    head = trunk[TRAINED_FROM:]
    cached = cache_trunk(trunk[:TRAINED_FROM], images, SIZE, args.noise_copies, args.max_noise)
    per_image = args.noise_copies + 1
    print("trunk input of the fine-tuned blocks {} ({:.0f} s)".format(tuple(cached.shape), time.time() - began),
          flush=True)

    def features_of(rows):
        return model.encoder.adaptive_pool(head(cached[rows])).flatten(2).transpose(1, 2)

    tokens = torch.from_numpy(shapes.encode(captions, mapping))
    decoder = model.decoder
    optimizer = torch.optim.Adam([{"params": decoder.parameters(), "lr": args.decoder_lr},
                                  {"params": head.parameters(), "lr": args.encoder_lr}])
    rng = np.random.RandomState(SEED)
    pad = mapping["<pad>"]
    decoder.train()
    for step in range(args.steps):
        pick = torch.from_numpy(rng.choice(len(cached), min(32, len(cached)), replace=False))
        feats, caps = features_of(pick), tokens[pick // per_image]
        projected, h, c = decoder.prepare(feats)
        losses = []
        for t in range(caps.shape[1] - 1):
            scores, h, c, _ = decoder.step(caps[:, t], h, c, feats, projected)
            losses.append(torch.nn.functional.cross_entropy(scores, caps[:, t + 1], ignore_index=pad,
                                                            reduction="sum"))
        loss = torch.stack(losses).sum() / (caps[:, 1:] != pad).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print("step {} loss {:.3f} ({:.0f} s)".format(step, float(loss.detach()), time.time() - began), flush=True)
    print("after training: features under 1 % input noise: cosine {:.4f}; spread across images {:.2f}".format(
        *feature_stability(model.encoder.eval(), upscale(images[:16]))), flush=True)
    model.eval()
    os.makedirs(args.out, exist_ok=True)
    config = {"vocab_size": VOCAB, "embed_dim": 512, "decoder_dim": 512, "attention_dim": 512,
              "backbone": "mobilenet_v2", "width_mult": 1.0, "grid": 7, "image_size": SIZE,
              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "max_len": 20}
    path = os.path.join(args.out, "realistic_captioner.pt")
    torch.save({"model_state_dict": model.state_dict(), "config": config, "word_map": mapping,
                "note": "jetcap benchmark model (benchmarks/realistic_captioner.py): MobileNetV2 trunk {}, ".format(
                    "pretrained {} steps on the shapes".format(args.pretrain_steps) if args.pretrain_steps
                    else "random (residual branches damped)") +
                        "decoder trained {} steps on synthetic shapes, {} noisy copies of each image (input noise up to {:.1%})".format(
                    args.steps, args.noise_copies, args.max_noise)}, path + ".tmp")
    os.replace(path + ".tmp", path)
    test = save_test_images(args.out, SIZE)
    test_captions = shapes.generate(8, SEED + 1)[1]
    itos = {i: w for w, i in mapping.items()}
    with torch.no_grad():
        hyps = model.caption(upscale(test[:8]), mapping["<start>"], mapping["<end>"], 20)
    for hyp, truth in zip(hyps, test_captions[:8]):
        print("  {!r:55} <- {!r}".format(" ".join(itos[t] for t in hyp.tokens), truth))
    stability = caption_stability(
        lambda x: [h.tokens for h in model.caption(x, mapping["<start>"], mapping["<end>"], 20)], upscale(test))
    print_stability(stability, len(test))
    print("wrote {} ({:.1f} MB) and {} images in {:.0f} s".format(path, os.path.getsize(path) / 1e6, len(test),
                                                                  time.time() - began))


if __name__ == "__main__":
    main()
