"""Build a Show-Attend-Tell ResNet-101 captioner checkpoint, saved the way the SAT tutorial saves it.

    .venv/bin/python benchmarks/realistic_sat.py OUT_DIR [--steps 300] [--images 256]
        [--decoder-lr 4e-4] [--encoder-lr 1e-4] [--pretrain-steps 0] [--pretrain-size 96] [--pretrain-bf16]

Writes ``OUT_DIR/BEST_checkpoint.pth.tar`` (the whole encoder and decoder modules pickled, with the
epoch/BLEU/optimizer entries the tutorial's ``save_checkpoint`` writes), ``OUT_DIR/WORDMAP.json`` and
``OUT_DIR/images/*.png`` (256x256 images of the training distribution, not seen in training).  The
model code is the test suite's SAT tutorial repository (``tests/export/user_models/sat_relu_repo``:
ReLU additive attention, LSTMCell ``decode_step``, ``f_beta`` gate, ``fc``), with its encoder trunk
replaced, as the tutorial builds it, by torchvision's ResNet-101 without its pooling and classifier
layers, pooled to 14x14 (256x256 images -> 8x8x2048 -> 14x14x2048, 196 pixels); decoder, attention and
embedding 512, the 10 000-word vocabulary of ``realistic_captioner.py``.  Export it as a user would::

    jetcap export OUT_DIR/BEST_checkpoint.pth.tar --trust-pickle \\
        --code-path tests/export/user_models/sat_relu_repo --word-map OUT_DIR/WORDMAP.json \\
        --image-size 256 -o BUNDLE ...

With ``--pretrain-steps N`` the whole ResNet-101 is first trained from scratch to recognise the shapes
(``realistic_captioner.pretrain_trunk``, batches of 16 at ``--pretrain-size``, 96 by default: the
images' own resolution, since ResNet-101 at 160 would cost about 5 s a step on 2 cores), then its
BatchNorm statistics are estimated at 256: the stand-in for the ImageNet weights the tutorial starts
from, and the model to measure INT8 on.  ``--pretrain-size 256 --pretrain-bf16`` pretrains at the size
the model runs at, under CPU bfloat16 autocast (weights and optimizer float32): 1.6 s a step on a
2-core Xeon with AMX, and the trunk then tells the shapes' kinds apart at 256 (batch accuracy 1.00,
against 0.56-0.75 when pretrained at 96).  Without it, as in ``realistic_captioner.py``, the trunk keeps
seeded random weights with BatchNorm statistics estimated on the images and its residual branches
damped (stable to input noise, as a trained trunk is).  The decoder is trained with the trunk's last
bottleneck (the tutorial fine-tunes the top of its trunk; its input computed once; the attention's
``encoder_att`` projection computed once per batch instead of once per word, which is the same function), on each image clean and under input noise (``--noise-copies``, ``--max-noise``: see
``realistic_captioner.py``).  Never committed: build it on demand (about 5 minutes on 2 cores at the
defaults; the model INT8 is measured on, ``--images 2048 --steps 1200 --pretrain-steps 1000``, took
3624 s on a 2-core Xeon: pretraining 1014 s, trunk features of 6144 images 900 s, decoder 1200 steps;
with ``--pretrain-size 256 --pretrain-bf16``, 4695 s on a 2-core Xeon with AMX, partly shared).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REPO = os.path.join(ROOT, "tests", "export", "user_models", "sat_relu_repo")
sys.path.insert(0, REPO)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import models  # noqa: E402  (the SAT repository's module: pickles reference it as ``models``)
from realistic_captioner import (SEED, VOCAB, add_noise_options, cache_trunk, caption_stability,  # noqa: E402
                                 damp_residual_branches, estimate_batchnorm, feature_stability, pretrain_trunk,
                                 print_stability, save_test_images, upscale, word_map)

from jetcap.samples import shapes  # noqa: E402

SIZE = 256
GRID = 14
DIM = 512
# Residual-branch damping for ResNet-101's 33 bottlenecks, measured with ``feature_stability`` on 8
# images (BatchNorm estimated on 64): x0.2 (MobileNetV2's) -> 1 % input noise cosine 0.999998 but spread
# across images 0.057 (the features barely vary: the decoder cannot tell images apart); x0.5 -> 0.99987 /
# 0.165; x0.65 -> 0.9974 / 0.31 (MobileNetV2 at x0.2: 0.9975 / 0.32); x0.7 -> 0.993 / 0.375.
DAMPING = 0.65
BATCHNORM_IMAGES = 256  # BatchNorm statistics are estimated on at most this many training images


def resnet101_encoder():
    """The tutorial's Encoder: ResNet-101 minus its last two layers, adaptive pooling to GRID x GRID."""
    import torchvision

    encoder = models.Encoder(GRID)
    trunk = torchvision.models.resnet101(weights=None)
    encoder.resnet = torch.nn.Sequential(*list(trunk.children())[:-2])
    return encoder


