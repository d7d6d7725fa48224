"""Attention maps of a caption, drawn with Pillow only (Python 3.6, no matplotlib, no torch).

One picture per image: a grid of tiles, the input image first, then one tile per generated word with
the decoder's attention over the encoder's feature grid upsampled onto the image as a heat overlay
(blue = little attention, red = most, normalized per word) and the word as the tile's title.

The attention grid covers the whole (resized) image the encoder saw, so overlaying it on the original
image stretched to the tile keeps the correspondence whatever the original aspect ratio.
"""
import math
import os

import numpy as np

from jetcap.errors import UsageError
from jetcap.util.fsio import atomic_path
from jetcap.util.lazy import require

# Heat colours from low to high attention (a small "jet"-like ramp).
HEAT_RAMP = np.array([
    [0, 0, 143], [0, 0, 255], [0, 255, 255], [255, 255, 0], [255, 0, 0], [128, 0, 0],
], dtype=np.float32)
OVERLAY_WEIGHT = 0.5
BACKGROUND = (255, 255, 255)
TEXT_COLOUR = (0, 0, 0)
PAD = 4


def feature_grid(num_pixels, image_size=None, stride=32):
    """``(rows, cols)`` of the encoder's feature grid holding ``num_pixels`` attention weights.

    Args:
        num_pixels: length of one attention vector (P).
        image_size: the encoder's input ``(height, width)``; used when the grid is not square
            (an un-pooled feature map is ``ceil(h / stride) x ceil(w / stride)``).
        stride: the backbone's total stride (32 for MobileNets).
    """
    num_pixels = int(num_pixels)
    if num_pixels < 1:
        raise UsageError("attention has no pixels")
    if image_size is not None:
        rows = -(-int(image_size[0]) // stride)
        cols = -(-int(image_size[1]) // stride)
        if rows * cols == num_pixels:
            return rows, cols
    side = int(round(math.sqrt(num_pixels)))
    if side * side == num_pixels:
        return side, side
    return 1, num_pixels


def heat_colours(values):
    """RGB float32 ``(..., 3)`` of ``values`` in [0, 1] along :data:`HEAT_RAMP`."""
    values = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    position = values * (len(HEAT_RAMP) - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, len(HEAT_RAMP) - 1)
    frac = (position - low)[..., None]
    return HEAT_RAMP[low] * (1.0 - frac) + HEAT_RAMP[high] * frac


def _font(size):
    ImageFont = require("PIL.ImageFont")
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()  # older Pillow (JetPack's): the small bitmap font


def _text_size(draw, text, font):
    if hasattr(draw, "textbbox"):  # Pillow >= 8
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        return right - left, bottom
    return draw.textsize(text, font=font)  # Pillow < 8 (removed in 10)


def overlay(tile_image, alpha, grid):
    """``tile_image`` (RGB PIL) blended with the heat colours of ``alpha`` (P,) laid out as ``grid``."""
    Image = require("PIL.Image")
    weights = np.asarray(alpha, dtype=np.float32).reshape(grid)
    peak = float(weights.max()) if weights.size else 0.0
    weights = weights / peak if peak > 0 else np.zeros_like(weights)
    heat = Image.fromarray(np.ascontiguousarray(weights, dtype=np.float32)).resize(tile_image.size, Image.BILINEAR)
    colours = heat_colours(np.asarray(heat, dtype=np.float32))
    base = np.asarray(tile_image, dtype=np.float32)
    blended = (1.0 - OVERLAY_WEIGHT) * base + OVERLAY_WEIGHT * colours
    return Image.fromarray(np.clip(blended + 0.5, 0, 255).astype(np.uint8))


def render_attention_map(image, words, alphas, grid=None, image_size=None, tile=160, columns=5, font_size=14):
    """The attention-map picture of one caption.

    Args:
        image: the original RGB PIL image.
        words: the caption's words (one tile each).
        alphas: ``(len(words), P)`` attention weights, one row per word.
        grid: ``(rows, cols)`` of the feature grid (default: :func:`feature_grid` of P and ``image_size``).
        image_size: the encoder's input ``(height, width)``, to lay out a non-square grid.
        tile: the longer side of each tile in pixels (default 160).
        columns: tiles per row (default 5).
        font_size: title size where Pillow has a scalable default font.
    Returns:
        an RGB PIL image.
    """
    Image = require("PIL.Image")
    ImageDraw = require("PIL.ImageDraw")
    alphas = np.asarray(alphas, dtype=np.float32)
    words = [str(w) for w in words]
    if len(words) and (alphas.ndim != 2 or alphas.shape[0] != len(words)):
        raise UsageError("{} words but attention of shape {}".format(len(words), alphas.shape))
    if len(words):
        grid = tuple(grid) if grid is not None else feature_grid(alphas.shape[1], image_size)
    scale = float(tile) / max(image.size)
    size = (max(1, int(round(image.size[0] * scale))), max(1, int(round(image.size[1] * scale))))
    base = image.convert("RGB").resize(size, Image.BILINEAR)
    tiles = [("input" if words else "input (empty caption)", base)]
    tiles += [(word, overlay(base, alphas[i], grid)) for i, word in enumerate(words)]

    font = _font(font_size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    title_height = max(_text_size(probe, title, font)[1] for title, _ in tiles) + 2 * PAD
    columns = max(1, min(int(columns), len(tiles)))
    rows = int(math.ceil(len(tiles) / float(columns)))
    cell_w, cell_h = size[0] + 2 * PAD, size[1] + title_height + PAD
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, (title, picture) in enumerate(tiles):
        left = (index % columns) * cell_w
        top = (index // columns) * cell_h
        width = _text_size(draw, title, font)[0]
        draw.text((left + max(PAD, (cell_w - width) // 2), top + PAD), title, fill=TEXT_COLOUR, font=font)
        canvas.paste(picture, (left + PAD, top + title_height))
    return canvas


def save_attention_map(path, image, words, alphas, **options):
    """Render (see :func:`render_attention_map`) and write a PNG to ``path`` atomically; returns ``path``."""
    picture = render_attention_map(image, words, alphas, **options)
    try:
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
    except (IOError, OSError) as exc:
        raise UsageError("cannot write the attention map {}: {}".format(path, exc))
    return str(path)


def attention_map_paths(out, image_paths):
    """Where the attention maps of ``image_paths`` go.

    One image: ``out`` itself.  Several: ``<out stem>_<image stem>.png`` beside ``out`` (``maps.png`` and
    ``cat.jpg`` give ``maps_cat.png``); two images with the same stem are refused (UsageError).
    """
    out = str(out)
    if len(image_paths) == 1:
        return [out]
    root, ext = os.path.splitext(out)
    paths = []
    seen = {}  # type: dict
    for image_path in image_paths:
        stem = os.path.splitext(os.path.basename(str(image_path)))[0]
        if stem in seen:
            raise UsageError("--attention-map with several images writes one file per image stem, but {} and {} "
                             "share the stem {!r}".format(seen[stem], image_path, stem),
                             hint="rename one of them or run them separately")
        seen[stem] = image_path
        paths.append("{}_{}{}".format(root, stem, ext or ".png"))
    return paths
