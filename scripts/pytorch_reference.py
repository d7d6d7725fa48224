"""Caption the sample images and classify the sample sequences with PyTorch (the starting point)."""
import json
import time

import numpy as np
import torch

from jetcap import samples
from jetcap.models.checkpoint import load_checkpoint
from jetcap.runtime import preprocess
from jetcap.runtime.sequences import load_sequence


def main():
    truth = json.loads(samples.samples_json().read_text())
    cap = load_checkpoint(samples.captioner_checkpoint())
    prep = preprocess.default_preprocessing(cap.config["image_size"], cap.config["mean"], cap.config["std"])
    paths = samples.sample_images()
    images = torch.from_numpy(preprocess.load_images(paths, prep))
    start = time.perf_counter()
    hyps = cap.model.caption(images, cap.vocab.start_id, cap.vocab.end_id, int(cap.config["max_len"]))
    elapsed = time.perf_counter() - start
    print("captioner ({}, {} images, {:.1f} ms/image, PyTorch eager):".format(
        cap.config["backbone"], len(paths), 1000 * elapsed / len(paths)))
    expected = dict((entry["file"].split("/")[-1], entry["caption"]) for entry in truth["images"])
    for path, hyp in zip(paths, hyps):
        text = cap.vocab.decode(hyp.tokens)
        mark = "ok" if text == expected.get(path.name) else "expected: " + str(expected.get(path.name))
        print("  {:<16} {:<52} {}".format(path.name, text, mark))
    cls = load_checkpoint(samples.classifier_checkpoint())
    print("classifier ({} classes, PyTorch eager):".format(len(cls.labels)))
    for path in samples.sample_sequences():
        seq = load_sequence(path)
        start = time.perf_counter()
        with torch.no_grad():
            probs = torch.softmax(cls.model(torch.from_numpy(seq[None]))[0], dim=1).numpy()[0]
        ms = 1000 * (time.perf_counter() - start)
        print("  {:<20} T={:<4} -> {:<12} p={:.3f} ({:.1f} ms)".format(
            path.name, len(seq), cls.labels[int(np.argmax(probs))], float(probs.max()), ms))


if __name__ == "__main__":
    main()