def decoder_scores(decoder, features, captions):
    """Teacher-forced scores ``(B, T-1, vocab)`` of the decoder's own layers on ``features`` (B, P, 2048)."""
    att1 = decoder.attention.encoder_att(features)
    h, c = decoder.init_hidden_state(features)
    embeddings = decoder.embedding(captions)
    out = []
    for t in range(captions.shape[1] - 1):
        att2 = decoder.attention.decoder_att(h)
        att = decoder.attention.full_att(decoder.attention.relu(att1 + att2.unsqueeze(1))).squeeze(2)
        alpha = decoder.attention.softmax(att)
        awe = (features * alpha.unsqueeze(2)).sum(dim=1)
        awe = decoder.sigmoid(decoder.f_beta(h)) * awe
        h, c = decoder.decode_step(torch.cat([embeddings[:, t], awe], dim=1), (h, c))
        out.append(decoder.fc(decoder.dropout(h)))
    return torch.stack(out, dim=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--decoder-lr", type=float, default=4e-4)
    parser.add_argument("--encoder-lr", type=float, default=1e-4, help="of the fine-tuned trunk block")
    parser.add_argument("--images", type=int, default=256, help="training images (features computed once)")
    add_noise_options(parser)
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="train the whole trunk first (batches of 16) to recognise the shapes; 0: a random "
                             "trunk, its BatchNorm estimated and its residual branches damped")
    parser.add_argument("--pretrain-size", type=int, default=96, help="image size of the pretraining")
    parser.add_argument("--pretrain-bf16", action="store_true",
                        help="pretrain under CPU bfloat16 autocast (fast where the CPU has AMX / AVX-512 BF16)")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    began = time.time()
    mapping = word_map()
    encoder = resnet101_encoder()
    decoder = models.DecoderWithAttention(attention_dim=DIM, embed_dim=DIM, decoder_dim=DIM, vocab_size=VOCAB,
                                          encoder_dim=2048, dropout=0.5)
    images, captions = shapes.generate(args.images, SEED)
    if args.pretrain_steps:
        pretrain_trunk(encoder.resnet, images, captions, args.pretrain_steps, size=args.pretrain_size,
                       began=began, channels=2048, batch=16, bf16=args.pretrain_bf16)
        estimate_batchnorm(encoder, images[:BATCHNORM_IMAGES], SIZE)  # the statistics at the size it runs at
    else:
        estimate_batchnorm(encoder, images[:BATCHNORM_IMAGES], SIZE)
        damp_residual_branches(encoder, DAMPING)
    print("features under 1 % input noise: cosine {:.4f}; spread across images {:.2f} ({:.0f} s)".format(
        *feature_stability(encoder, upscale(images[:8], SIZE)), time.time() - began), flush=True)
    # the trunk's last bottleneck is fine-tuned with the decoder (the tutorial fine-tunes its top
    # blocks); its input is computed once
    lower = torch.nn.Sequential(*list(encoder.resnet.children())[:7], encoder.resnet[7][:2])
    head = encoder.resnet[7][2]
    cached = cache_trunk(lower, images, SIZE, args.noise_copies, args.max_noise, batch=16)
    per_image = args.noise_copies + 1
    print("trunk input of the fine-tuned block {} ({:.0f} s)".format(tuple(cached.shape), time.time() - began),
          flush=True)

    def features_of(rows):
        return encoder.adaptive_pool(head(cached[rows])).permute(0, 2, 3, 1).flatten(1, 2)

    tokens = torch.from_numpy(shapes.encode(captions, mapping))
    optimizer = torch.optim.Adam([{"params": decoder.parameters(), "lr": args.decoder_lr},
                                  {"params": head.parameters(), "lr": args.encoder_lr}])
    rng = np.random.RandomState(SEED)
    pad = mapping["<pad>"]
    decoder.train()
    for step in range(args.steps):
        pick = torch.from_numpy(rng.choice(len(cached), min(32, len(cached)), replace=False))
        caps = tokens[pick // per_image]
        scores = decoder_scores(decoder, features_of(pick), caps)
        loss = torch.nn.functional.cross_entropy(scores.reshape(-1, VOCAB), caps[:, 1:].reshape(-1), ignore_index=pad)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            print("step {} loss {:.3f} ({:.0f} s)".format(step, float(loss.detach()), time.time() - began), flush=True)
    decoder.eval()
    print("after training: features under 1 % input noise: cosine {:.4f}; spread across images {:.2f}".format(
        *feature_stability(encoder.eval(), upscale(images[:8], SIZE))), flush=True)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "BEST_checkpoint.pth.tar")
    torch.save({"epoch": 20, "epochs_since_improvement": 0, "bleu-4": 0.0, "encoder": encoder, "decoder": decoder,
                "encoder_optimizer": None, "decoder_optimizer": optimizer}, path + ".tmp")
    os.replace(path + ".tmp", path)
    with open(os.path.join(args.out, "WORDMAP.json"), "w") as handle:
        json.dump(mapping, handle)
    test = save_test_images(args.out, SIZE)
    itos = {i: w for w, i in mapping.items()}
    for image, truth in zip(test[:8], shapes.generate(8, SEED + 1)[1]):
        x = upscale(image[None], SIZE)[0]
        words = models.caption_image_beam_search(encoder, decoder, x, mapping, beam_size=1)
        print("  {!r:55} <- {!r}".format(" ".join(itos[t] for t in words), truth))

    def greedy(x):
        return [models.caption_image_beam_search(encoder, decoder, image, mapping, beam_size=1) for image in x]

    print_stability(caption_stability(greedy, upscale(test, SIZE)), len(test))
    print("wrote {} ({:.1f} MB) in {:.0f} s".format(path, os.path.getsize(path) / 1e6, time.time() - began))


if __name__ == "__main__":
    main()
