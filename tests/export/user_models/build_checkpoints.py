"""Save checkpoints exactly the way the four repositories save them (run as a script, like training).

    python build_checkpoints.py OUT_DIR [NAME ...]   # NAME: sat_relu, sat_tanh, lightning, signlang (default all)

Writes: sat_relu/BEST_checkpoint.pth.tar (whole pickled encoder/decoder + optimizer) and
sat_relu/WORDMAP.json; sat_tanh/model.pth ({'encoder': state_dict, 'decoder': state_dict}) and
sat_tanh/word_dict.json; signlang/sign_model.pth ({'model_state_dict', 'label_encoder'}) and
signlang/sign_model_full.pt (pickled __main__ module); lightning/last.ckpt (Lightning layout) and
lightning/vocab.json, calibration/ and images/ (toy images not seen in training).  The captioners are trained for a few hundred
steps on toy captions (the colour, side and size of a square) with their own forward, so that their
captions depend on the image and no step is a near-tie; the classifier keeps random weights.
"""
import json
import os
import subprocess
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
WORDS = ["<pad>", "<start>", "<end>", "<unk>"] + ["w{}".format(i) for i in range(16)]


def word_map():
    return {w: i for i, w in enumerate(WORDS)}


COLOURS = [(220, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40)]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def toy_images(count, seed, size=64):
    """Images of one coloured square on a noisy background and their captions: colour (w0-w3),
    left/right (w4/w5), and w6 ("small") for small squares -- 2 or 3 words, then <end>."""
    rng = np.random.RandomState(seed)
    images, captions = [], []
    for _ in range(count):
        image = rng.randint(60, 140, size=(size, size, 3)).astype(np.uint8)
        colour, right, small = rng.randint(4), rng.randint(2), rng.randint(2)
        side = size // 5 if small else size // 2 - 2
        x0 = rng.randint(size // 2, size - side) if right else rng.randint(0, size // 2 - side + 1)
        y0 = rng.randint(0, size - side)
        image[y0:y0 + side, x0:x0 + side] = COLOURS[colour]
        words = ["w{}".format(colour), "w{}".format(4 + right)] + (["w6"] if small else [])
        images.append(image)
        captions.append(words)
    return images, captions


def encode_captions(captions, length=5):
    """(B, length) ids: <start> words <end> <pad>..."""
    ids = word_map()
    out = np.full((len(captions), length), ids["<pad>"], dtype=np.int64)
    for i, words in enumerate(captions):
        row = [ids["<start>"]] + [ids[w] for w in words] + [ids["<end>"]]
        out[i, :len(row)] = row
    return torch.from_numpy(out)


def toy_batch(images, size):
    from jetcap.runtime import preprocess

    prep = preprocess.default_preprocessing(size, MEAN, STD)
    return torch.from_numpy(np.stack([preprocess.preprocess_array(im, prep) for im in images]))


def train(parameters, scores_of, size, steps=300, seed=0):
    """A few hundred Adam steps of teacher forcing on the toy captions (the repository's own forward
    gives ``scores_of(images, captions) -> (B, L - 1, V)``), so the test models are decisive."""
    images, captions = toy_images(512, seed, size)
    data, targets = toy_batch(images, size), encode_captions(captions)
    optimizer = torch.optim.Adam(parameters, lr=3e-3)
    rng = np.random.RandomState(seed)
    for _ in range(steps):
        pick = torch.from_numpy(rng.choice(len(data), 32, replace=False))
        scores = scores_of(data[pick], targets[pick])
        loss = torch.nn.functional.cross_entropy(scores.reshape(-1, scores.shape[-1]), targets[pick][:, 1:].reshape(-1),
                                                 ignore_index=word_map()["<pad>"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(loss.detach())


def save_images(out, name, count, seed, size=64):
    """Toy images (PNG) not seen in training: ``calibration/`` (what a user passes as --calibration-data)
    and ``images/`` (what the tests caption)."""
    from PIL import Image

    folder = os.path.join(out, name)
    os.makedirs(folder, exist_ok=True)
    images, _ = toy_images(count, seed, size)
    for i, image in enumerate(images):
        Image.fromarray(image).save(os.path.join(folder, "toy_{:02d}.png".format(i)))


def sat_relu(out):
    sys.path.insert(0, os.path.join(HERE, "sat_relu_repo"))
    import models

    torch.manual_seed(1)
    encoder = models.Encoder(14)
    decoder = models.DecoderWithAttention(attention_dim=24, embed_dim=16, decoder_dim=32, vocab_size=len(WORDS),
                                          encoder_dim=48)
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    def scores_of(images, captions):
        lengths = torch.full((len(captions), 1), captions.shape[1], dtype=torch.int64)
        predictions, _, _, _, sort_ind = decoder(encoder(images), captions, lengths)
        unsorted = torch.empty_like(predictions)
        unsorted[sort_ind] = predictions
        return unsorted

    encoder.train(), decoder.train()
    print("sat_relu: final loss {:.3f}".format(train(list(encoder.parameters()) + list(decoder.parameters()),
                                                     scores_of, 64)))
    optimizer = torch.optim.Adam(decoder.parameters(), lr=4e-4)
    torch.save({"epoch": 12, "epochs_since_improvement": 2, "bleu-4": 0.24, "encoder": encoder.eval(),
                "decoder": decoder.eval(), "encoder_optimizer": None, "decoder_optimizer": optimizer},
               os.path.join(out, "BEST_checkpoint.pth.tar"))
    with open(os.path.join(out, "WORDMAP.json"), "w") as handle:
        json.dump(word_map(), handle)


def sat_tanh(out):
    sys.path.insert(0, os.path.join(HERE, "sat_tanh_repo"))
    import decoder as decoder_module
    import encoder as encoder_module

    torch.manual_seed(2)
    encoder = encoder_module.Encoder(channels=32)
    decoder = decoder_module.Decoder(vocabulary_size=len(WORDS), encoder_dim=32)
    decoder.use_tf = True  # the repository trains with teacher forcing

    def scores_of(images, captions):
        return decoder(encoder(images), captions)[0]

    encoder.train(), decoder.train()
    print("sat_tanh: final loss {:.3f}".format(train(list(encoder.parameters()) + list(decoder.parameters()),
                                                     scores_of, 56)))
    decoder.use_tf = False
    torch.save({"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}, os.path.join(out, "model.pth"))
    with open(os.path.join(out, "word_dict.json"), "w") as handle:
        json.dump(word_map(), handle)


def lightning(out):
    sys.path.insert(0, os.path.join(HERE, "lightning_repo"))
    import lit_caption

    torch.manual_seed(4)
    hparams = {"vocab_size": len(WORDS), "embed_dim": 16, "hidden_dim": 32, "attention_dim": 24, "num_layers": 2,
               "encoder_dim": 32, "dropout": 0.3, "lr": 3e-4, "batch_size": 32}
    net = lit_caption.CaptionNet(**{k: v for k, v in hparams.items() if k not in ("lr", "batch_size")})
    net.train()
    print("lightning: final loss {:.3f}".format(train(net.parameters(), net, 64)))
    net.eval()
    state = {"model." + k: v for k, v in net.state_dict().items()}
    torch.save({"epoch": 9, "global_step": 4500, "pytorch-lightning_version": "2.4.0", "state_dict": state,
                "hyper_parameters": hparams, "optimizer_states": [], "lr_schedulers": [], "callbacks": {}},
               os.path.join(out, "last.ckpt"))
    with open(os.path.join(out, "vocab.json"), "w") as handle:
        json.dump(word_map(), handle)


def signlang(out):
    # the training script pickles __main__.SignLanguageModel: run it as a script
    helpers = os.path.join(os.path.dirname(os.path.dirname(HERE)), "models")
    subprocess.run([sys.executable, os.path.join(HERE, "signlang_repo", "train.py"), out, helpers],
                   cwd=os.path.join(HERE, "signlang_repo"), check=True)


if __name__ == "__main__":
    # build_checkpoints.py OUT [NAME ...]: every repository's checkpoint, or only those named
    root = os.path.abspath(sys.argv[1])  # the signlang script runs in its own folder
    builders = (("sat_relu", sat_relu), ("sat_tanh", sat_tanh), ("lightning", lightning), ("signlang", signlang))
    unknown = set(sys.argv[2:]) - set(name for name, _ in builders)
    if unknown:
        sys.exit("unknown repositories {} (of {})".format(sorted(unknown), [name for name, _ in builders]))
    for name, build in builders:
        if sys.argv[2:] and name not in sys.argv[2:]:
            continue
        folder = os.path.join(root, name)
        os.makedirs(folder, exist_ok=True)
        build(folder)
    save_images(root, "calibration", 32, 998)
    save_images(root, "images", 8, 999)
