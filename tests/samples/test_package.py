"""The samples package: torch-free import, Python 3.6 syntax, shipped data present and consistent."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jetcap.samples as samples
from jetcap.samples import gestures, shapes

TORCH_FREE = ["jetcap/samples/__init__.py", "jetcap/samples/shapes.py", "jetcap/samples/gestures.py"]


def test_import_does_not_import_torch():
    code = ("import sys, jetcap.samples as s, jetcap.samples.shapes, jetcap.samples.gestures; "
            "s.sample_images(); s.sample_sequences(); s.captioner_checkpoint(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_torch_free_modules_are_python36_syntax():
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(vermin).is_file():
        pytest.skip("vermin is not installed")
    root = Path(samples.__file__).resolve().parents[2]
    result = subprocess.run([vermin, "--no-tips", "--violations", "-t=3.6-"] + [str(root / f) for f in TORCH_FREE],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_paths_are_package_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert samples.sample_dir().is_absolute() and samples.sample_dir().is_dir()
    assert samples.captioner_checkpoint().is_file()
    assert samples.classifier_checkpoint().is_file()
    assert samples.samples_json().is_file()


def test_sample_files_match_samples_json():
    meta = json.loads(samples.samples_json().read_text())
    images = samples.sample_images()
    assert [p.name for p in images] == ["sample_{:02d}.png".format(i) for i in range(8)]
    assert [e["file"] for e in meta["images"]] == ["images/" + p.name for p in images]
    sequences = samples.sample_sequences()
    assert sorted(p.stem for p in sequences) == sorted(gestures.CLASSES)
    assert meta["classes"] == gestures.CLASSES
    lengths = []
    for entry in meta["sequences"]:
        seq = np.load(str(samples.sample_dir() / entry["file"]))
        assert seq.dtype == np.float32 and seq.shape == (entry["frames"], 63)
        assert gestures.CLASSES[entry["label"]] == entry["class"]
        lengths.append(entry["frames"])
    assert len(set(lengths)) == 6 and min(lengths) >= 20 and max(lengths) <= 120
    assert meta["word_map"] == shapes.word_map()


def test_sample_images_are_the_generator_output():
    from PIL import Image

    meta = json.loads(samples.samples_json().read_text())
    expected, captions = shapes.generate(len(meta["images"]), meta["seed"])
    for i, (path, entry) in enumerate(zip(samples.sample_images(), meta["images"])):
        with Image.open(str(path)) as image:
            assert image.mode == "RGB" and image.size == (96, 96)
            assert np.array_equal(np.asarray(image), expected[i])
        assert entry["caption"] == captions[i]
