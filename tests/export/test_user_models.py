"""Your model, as written: four training repositories' checkpoints (saved the way those repositories save
them, see ``user_models/``) through export (opset 13; fp32, fp16, int8) -> validate -> caption/predict
in an interpreter without torch, compared with each repository's own PyTorch inference.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from jetcap import samples
from jetcap.cli import cli
from jetcap.runtime import preprocess
from jetcap.runtime.manifest import Manifest

from runtime.test_no_torch import run_blocked

HERE = Path(__file__).resolve().parent / "user_models"
PRECISIONS = ("fp32", "fp16", "int8")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    out = tmp_path_factory.mktemp("user_checkpoints")
    subprocess.run([sys.executable, str(HERE / "build_checkpoints.py"), str(out)], check=True,
                   timeout=1200)  # a few minutes alone; generous so a loaded runner fails only on a real hang
    return out


def _jetcap(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result


def _export(out, *args):
    args = list(args) + ["-o", str(out), "--max-batch", "4"]
    if "--word-map" in args:  # captioners: real calibration images, as a user passes them
        args += ["--calibration-data", str(Path(args[0]).parents[1] / "calibration")]
    for precision in PRECISIONS:
        args += ["--precision", precision]
    # These models have 4-8 layers per graph, several of them over a quarter of a graph's MACs: the default
    # bound on what the INT8 search may keep float (25 % of the MACs) would let it keep none.  Measured with
    # Q/DQ run as TensorRT computes it: the lightning encoder at 1.04x the tolerance fully quantized, and a
    # near-tie in one sat_tanh beam caption that only the decoder step's worst layer, with the whole encoder
    # float, resolves.  The search and the task checks run as for any model; only the bound is lifted.
    args += ["--int8-max-float-fraction", "1.0"]
    result = _jetcap("export", *args)
    assert result.exit_code == 0, result.output
    return Manifest.load(out)


def _opsets(manifest):
    import onnx

    found = set()
    for precision in manifest.precisions:
        for graph in manifest.graph_names:
            model = onnx.load(manifest.graph_path(precision, graph), load_external_data=False)
            found |= {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")}
    return found


def _caption_without_torch(tmp_path, bundle, images, precision, beam=1):
    rc, stdout, stderr, blocked = run_blocked(tmp_path, "caption", bundle, *images, "--precision", precision,
                                              "--beam", beam, "--json")
    assert rc == 0, stderr
    assert blocked == []
    return [r["tokens"] for r in json.loads(stdout)]


def _images(checkpoints):
    """Held-out toy images (see build_checkpoints.py): in the distribution the captioners learnt."""
    return sorted(str(p) for p in (checkpoints / "images").glob("*.png"))


def _preprocessed(manifest, paths):
    return torch.from_numpy(preprocess.load_images(paths, manifest.preprocessing))


def _agreement(got, want):
    return sum(g == w for g, w in zip(got, want)) / float(len(want))


# Random-weight models make near-ties: where the best two words of a step differ by less than float
# rounding, any implementation (PyTorch with another thread count included) may pick either.  Exact
# equality is asserted on the images whose greedy path is decisive at every step, for the precision's
# rounding; the ties are counted, and must be few.
DECISIVE = {"fp32": 1e-3, "fp16": 2e-2}


def _greedy_margins(bundle, paths):
    """Per image, the smallest gap between the best and second-best log-probability along its greedy
    path (ONNX Runtime FP32, which export proved equal to the PyTorch model)."""
    from jetcap.runtime import decoding
    from jetcap.runtime.session import open_bundle

    manifest = Manifest.load(bundle)
    images = preprocess.load_images(paths, manifest.preprocessing)
    margins = []
    with open_bundle(manifest, backend="onnxruntime") as session:
        pipeline = session.caption_pipeline()
        for i in range(len(images)):
            gaps = []
            decoder = pipeline.decoder_session(pipeline.encode(images[i:i + 1]))
            plain = decoder.step

            def step(words, plain=plain, gaps=gaps):
                log_probs, alpha = plain(words)
                top = np.sort(log_probs[0])[-2:]
                gaps.append(float(top[1] - top[0]))
                return log_probs, alpha

            decoder.step = step
            decoder.topk = 0  # search the full distribution, through the wrapped step
            decoding.greedy_decode(decoder, 1, pipeline.vocab.start_id, pipeline.vocab.end_id, 20)
            margins.append(min(gaps))
    return margins


def _assert_equal_where_decisive(got, own, margins, precision):
    decisive = [i for i, m in enumerate(margins) if m > DECISIVE[precision]]
    assert len(decisive) >= len(own) - 2, (precision, margins)
    assert [got[i] for i in decisive] == [own[i] for i in decisive], precision


def _captions_match(tmp_path, bundle, paths, own):
    """fp32 and fp16 captions (no torch) equal the model's own where decisive; int8 mostly."""
    margins = _greedy_margins(bundle, paths)
    for precision in ("fp32", "fp16"):
        _assert_equal_where_decisive(_caption_without_torch(tmp_path, bundle, paths, precision), own, margins,
                                     precision)
    assert _agreement(_caption_without_torch(tmp_path, bundle, paths, "int8"), own) >= 0.6


