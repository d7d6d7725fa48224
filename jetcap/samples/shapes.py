"""Synthetic captioning data: coloured shapes on noisy tinted backgrounds (numpy only, Python 3.6).

Every image is 96x96 RGB uint8 with one or two shapes (circle, square, triangle; red, green, blue,
yellow; small or large).  Its caption names them, and for two shapes their relation, which is read
from the dominant axis of their offset (the relation is never ambiguous):

    "a large yellow triangle"
    "a small red circle left of a large blue square"
    "a small green square above a small green circle"

The first shape named is the left one ("left of") or the upper one ("above").  Captions have at
most 10 words from a vocabulary of 13 words (:data:`WORDS`) plus the special tokens of
:func:`word_map`.  Generation is deterministic: the same ``(n, seed)`` gives the same bytes
(numpy's legacy ``RandomState`` stream, which numpy keeps stable across versions).
"""
import numpy as np

IMAGE_SIZE = 96
SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "large")
RELATIONS = ("left of", "above")
SPECIALS = ("<pad>", "<start>", "<end>", "<unk>")
WORDS = tuple(sorted(set(["a"] + list(SHAPES) + list(COLOURS) + list(SIZES) + " ".join(RELATIONS).split())))
MAX_WORDS = 10

TWO_SHAPE_FRACTION = 0.7
_RGB = {
    "red": (210.0, 40.0, 40.0),
    "green": (40.0, 170.0, 60.0),
    "blue": (40.0, 70.0, 210.0),
    "yellow": (225.0, 205.0, 40.0),
}
_RADIUS = {"small": (7.5, 10.0), "large": (15.0, 19.0)}
_EXTENT = 1.15  # half-extent of any shape, in radii (the triangle is the widest)
_MARGIN = 2.0  # pixels kept free at the image border
_GAP = 4.0  # pixels kept free between two shapes
_GRID = None


def word_map():
    """The caption vocabulary as ``{word: id}``: ``<pad>`` = 0, ``<start>`` = 1, ``<end>`` = 2,
    ``<unk>`` = 3, then the words of :data:`WORDS` in sorted order."""
    return dict((w, i) for i, w in enumerate(SPECIALS + WORDS))


def encode(captions, mapping=None, max_len=MAX_WORDS + 2):
    """Captions as an int64 array ``(n, max_len)``: ``<start>`` words ``<end>`` then ``<pad>``.

    Args:
        captions: list of caption strings.
        mapping: ``{word: id}``; default :func:`word_map`.
        max_len: columns of the result (default 12: 10 words + <start> + <end>).
    """
    mapping = word_map() if mapping is None else mapping
    out = np.full((len(captions), max_len), mapping["<pad>"], dtype=np.int64)
    for row, caption in enumerate(captions):
        ids = [mapping["<start>"]] + [mapping.get(w, mapping["<unk>"]) for w in caption.split()] + [mapping["<end>"]]
        if len(ids) > max_len:
            raise ValueError("caption {!r} needs {} tokens, more than max_len={}".format(caption, len(ids), max_len))
        out[row, :len(ids)] = ids
    return out


