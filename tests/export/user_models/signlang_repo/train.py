"""The training script: the model class is defined here, so ``torch.save(model)`` pickles
``__main__.SignLanguageModel``; the state_dict checkpoint keeps a fitted LabelEncoder beside it."""
import sys

import torch
from torch import nn  # noqa: F401  (the class body below needs it, as in the notebook)

from processing.predictor import SignLanguageModel as _Declared  # noqa: E402


class SignLanguageModel(_Declared):
    """Defined in the training script (``__main__``), as in the notebook."""


SignLanguageModel.__module__ = "__main__"

def toy_sequences(count, seed, width=63):
    """Keypoint-like sequences: class k moves feature group k (12 features) on a slow wave, the rest is noise."""
    import numpy as np

    rng = np.random.RandomState(seed)
    xs, ys = [], []
    for _ in range(count):
        label, length = rng.randint(5), rng.randint(8, 61)
        seq = rng.normal(0, 0.5, size=(length, width)).astype(np.float32)
        t = np.arange(length)[:, None]
        seq[:, label * 12:(label + 1) * 12] += np.sin(t * 0.3 + rng.uniform(0, 6)) * 1.5
        xs.append(seq)
        ys.append(label)
    return xs, ys


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[2])  # tests/models: writes a LabelEncoder pickle without scikit-learn
    from ckpt_helpers import label_encoder_object_checkpoint, make_label_encoder_class, sklearn_modules

    out, classes = sys.argv[1], ["hello", "thanks", "yes", "no", "please"]
    torch.manual_seed(3)
    model = SignLanguageModel(input_dim=63, num_classes=len(classes))
    xs, ys = toy_sequences(400, 0)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(120):  # one sequence length per batch (T varies between batches)
        length = 8 + (step * 7) % 53
        batch = torch.stack([torch.from_numpy(x[:length]) for x in xs[step % 10 * 40:(step % 10 + 1) * 40]
                             if len(x) >= length] or [torch.from_numpy(xs[0][:8])])
        labels = torch.tensor([y for x, y in zip(xs[step % 10 * 40:(step % 10 + 1) * 40], ys[step % 10 * 40:])
                               if len(x) >= length] or [ys[0]])
        loss = nn.functional.cross_entropy(model(batch)[0], labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    print("signlang: final loss {:.3f}".format(float(loss.detach())))
    label_encoder_object_checkpoint(out + "/sign_model.pth", model.state_dict(), classes)
    cls = make_label_encoder_class()
    encoder = cls()
    import numpy as np
    encoder.classes_ = np.array(classes)
    with sklearn_modules(cls):
        torch.save({"model": model, "label_encoder": encoder}, out + "/sign_model_full.pt")