def _import_repo(folder, *modules):
    sys.path.insert(0, str(HERE / folder))
    try:
        return [__import__(m) for m in modules]
    finally:
        sys.path.remove(str(HERE / folder))


# -- a Show-Attend-Tell tutorial: whole pickled modules, ReLU attention, pooling 7x7 -> 14x14 -------------------

@pytest.fixture(scope="module")
def sat_relu(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "sat_relu"
    manifest = _export(out, checkpoints / "sat_relu" / "BEST_checkpoint.pth.tar", "--trust-pickle",
                       "--code-path", HERE / "sat_relu_repo", "--word-map", checkpoints / "sat_relu" / "WORDMAP.json",
                       "--image-size", 64)
    return out, manifest


def test_pickled_sat_modules_export_as_written(sat_relu):
    out, manifest = sat_relu
    assert manifest.data["source"]["kind"] == "pickled modules"
    assert "models.DecoderWithAttention" in manifest.data["source"]["model"]
    assert _opsets(manifest) == {13}
    patches = {(p["graph"], p["patch"], p["module"]) for p in manifest.data["patches"]}
    assert patches == {("encoder", "adaptive-avg-pool2d", "parts.encoder.adaptive_pool")}
    checks = {c["check"]: c for c in manifest.data["source_checks"]}
    assert checks["adapter reproduces the model's own forward"]["status"] == "passed"
    assert checks["attention projection once per image"]["status"] == "passed"
    assert manifest.graph("decoder_step")["inputs"][3]["shape"] == ["batch", 196, 48]  # the 14x14 grid, not 7x7
    # the tutorial's (encoder_out * alpha.unsqueeze(2)).sum(dim=1) runs as one MatMul (jetcap/export/rewrites.py)
    assert "decoder_step: 1 attention-weighted sum(s) (Mul + ReduceSum) as MatMul" in manifest.data["export"]["notes"]
    # the values no tensor holds are recorded with where they came from, assumptions named
    assert manifest.data["config_sources"]["image_size"] == "--image-size"
    assert manifest.data["config_sources"]["mean"].startswith("assumed")


def test_pickled_sat_captions_equal_the_repositorys_own_inference(sat_relu, checkpoints, tmp_path):
    out, manifest = sat_relu
    # the repository's module is called ``models``, like tests/models: load it under its own name
    from jetcap.util.pyfile import import_python_file

    models = import_python_file(HERE / "sat_relu_repo" / "models.py", "_sat_relu_models")
    shadowed = sys.modules.get("models")
    sys.modules["models"] = models
    try:
        ckpt = torch.load(str(checkpoints / "sat_relu" / "BEST_checkpoint.pth.tar"), weights_only=False)
    finally:
        sys.modules["models"] = shadowed
        if shadowed is None:
            del sys.modules["models"]
    word_map = json.loads((checkpoints / "sat_relu" / "WORDMAP.json").read_text())
    paths = _images(checkpoints)
    images = _preprocessed(manifest, paths)
    greedy = [models.caption_image_beam_search(ckpt["encoder"], ckpt["decoder"], im, word_map, beam_size=1)
              for im in images]
    beam = [models.caption_image_beam_search(ckpt["encoder"], ckpt["decoder"], im, word_map, beam_size=3)
            for im in images]
    assert len({tuple(c) for c in greedy}) > 1, "the test model should caption images differently"
    _captions_match(tmp_path, out, paths, greedy)
    assert _agreement(_caption_without_torch(tmp_path, out, paths, "fp32", beam=3), beam) >= 0.8


def test_pickled_sat_validates_against_the_users_code(sat_relu, checkpoints):
    out, _ = sat_relu
    result = _jetcap("validate", out, "--checkpoint", checkpoints / "sat_relu" / "BEST_checkpoint.pth.tar",
                     "--trust-pickle", "--code-path", HERE / "sat_relu_repo")
    assert result.exit_code == 0, result.output


# -- a VGG Show-Attend-Tell variant: W/U/v tanh attention, parts saved as state_dicts, user classes ----------------

TANH_ARGS = ("--code-path", HERE / "sat_tanh_repo", "--model", "encoder=encoder:Encoder", "--model-args",
             json.dumps({"decoder": {"vocabulary_size": 20, "encoder_dim": 32}}))


@pytest.fixture(scope="module")
def sat_tanh(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "sat_tanh"
    manifest = _export(out, checkpoints / "sat_tanh" / "model.pth", *TANH_ARGS, "--model", "decoder=decoder:Decoder",
                       "--word-map", checkpoints / "sat_tanh" / "word_dict.json", "--image-size", 56)
    return out, manifest


def test_user_classes_with_a_weights_only_checkpoint(sat_tanh, checkpoints, tmp_path):
    out, manifest = sat_tanh
    assert manifest.data["source"]["kind"] == "user code"
    assert "weights read with torch.load(weights_only=True)" in manifest.data["export"]["notes"]
    assert "decoder_step: 1 attention-weighted sum(s) (Mul + ReduceSum) as MatMul" in manifest.data["export"]["notes"]
    assert _opsets(manifest) == {13}
    # the INT8 search's task step ends with every caption agreeing, and a layer it kept float says so.
    # Whether it has to act depends on the CPU's float kernels: fully quantized, one beam caption (a near-tie,
    # toy_10.png) differed from PyTorch's on a 2-core AMD EPYC (AVX2) and agreed on an AVX-512 Xeon.  The
    # procedure itself is tested deterministically in test_int8_task.py.
    search = manifest.data["variants"]["int8"]["quantization"]["search"]
    assert search["task"]["passed"], search["task"]
    kept = [k for g in search["graphs"].values() for k in g["kept_float"]]
    for_task = [k for k in kept if k["reason"].startswith("kept float for the task checks")]
    assert bool(for_task) == (not search["task"]["passed_initially"]), search["task"]
    assert all(v["task"]["passed"] for v in manifest.data["validation"].values())
    checks = {c["check"]: c for c in manifest.data["source_checks"]}
    # the decoder's eval-mode forward feeds back its own argmax: the adapter matched it free-running
    assert checks["adapter reproduces the model's own forward"]["detail"].startswith("free-running")
    encoder_module, decoder_module = _import_repo("sat_tanh_repo", "encoder", "decoder")
    state = torch.load(str(checkpoints / "sat_tanh" / "model.pth"), weights_only=True)
    encoder = encoder_module.Encoder(channels=32).eval()
    encoder.load_state_dict(state["encoder"])
    decoder = decoder_module.Decoder(20, 32).eval()
    decoder.load_state_dict(state["decoder"])
    paths = _images(checkpoints)
    with torch.no_grad():
        own = [decoder.caption(encoder(im[None]), start_id=1, end_id=2) for im in _preprocessed(manifest, paths)]
    assert len({tuple(c) for c in own}) > 1
    _captions_match(tmp_path, out, paths, own)
    result = _jetcap("validate", out, "--checkpoint", checkpoints / "sat_tanh" / "model.pth", *TANH_ARGS,
                     "--model", "decoder=decoder:Decoder")
    assert result.exit_code == 0, result.output


def test_a_rebuild_that_is_not_the_users_code_fails_validation(checkpoints, tmp_path):
    # ReLU where the user's attention has tanh, same tensor names: the export agrees with itself ...
    wrong = _export(tmp_path / "wrong", checkpoints / "sat_tanh" / "model.pth", *TANH_ARGS,
                    "--model", "decoder=wrong_rebuild:Decoder", "--word-map",
                    checkpoints / "sat_tanh" / "word_dict.json", "--image-size", 56)
    assert wrong.data["validation"]["fp32"]["passed"]
    # ... and validate against the user's own code catches it
    result = _jetcap("validate", tmp_path / "wrong", "--checkpoint", checkpoints / "sat_tanh" / "model.pth",
                     *TANH_ARGS, "--model", "decoder=decoder:Decoder", "--precision", "fp32")
    assert result.exit_code == 1, result.output
    assert "FAILED" in result.output


# -- a Lightning captioner: 2-layer nn.LSTM decoder (state (layers, B, D)), beta gate, deep output ------------------

LIT_ARGS = ("--code-path", HERE / "lightning_repo", "--model", "lit_caption:CaptionNet")


def test_the_builtin_adapter_refuses_what_it_cannot_wire(checkpoints, tmp_path):
    result = _jetcap("export", checkpoints / "lightning" / "last.ckpt", *LIT_ARGS, "--word-map",
                     checkpoints / "lightning" / "vocab.json", "-o", tmp_path / "b", "--family", "captioner")
    assert result.exit_code == 2
    assert "--adapter" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def lightning(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "lightning"
    manifest = _export(out, checkpoints / "lightning" / "last.ckpt", *LIT_ARGS, "--adapter",
                       HERE / "lightning_repo" / "jetcap_adapter.py", "--word-map",
                       checkpoints / "lightning" / "vocab.json", "--image-size", 64)
    return out, manifest


def test_custom_adapter_with_multilayer_lstm_state(lightning, checkpoints, tmp_path):  # noqa: C901
    out, manifest = lightning
    assert _opsets(manifest) == {13}
    inputs = {t["name"]: t["shape"] for t in manifest.graph("decoder_step")["inputs"]}
    assert inputs["h"] == [2, "batch", 32] and inputs["c"] == [2, "batch", 32]
    assert manifest.data["decoder"]["state"][0] == {"input": "h", "output": "h_new", "init": "h0"}
    assert manifest.data["adapter"]["file"] == "jetcap_adapter.py"
    assert "stripped common prefix 'model.'" in " ".join(manifest.data["export"]["notes"])
    (lit_caption,) = _import_repo("lightning_repo", "lit_caption")
    ckpt = torch.load(str(checkpoints / "lightning" / "last.ckpt"), weights_only=True)
    net = lit_caption.CaptionNet(**{k: v for k, v in ckpt["hyper_parameters"].items() if k not in ("lr", "batch_size")})
    net.load_state_dict({k[len("model."):]: v for k, v in ckpt["state_dict"].items()})
    net.eval()
    paths = _images(checkpoints)
    own = [net.generate(im, start_id=1, end_id=2) for im in _preprocessed(manifest, paths)]
    assert len({tuple(c) for c in own}) > 1
    _captions_match(tmp_path, out, paths, own)
    # beam search reorders the (layers, batch, dim) state along its batch axis
    beam = _caption_without_torch(tmp_path, out, paths, "fp32", beam=3)
    assert len(beam) == len(paths)
    result = _jetcap("validate", out, "--checkpoint", checkpoints / "lightning" / "last.ckpt", *LIT_ARGS,
                     "--adapter", HERE / "lightning_repo" / "jetcap_adapter.py")
    assert result.exit_code == 0, result.output


# -- a FastAPI sign-language classifier: MultiheadAttention, LabelEncoder, pickled __main__ module ------------------

@pytest.fixture(scope="module")
def signlang(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundles") / "signlang"
    manifest = _export(out, checkpoints / "signlang" / "sign_model.pth", "--code-path", HERE / "signlang_repo",
                       "--model", "processing.predictor:SignLanguageModel", "--output", "0", "--max-len", 60)
    return out, manifest


def _sequences(tmp_path, lengths, width=63):
    """Toy keypoint sequences like the classifier's training data (see signlang_repo/train.py)."""
    rng = np.random.RandomState(5)
    paths = []
    for i, length in enumerate(lengths):
        path = tmp_path / "seq_{}_{}.npy".format(i, length)
        seq = rng.normal(0, 0.5, size=(length, width)).astype(np.float32)
        label = i % 5
        seq[:, label * 12:(label + 1) * 12] += np.sin(np.arange(length)[:, None] * 0.3 + i) * 1.5
        np.save(str(path), seq)
        paths.append(str(path))
    return paths


def _own_labels(checkpoints, paths):
    _import_repo("signlang_repo", "processing.predictor")
    predictor = sys.modules["processing.predictor"]
    model = predictor.SignLanguageModel(input_dim=63, num_classes=5).eval()
    model.load_state_dict(_state(checkpoints))
    classes = ["hello", "thanks", "yes", "no", "please"]
    return [predictor.predict(model, np.load(p), classes)[0] for p in paths]


def _state(checkpoints):
    from jetcap.models.checkpoint_file import read_checkpoint

    return read_checkpoint(checkpoints / "signlang" / "sign_model.pth").obj["model_state_dict"]


def _predict_without_torch(tmp_path, bundle, paths, precision):
    rc, stdout, stderr, blocked = run_blocked(tmp_path, "predict", bundle, *paths, "--precision", precision, "--json")
    assert rc == 0, stderr
    assert blocked == []
    return [r["label"] for r in json.loads(stdout)]


def test_classifier_forward_as_written_with_dynamic_T(signlang, checkpoints, tmp_path):
    out, manifest = signlang
    assert manifest.data["source"]["kind"] == "user code"
    assert manifest.labels == ["hello", "thanks", "yes", "no", "please"]  # the LabelEncoder, read without sklearn
    assert _opsets(manifest) == {13}
    assert [p["patch"] for p in manifest.data["patches"]] == ["multihead-attention"]
    assert any(c["check"] == "export patches equal the unpatched model" and c["status"] == "passed"
               for c in manifest.data["source_checks"])
    assert manifest.axes["T"]["min"] == 2  # MaxPool1d(2) needs two frames: probed, not assumed
    paths = _sequences(tmp_path, [2, 9, 31, 60, 17, 44, 3, 25])
    own = _own_labels(checkpoints, paths)
    assert len(set(own)) > 1
    for precision in PRECISIONS:
        got = _predict_without_torch(tmp_path, out, paths, precision)
        assert _agreement(got, own) >= (1.0 if precision == "fp32" else 0.75), (precision, got, own)
    result = _jetcap("validate", out, "--checkpoint", checkpoints / "signlang" / "sign_model.pth",
                     "--code-path", HERE / "signlang_repo", "--model", "processing.predictor:SignLanguageModel")
    assert result.exit_code == 0, result.output


def test_pickled_main_module_found_in_a_subfolder(checkpoints, tmp_path):
    # torch.save(model) in the training script pickles __main__.SignLanguageModel; the class is found in
    # processing/predictor.py below --code-path; the LabelEncoder beside it needs neither sklearn nor trust
    manifest = _export(tmp_path / "b", checkpoints / "signlang" / "sign_model_full.pt", "--trust-pickle",
                       "--code-path", HERE / "signlang_repo", "--max-len", 60)
    assert manifest.data["source"]["kind"] == "pickled modules"
    assert manifest.labels == ["hello", "thanks", "yes", "no", "please"]
    paths = _sequences(tmp_path, [5, 40])
    assert _predict_without_torch(tmp_path, tmp_path / "b", paths, "fp32") == _own_labels(checkpoints, paths)


def test_python_api_exports_a_model_built_in_a_script(checkpoints, tmp_path):
    from jetcap.export import export_model

    sys.path.insert(0, str(HERE / "signlang_repo"))
    try:
        from processing.predictor import SignLanguageModel
    finally:
        sys.path.remove(str(HERE / "signlang_repo"))
    model = SignLanguageModel(input_dim=63, num_classes=5)
    model.load_state_dict(_state(checkpoints))
    summary = export_model(model, tmp_path / "api", labels=["hello", "thanks", "yes", "no", "please"],
                           config={"max_len": 60}, output="0")
    assert summary["source"] == "python api" and summary["validation"] == {"fp32": True}
    paths = _sequences(tmp_path, [12, 33])
    assert _predict_without_torch(tmp_path, tmp_path / "api", paths, "fp32") == _own_labels(checkpoints, paths)


def test_json_output_stays_json_when_the_exporter_fails(tmp_path):
    code = tmp_path / "fft_model.py"
    code.write_text("import torch\n\nclass Spectral(torch.nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.fc = torch.nn.Linear(5, 3)\n\n"
                    "    def forward(self, x):\n        return self.fc(torch.fft.rfft(x, dim=1).abs().mean(dim=1)[:, :5])\n")
    ckpt = tmp_path / "fft.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(3, 5), "fc.bias": torch.zeros(3)}}, str(ckpt))
    proc = subprocess.run([sys.executable, "-m", "jetcap", "export", str(ckpt), "--model", str(code) + ":Spectral",
                           "--input-size", "8", "--max-len", "16", "-o", str(tmp_path / "b"), "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2])))
    assert proc.returncode == 2, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["exit_code"] == 2 and "fft" in reply["error"].lower()
    assert "Traceback" not in proc.stderr and len(proc.stderr) < 5000
    assert not (tmp_path / "b").exists()


def test_a_two_hand_classifier_exports_without_data_and_benches_as_written(tmp_path):
    """126 features per frame (2 hands x 21 x 3), not the shipped gestures' 63: the checks run on seeded
    sequences of the model's own width, and bench times the user's code (--code-path / --model)."""
    code = tmp_path / "two_hands.py"
    code.write_text("import torch\n\nclass TwoHands(torch.nn.Module):\n    def __init__(self):\n"
                    "        super().__init__()\n        self.rnn = torch.nn.GRU(126, 16, batch_first=True)\n"
                    "        self.fc = torch.nn.Linear(16, 4)\n\n"
                    "    def forward(self, x):\n        out, _ = self.rnn(x)\n        return self.fc(out.mean(dim=1))\n")
    torch.manual_seed(0)
    sys.path.insert(0, str(tmp_path))
    try:
        import two_hands
    finally:
        sys.path.remove(str(tmp_path))
    ckpt = tmp_path / "two_hands.pt"
    torch.save({"state_dict": two_hands.TwoHands().state_dict(), "labels": ["a", "b", "c", "d"]}, str(ckpt))
    bundle = tmp_path / "bundle"
    model = ["--model", str(code) + ":TwoHands"]
    result = _jetcap("export", ckpt, *model, "--max-len", "40", "-o", bundle)
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["input_size"] == 126 and manifest["validation"]["fp32"]["passed"]
    result = _jetcap("bench", bundle, "--checkpoint", ckpt, *model, "--only", "pytorch", "--only",
                     "onnxruntime-fp32", "--repeat", "2", "--warmup", "0", "--cold-runs", "0",
                     "--matmul-size", "16", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    names = [c["name"] for c in report["configurations"] if "error" not in c]
    assert "pytorch" in names and "onnxruntime-fp32" in names, report["configurations"]


def _user_module(folder, name, source):
    """``(path, module)`` of a user's model file ``name.py`` written in ``folder`` and imported."""
    import importlib

    code = folder / (name + ".py")
    code.write_text(source)
    sys.path.insert(0, str(folder))
    try:
        return code, importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))


def test_a_forward_ending_in_softmax_gives_its_own_probabilities_not_a_softmax_of_them(tmp_path):
    """``forward -> (attention weights (B, T), probabilities (B, C))``, as deployment code often ends: the
    logits are the (batch, classes) output, not the first (batch, T) one; the graph's logits are the log of
    the probabilities as they are, read as such (manifest config ``scores``): predict reports the model's own
    probabilities, exactly, whatever the number of classes (a softmax of them would not)."""
    code, soft_head = _user_module(tmp_path, "soft_head", (
        "import torch\n\nclass SoftHead(torch.nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.rnn = torch.nn.GRU(6, 16, batch_first=True)\n"
        "        self.score = torch.nn.Linear(16, 1)\n        self.fc = torch.nn.Linear(16, 400)\n\n"
        "    def forward(self, x):\n        out, _ = self.rnn(x)\n"
        "        weights = torch.softmax(self.score(out).squeeze(-1), dim=1)\n"
        "        pooled = (weights.unsqueeze(-1) * out).sum(dim=1)\n"
        "        return weights, torch.softmax(40.0 * self.fc(pooled), dim=-1)\n"))
    torch.manual_seed(3)
    model = soft_head.SoftHead().eval()
    ckpt = tmp_path / "soft.pt"
    labels = ["class_{}".format(i) for i in range(400)]
    torch.save({"state_dict": model.state_dict(), "labels": labels}, str(ckpt))
    bundle = tmp_path / "bundle"
    args = ["--model", str(code) + ":SoftHead", "--max-len", "20"]
    result = _jetcap("export", ckpt, *args, "-o", bundle)
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["config"]["logits_output"] == "output_1"
    assert manifest["config"]["scores"] == "probabilities"
    sequence = np.random.RandomState(0).normal(size=(9, 6)).astype(np.float32)
    path = tmp_path / "seq.npy"
    np.save(str(path), sequence)
    rc, stdout, stderr, blocked = run_blocked(tmp_path, "predict", bundle, str(path), "--json")
    assert rc == 0 and blocked == [], stderr
    reported = json.loads(stdout)[0]["probabilities"]
    with torch.no_grad():
        own = model(torch.from_numpy(sequence[None]))[1][0].numpy()
    got = np.array([reported[label] for label in labels] if isinstance(reported, dict) else reported)
    assert (own < 2.0 ** -14).sum() > 300  # confident: hundreds of tiny probabilities, kept as they are
    np.testing.assert_allclose(got, own, rtol=1e-4, atol=1e-7)
    result = _jetcap("validate", bundle, "--checkpoint", ckpt, "--model", str(code) + ":SoftHead")
    assert result.exit_code == 0, result.output


def test_calibration_sequences_outside_the_T_range_are_left_out_not_cut_or_padded(tmp_path):
    code, tiny_gru = _user_module(tmp_path, "tiny_gru", (
        "import torch\n\nclass TinyGRU(torch.nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.rnn = torch.nn.GRU(4, 8, batch_first=True)\n"
        "        self.fc = torch.nn.Linear(8, 2)\n\n"
        "    def forward(self, x):\n        out, _ = self.rnn(x)\n        return self.fc(out.mean(dim=1))\n"))
    torch.manual_seed(1)
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": tiny_gru.TinyGRU().state_dict(), "labels": ["x", "y"]}, str(ckpt))
    data = tmp_path / "clips"
    data.mkdir()
    rng = np.random.RandomState(2)
    for i, length in enumerate([30, 12, 40, 15, 18]):  # two longer than --max-len 20
        np.save(str(data / "clip_{}.npy".format(i)), rng.normal(size=(length, 4)).astype(np.float32))
    args = ["--model", str(code) + ":TinyGRU", "--max-len", "20", "--calibration-data", str(data)]
    result = _jetcap("export", ckpt, *args, "-o", tmp_path / "bundle")
    assert result.exit_code == 0, result.output
    assert "2 of the 5 calibration sequences read from --calibration-data have fewer than" in result.output
    assert json.loads((tmp_path / "bundle" / "manifest.json").read_text())["validation"]["fp32"]["passed"]
    result = _jetcap("export", ckpt, *args[:-1], str(data), "--min-len", "35", "--max-len", "36", "-o",
                     tmp_path / "none")
    assert result.exit_code == 2 and "none of the" in result.output and "T range" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "none").exists()
