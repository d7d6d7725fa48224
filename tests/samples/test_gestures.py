"""The synthetic gesture data set: deterministic and in spec."""
import numpy as np
import pytest

from jetcap.samples import gestures


def test_same_seed_same_bytes():
    a, la = gestures.generate(10, 5)
    b, lb = gestures.generate(10, 5)
    assert la == lb
    assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))
    c, _ = gestures.generate(10, 6)
    assert any(x.shape != y.shape or x.tobytes() != y.tobytes() for x, y in zip(a, c))


def test_sequences_in_spec():
    sequences, labels = gestures.generate(300, 1)
    assert len(sequences) == len(labels) == 300
    lengths = [len(s) for s in sequences]
    assert min(lengths) >= 20 and max(lengths) <= 120 and len(set(lengths)) > 50
    assert set(labels) == set(range(len(gestures.CLASSES))) and len(gestures.CLASSES) == 6
    for seq in sequences:
        assert seq.dtype == np.float32 and seq.shape[1] == 63
        assert np.isfinite(seq).all()
    frames = np.concatenate(sequences)
    present = frames[np.abs(frames).sum(axis=1) > 0]
    assert 0.9 * len(frames) < len(present) < len(frames)  # a few dropped detections (zero frames)
    xy = present.reshape(-1, 21, 3)[:, :, :2]
    assert -0.5 < xy.min() and xy.max() < 1.5


def test_fixed_length_and_bad_length():
    sequences, _ = gestures.generate(4, 2, length=37)
    assert [s.shape for s in sequences] == [(37, 63)] * 4
    with pytest.raises(ValueError):
        gestures.generate(1, 2, length=19)
    with pytest.raises(ValueError):
        gestures.generate(1, 2, length=121)


def test_classes_are_not_separable_by_position_alone():
    # Random placement: the mean wrist position says little about the class.
    sequences, labels = gestures.generate(300, 9)
    wrist = np.array([s[np.abs(s).sum(axis=1) > 0, :2].mean(axis=0) for s in sequences])
    means = np.array([wrist[np.array(labels) == k].mean(axis=0) for k in range(6)])
    assert np.ptp(means, axis=0).max() < 0.1
