"""Sample models trained by jetcap itself, their synthetic data sets and sample inputs (Python 3.6).

* :mod:`jetcap.samples.shapes`: synthetic captioning images ("a small red circle left of ...").
* :mod:`jetcap.samples.gestures`: synthetic hand-keypoint gesture sequences (6 classes).
* :mod:`jetcap.samples.train`: the training scripts (torch) that made the shipped checkpoints.

The helpers below locate the shipped files relative to this package (never the working directory);
importing this module imports neither torch nor the generators.
"""
import pathlib


def sample_dir():
    """The directory holding the shipped checkpoints and sample inputs (``jetcap/samples/data``)."""
    return pathlib.Path(__file__).resolve().parent / "data"


def captioner_checkpoint():
    """Path of the shipped captioner checkpoint (``captioner.pt``, fp32)."""
    return sample_dir() / "captioner.pt"


def classifier_checkpoint():
    """Path of the shipped gesture-classifier checkpoint (``classifier.pt``, fp32)."""
    return sample_dir() / "classifier.pt"


def samples_json():
    """Path of ``samples.json``: ground-truth captions of the sample images and labels of the sample
    sequences."""
    return sample_dir() / "samples.json"


def sample_images():
    """Sorted paths of the sample PNG images (96x96 RGB, from a seed never used for training)."""
    return sorted((sample_dir() / "images").glob("sample_*.png"))


def sample_sequences():
    """Sorted paths of the sample gesture sequences (``<class name>.npy``, float32 ``(T, 63)``)."""
    return sorted((sample_dir() / "sequences").glob("*.npy"))
