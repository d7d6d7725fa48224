"""Build a COCO-sized captioner checkpoint for benchmarks, deterministically, in a few minutes on 2 cores.

    .venv/bin/python benchmarks/realistic_captioner.py OUT_DIR [--steps 400] [--images 256]

Writes ``OUT_DIR/realistic_captioner.pt`` (jetcap's built-in captioner layout: a real torchvision
MobileNetV2 trunk at 224x224 -> 7x7x1280 features, embed/decoder/attention 512, a 10 000-word
vocabulary) and ``OUT_DIR/images/*.png`` (224x224 images to caption, ``jetcap bench --data``).  Never
committed: build it on demand.

The trunk keeps its (seeded) random weights -- what is measured is the compute and memory of the real
topology, not caption quality -- with its BatchNorm statistics estimated on the images, and the decoder is trained for a few hundred Adam steps, on
features computed once, to say the synthetic-shapes captions (``jetcap.samples.shapes``: 1-2 shapes,
up to 10 words) with their words placed at scattered ids of the 10 000-word vocabulary.  So it emits
varied multi-word captions of realistic length and its output layer really is 10 000 wide.
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


def upscale(images):
    """uint8 (n, 96, 96, 3) -> float (n, 3, 224, 224), normalised as the manifest will say."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--images", type=int, default=256, help="training images (features computed once)")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    began = time.time()
    mapping = word_map()
    model = MobileNetCaptioningModel(vocab_size=VOCAB, embed_dim=512, decoder_dim=512, attention_dim=512,
                                     backbone="mobilenet_v2", grid=7, dropout=0.1)
    images, captions = shapes.generate(args.images, SEED)
    # a random trunk's BatchNorm layers still hold mean 0 / variance 1: estimate their statistics on the
    # images (one pass, cumulative average) so the 7x7x1280 features vary with the image, as a trained
    # trunk's do -- otherwise the decoder has nothing to look at and says one caption for everything
    for module in model.encoder.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.encoder.train()
    with torch.no_grad():
        for i in range(0, len(images), 32):
            model.encoder(upscale(images[i:i + 32]))
    model.encoder.eval()
    with torch.no_grad():
        features = torch.cat([model.encoder(upscale(images[i:i + 32])) for i in range(0, len(images), 32)])
    tokens = torch.from_numpy(shapes.encode(captions, mapping))
    decoder = model.decoder
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-3)
    rng = np.random.RandomState(SEED)
    pad = mapping["<pad>"]
    decoder.train()
    for step in range(args.steps):
        pick = torch.from_numpy(rng.choice(len(features), 32, replace=False))
        feats, caps = features[pick], tokens[pick]
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
    model.eval()
    os.makedirs(os.path.join(args.out, "images"), exist_ok=True)
    config = {"vocab_size": VOCAB, "embed_dim": 512, "decoder_dim": 512, "attention_dim": 512,
              "backbone": "mobilenet_v2", "width_mult": 1.0, "grid": 7, "image_size": SIZE,
              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "max_len": 20}
    path = os.path.join(args.out, "realistic_captioner.pt")
    torch.save({"model_state_dict": model.state_dict(), "config": config, "word_map": mapping,
                "note": "jetcap benchmark model (benchmarks/realistic_captioner.py): random MobileNetV2 trunk, "
                        "decoder trained {} steps on synthetic shapes".format(args.steps)}, path + ".tmp")
    os.replace(path + ".tmp", path)
    from PIL import Image

    test, test_captions = shapes.generate(32, SEED + 1)
    for i, image in enumerate(test):
        Image.fromarray(image).resize((SIZE, SIZE), Image.BILINEAR).save(
            os.path.join(args.out, "images", "shapes_{:02d}.png".format(i)))
    itos = {i: w for w, i in mapping.items()}
    with torch.no_grad():
        hyps = model.caption(upscale(test[:8]), mapping["<start>"], mapping["<end>"], 20)
    for hyp, truth in zip(hyps, test_captions[:8]):
        print("  {!r:55} <- {!r}".format(" ".join(itos[t] for t in hyp.tokens), truth))
    print("wrote {} ({:.1f} MB) and {} images in {:.0f} s".format(path, os.path.getsize(path) / 1e6, len(test),
                                                                  time.time() - began))


if __name__ == "__main__":
    main()
