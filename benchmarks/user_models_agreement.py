"""Agreement of jetcap bundles with each training repository's own PyTorch inference.

    .venv/bin/python benchmarks/user_models_agreement.py [--out DIR] [--images 200] [--sequences 200]

Builds the four test repositories' checkpoints (tests/export/user_models/build_checkpoints.py: saved
the way those repositories save them, the captioners trained briefly on toy captions), exports each
the way a user would (opset 13; fp32, fp16, int8; real calibration images), then captions held-out
toy images / classifies toy sequences with jetcap's runtime (ONNX Runtime) and with the repository's
own inference code, and prints a Markdown table of the fraction that agree.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPOS = os.path.join(ROOT, "tests", "export", "user_models")
sys.path.insert(0, REPOS)
sys.path.insert(0, ROOT)

import build_checkpoints  # noqa: E402

from jetcap.runtime import preprocess  # noqa: E402
from jetcap.runtime.manifest import Manifest  # noqa: E402
from jetcap.runtime.session import open_bundle  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")


def export(checkpoint, out, *args):
    cmd = [sys.executable, "-m", "jetcap", "export", checkpoint, "-o", out, "--force", "--max-batch", "8"]
    for precision in PRECISIONS:
        cmd += ["--precision", precision]
    started = time.time()
    subprocess.run(cmd + [str(a) for a in args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - started


def jetcap_captions(bundle, images, precision, beam=1):
    with open_bundle(Manifest.load(bundle), backend="onnxruntime", precision=precision) as session:
        return [h.tokens for h in session.caption_pipeline().caption(images, beam_size=beam)]


def agreement(got, want):
    return sum(g == w for g, w in zip(got, want)) / float(len(want))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--sequences", type=int, default=200)
    args = parser.parse_args()
    out = args.out or tempfile.mkdtemp(prefix="jetcap-agreement-")
    ck = os.path.join(out, "checkpoints")
    subprocess.run([sys.executable, os.path.join(REPOS, "build_checkpoints.py"), ck], check=True,
                   stdout=subprocess.DEVNULL)
    calibration = os.path.join(ck, "calibration")
    raw, _ = build_checkpoints.toy_images(args.images, 2024, 64)
    rows = []

    def images_for(bundle):
        prep = Manifest.load(bundle).preprocessing
        return np.stack([preprocess.preprocess_array(im, prep) for im in raw]).astype(np.float32)

    # Show-Attend-Tell tutorial: pickled modules, ReLU attention, 7x7 -> 14x14 pooling; own beam search
    bundle = os.path.join(out, "sat_relu")
    seconds = export(os.path.join(ck, "sat_relu", "BEST_checkpoint.pth.tar"), bundle, "--trust-pickle",
                     "--code-path", os.path.join(REPOS, "sat_relu_repo"), "--word-map",
                     os.path.join(ck, "sat_relu", "WORDMAP.json"), "--image-size", 64, "--calibration-data", calibration)
    sys.path.insert(0, os.path.join(REPOS, "sat_relu_repo"))
    import models

    saved = torch.load(os.path.join(ck, "sat_relu", "BEST_checkpoint.pth.tar"), weights_only=False)
    word_map = json.load(open(os.path.join(ck, "sat_relu", "WORDMAP.json")))
    images = images_for(bundle)
    own = [models.caption_image_beam_search(saved["encoder"], saved["decoder"], torch.from_numpy(im), word_map, 1)
           for im in images]
    own_beam = [models.caption_image_beam_search(saved["encoder"], saved["decoder"], torch.from_numpy(im), word_map, 3)
                for im in images]
    for precision in PRECISIONS:
        rows.append(("Show-Attend-Tell tutorial (pickled modules, ReLU, 14x14)", precision,
                     agreement(jetcap_captions(bundle, images, precision), own),
                     agreement(jetcap_captions(bundle, images, precision, 3), own_beam), seconds))

    # VGG variant: W/U/v tanh attention, parts as state_dicts, the user's classes
    bundle = os.path.join(out, "sat_tanh")
    seconds = export(os.path.join(ck, "sat_tanh", "model.pth"), bundle, "--code-path", os.path.join(REPOS, "sat_tanh_repo"),
                     "--model", "encoder=encoder:Encoder", "--model", "decoder=decoder:Decoder", "--model-args",
                     json.dumps({"decoder": {"vocabulary_size": 20, "encoder_dim": 32}}), "--word-map",
                     os.path.join(ck, "sat_tanh", "word_dict.json"), "--image-size", 56, "--calibration-data", calibration)
    sys.path.insert(0, os.path.join(REPOS, "sat_tanh_repo"))
    import decoder as decoder_module
    import encoder as encoder_module

    state = torch.load(os.path.join(ck, "sat_tanh", "model.pth"), weights_only=True)
    encoder = encoder_module.Encoder(channels=32).eval()
    encoder.load_state_dict(state["encoder"])
    decoder = decoder_module.Decoder(20, 32).eval()
    decoder.load_state_dict(state["decoder"])
    images = images_for(bundle)
    with torch.no_grad():
        own = [decoder.caption(encoder(torch.from_numpy(im)[None]), 1, 2) for im in images]
    for precision in PRECISIONS:
        rows.append(("VGG SAT variant (user classes, tanh W/U/v)", precision,
                     agreement(jetcap_captions(bundle, images, precision), own), None, seconds))

    # Lightning captioner: 2-layer nn.LSTM, beta gate, deep output; adapter file
    bundle = os.path.join(out, "lightning")
    adapter = os.path.join(REPOS, "lightning_repo", "jetcap_adapter.py")
    seconds = export(os.path.join(ck, "lightning", "last.ckpt"), bundle, "--code-path", os.path.join(REPOS, "lightning_repo"),
                     "--model", "lit_caption:CaptionNet", "--adapter", adapter, "--word-map",
                     os.path.join(ck, "lightning", "vocab.json"), "--image-size", 64, "--calibration-data", calibration)
    sys.path.insert(0, os.path.join(REPOS, "lightning_repo"))
    import lit_caption

    saved = torch.load(os.path.join(ck, "lightning", "last.ckpt"), weights_only=True)
    net = lit_caption.CaptionNet(**{k: v for k, v in saved["hyper_parameters"].items() if k not in ("lr", "batch_size")})
    net.load_state_dict({k[len("model."):]: v for k, v in saved["state_dict"].items()})
    net.eval()
    images = images_for(bundle)
    own = [net.generate(torch.from_numpy(im), 1, 2) for im in images]
    for precision in PRECISIONS:
        rows.append(("Lightning captioner (2-layer nn.LSTM, adapter file)", precision,
                     agreement(jetcap_captions(bundle, images, precision), own), None, seconds))

    # FastAPI sign-language classifier: MultiheadAttention, {'model_state_dict', 'label_encoder'}
    bundle = os.path.join(out, "signlang")
    seconds = export(os.path.join(ck, "signlang", "sign_model.pth"), bundle, "--code-path",
                     os.path.join(REPOS, "signlang_repo"), "--model", "processing.predictor:SignLanguageModel",
                     "--output", "0", "--max-len", 60)
    sys.path.insert(0, os.path.join(REPOS, "signlang_repo"))
    sys.path.insert(0, os.path.join(REPOS, "signlang_repo"))
    from processing.predictor import SignLanguageModel, predict
    from train import toy_sequences

    from jetcap.models.checkpoint_file import read_checkpoint

    model = SignLanguageModel(input_dim=63, num_classes=5).eval()
    model.load_state_dict(read_checkpoint(os.path.join(ck, "signlang", "sign_model.pth")).obj["model_state_dict"])
    classes = ["hello", "thanks", "yes", "no", "please"]
    seqs, _ = toy_sequences(args.sequences, 77)
    own = [predict(model, s, classes)[0] for s in seqs]
    for precision in PRECISIONS:
        with open_bundle(Manifest.load(bundle), backend="onnxruntime", precision=precision) as session:
            pipeline = session.classifier_pipeline()
            got = [pipeline.predict(s)["label"] for s in seqs]
        rows.append(("Sign-language classifier (user class, MultiheadAttention)", precision, agreement(got, own), None,
                     seconds))

    print("| model | precision | greedy captions / labels equal to its own inference | beam-3 captions equal | "
          "export (s, 3 precisions) |")
    print("|---|---|---|---|---|")
    for name, precision, greedy, beam, seconds in rows:
        print("| {} | {} | {:.1%} | {} | {:.1f} |".format(name, precision, greedy,
                                                       "-" if beam is None else "{:.1%}".format(beam), seconds))
    print("\n{} images, {} sequences; bundles in {}".format(args.images, args.sequences, out))


if __name__ == "__main__":
    main()
