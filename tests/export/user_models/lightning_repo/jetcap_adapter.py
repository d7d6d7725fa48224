"""jetcap adapter for CaptionNet: how one decoder step is wired (see docs/EXPORT.md, 'Adapters')."""
STATE = ("h", "c")            # carried from step to step; here (layers, batch, hidden)
CONTEXT = ("features",)       # read by every step, unchanged
# INT8: measured on this model, quantizing any of the step's layers changed 3 of 16 captions (the
# export gate passed, validate's caption check did not); the step stays float, the encoder is INT8.
INT8_KEEP_FLOAT = ("/rnn/", "/L_o/", "/attn/", "/L_h/", "/L_z/", "/beta/")


def encode(model, images):
    features = model.features(images)
    h, c = model.init_state(features)
    return {"features": features, "h": h, "c": c}


def step(model, words, h, c, features):
    scores, h, c, alpha = model.decode(words, h, c, features)
    return {"scores": scores, "h": h, "c": c, "alpha": alpha}


def teacher_forced(model, images, captions):
    return model(images, captions)
