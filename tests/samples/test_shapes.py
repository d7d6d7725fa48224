"""The synthetic captioning data set: deterministic, in spec, covered by its word map."""
import numpy as np
import pytest

from jetcap.samples import shapes


def test_same_seed_same_bytes_and_different_seed_differs():
    a_images, a_captions = shapes.generate(12, 7)
    b_images, b_captions = shapes.generate(12, 7)
    assert a_images.tobytes() == b_images.tobytes()
    assert a_captions == b_captions
    c_images, _ = shapes.generate(12, 8)
    assert a_images.tobytes() != c_images.tobytes()


def test_prefix_of_a_longer_run_is_the_same():
    short, short_caps = shapes.generate(3, 11)
    long, long_caps = shapes.generate(6, 11)
    assert np.array_equal(short, long[:3]) and short_caps == long_caps[:3]


def test_images_and_captions_in_spec():
    images, captions = shapes.generate(400, 3)
    assert images.shape == (400, 96, 96, 3) and images.dtype == np.uint8
    assert images.min() < 40 and images.max() > 200  # noisy backgrounds and saturated shapes
    assert len(captions) == 400
    mapping = shapes.word_map()
    seen = set()
    for caption in captions:
        words = caption.split()
        assert len(words) in (4, 9, 10)
        assert words[0] == "a" and words[1] in shapes.SIZES and words[2] in shapes.COLOURS
        assert words[3] in shapes.SHAPES
        if len(words) > 4:
            assert " ".join(words[4:-4]) in shapes.RELATIONS
        assert all(w in mapping for w in words)
        seen.update(words)
    assert seen == set(shapes.WORDS)  # every word of the vocabulary occurs


def test_word_map_specials_and_ids():
    mapping = shapes.word_map()
    assert mapping["<pad>"] == 0
    assert {"<start>", "<end>", "<unk>"} <= set(mapping)
    assert sorted(mapping.values()) == list(range(len(mapping)))
    assert len(mapping) == 4 + len(shapes.WORDS) == 17


def test_encode_pads_and_brackets():
    mapping = shapes.word_map()
    tokens = shapes.encode(["a small red circle", "a large blue square left of a small green triangle"])
    assert tokens.shape == (2, 12) and tokens.dtype == np.int64
    assert tokens[0, 0] == mapping["<start>"] and tokens[0, 5] == mapping["<end>"]
    assert (tokens[0, 6:] == mapping["<pad>"]).all()
    assert tokens[1, 11] == mapping["<end>"]
    with pytest.raises(ValueError):
        shapes.encode(["a " * 11], mapping)


def test_relation_follows_geometry():
    # The first shape named is left of (or above) the second one: check on the rendered colours.
    rgb = {"red": (210, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 210), "yellow": (225, 205, 40)}
    images, captions = shapes.generate(200, 21)
    checked = 0
    for image, caption in zip(images, captions):
        words = caption.split()
        if len(words) == 4 or words[2] == words[-2]:
            continue
        centres = []
        for colour in (words[2], words[-2]):
            dist = np.abs(image.astype(np.int32) - np.array(rgb[colour])).max(axis=2)
            ys, xs = np.nonzero(dist < 45)
            centres.append((ys.mean(), xs.mean()))
        (y1, x1), (y2, x2) = centres
        if words[4] == "left":
            assert x1 < x2 and abs(x2 - x1) > abs(y2 - y1)
        else:
            assert y1 < y2 and abs(y2 - y1) > abs(x2 - x1)
        checked += 1
    assert checked > 50