def generate(n, seed):
    """``n`` images and their captions, deterministic in ``(n, seed)``.

    Args:
        n: number of images (>= 0).
        seed: integer seed in [0, 2**32).
    Returns:
        ``(images, captions)``: uint8 array ``(n, 96, 96, 3)`` and a list of ``n`` strings.
    """
    rng = np.random.RandomState(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    captions = []
    for i in range(n):
        images[i], caption = _one(rng)
        captions.append(caption)
    return images, captions


def _grid():
    global _GRID
    if _GRID is None:
        ys, xs = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
        _GRID = (ys, xs, (ys - IMAGE_SIZE / 2.0) / IMAGE_SIZE, (xs - IMAGE_SIZE / 2.0) / IMAGE_SIZE)
    return _GRID


def _one(rng):
    ys, xs, gy, gx = _grid()
    base = rng.uniform(70.0, 190.0)
    tint = (base + rng.uniform(-25.0, 25.0, size=3)).astype(np.float32)
    slope = rng.uniform(-30.0, 30.0, size=2).astype(np.float32)
    canvas = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    canvas[:] = tint
    canvas += (gy * slope[0] + gx * slope[1])[:, :, None]

    objects = [_attributes(rng)]
    relation = None
    if rng.uniform() < TWO_SHAPE_FRACTION:
        objects.append(_attributes(rng))
        relation = RELATIONS[rng.randint(len(RELATIONS))]
        centres = _place_pair(rng, objects[0]["radius"], objects[1]["radius"], relation)
    else:
        e = objects[0]["radius"] * _EXTENT + _MARGIN
        centres = [(rng.uniform(e, IMAGE_SIZE - 1 - e), rng.uniform(e, IMAGE_SIZE - 1 - e))]
    for obj, (cy, cx) in zip(objects, centres):
        _draw(canvas, ys, xs, obj, cy, cx, rng)

    canvas += rng.normal(0.0, 8.0, size=canvas.shape).astype(np.float32)
    np.clip(canvas, 0.0, 255.0, out=canvas)
    words = [_phrase(objects[0])]
    if relation is not None:
        words += [relation, _phrase(objects[1])]
    return (canvas + 0.5).astype(np.uint8), " ".join(words)


def _attributes(rng):
    size = SIZES[rng.randint(len(SIZES))]
    lo, hi = _RADIUS[size]
    return {"shape": SHAPES[rng.randint(len(SHAPES))], "colour": COLOURS[rng.randint(len(COLOURS))],
            "size": size, "radius": rng.uniform(lo, hi)}


def _phrase(obj):
    return "a {} {} {}".format(obj["size"], obj["colour"], obj["shape"])


def _place_pair(rng, r_first, r_second, relation):
    """Centres (cy, cx) of two shapes: the first is left of / above the second along the dominant
    axis, whose offset is at least twice the other axis' offset, and the shapes do not touch."""
    e1, e2 = r_first * _EXTENT, r_second * _EXTENT
    lo1, hi2 = e1 + _MARGIN, IMAGE_SIZE - 1 - e2 - _MARGIN
    d_min = e1 + e2 + _GAP
    a1 = rng.uniform(lo1, hi2 - d_min)
    a2 = rng.uniform(a1 + d_min, hi2)
    d = a2 - a1
    b1 = rng.uniform(e1 + _MARGIN, IMAGE_SIZE - 1 - e1 - _MARGIN)
    low = max(e2 + _MARGIN, b1 - 0.5 * d)
    high = min(IMAGE_SIZE - 1 - e2 - _MARGIN, b1 + 0.5 * d)
    b2 = rng.uniform(low, high)
    if relation == "left of":
        return [(b1, a1), (b2, a2)]
    return [(a1, b1), (a2, b2)]


def _draw(canvas, ys, xs, obj, cy, cx, rng):
    r = obj["radius"]
    e = r * _EXTENT + 1.0
    y0, y1 = max(int(cy - e), 0), min(int(cy + e) + 2, IMAGE_SIZE)
    x0, x1 = max(int(cx - e), 0), min(int(cx + e) + 2, IMAGE_SIZE)
    dy = ys[y0:y1, x0:x1] - np.float32(cy)
    dx = xs[y0:y1, x0:x1] - np.float32(cx)
    if obj["shape"] == "circle":
        mask = dx * dx + dy * dy <= r * r
    elif obj["shape"] == "square":
        s = 0.82 * r
        mask = (np.abs(dx) <= s) & (np.abs(dy) <= s)
    else:  # upward triangle: apex 1.05 r above the centre, base 0.85 r below, half-width 1.15 r
        top, bottom = -1.05 * r, 0.85 * r
        mask = (dy <= bottom) & (np.abs(dx) <= (dy - top) * (_EXTENT * r / (bottom - top)))
    colour = np.asarray(_RGB[obj["colour"]], dtype=np.float32) + rng.uniform(-25.0, 25.0, size=3).astype(np.float32)
    canvas[y0:y1, x0:x1][mask] = colour
