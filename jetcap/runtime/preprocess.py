"""Image loading and preprocessing from the manifest, with Pillow and numpy (Python 3.6).

The same function prepares images for the PyTorch reference at export time and for every runtime
backend, so preprocessing can never be the reason two backends disagree.
"""
import warnings

import numpy as np

from jetcap.errors import UsageError
from jetcap.util.lazy import require

# Refuse decompression bombs before decoding: 40 megapixels is far above any camera the Nano serves.
DEFAULT_MAX_PIXELS = 40 * 1000 * 1000
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
# bytes per pixel of a decoded image by Pillow mode (others: 4); with the RGB result, what a decode costs
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2,
              "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}
CONVERT_ROWS_PIXELS = 1 << 20  # high-bit-depth images are scaled to 8 bits this many pixels at a time
ORIENTATION_TAG = 0x0112  # EXIF Orientation
RESAMPLE = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST"}


def default_preprocessing(image_size, mean, std):
    """The manifest ``preprocessing`` entry for square ``image_size`` inputs."""
    return {
        "image_size": [int(image_size), int(image_size)],
        "resize": "bilinear",
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "channel_order": "RGB",
        "layout": "NCHW",
        "scale": 1.0 / 255.0,
    }


def open_image(source, max_pixels=DEFAULT_MAX_PIXELS):
    """Open an image file path or a binary stream as RGB, refusing bombs and broken files.

    Args:
        source: a path or a file-like object with the encoded image.
        max_pixels: the most pixels (width x height) accepted, checked from the header before decoding.
    Returns:
        a PIL image in RGB mode.
    """
    return decode_image(peek_image(source, max_pixels))


def peek_image(source, max_pixels=DEFAULT_MAX_PIXELS):
    """The image at ``source`` opened from its header only (not decoded), refused when it is not an image
    or has more than ``max_pixels`` pixels; :func:`decode_image` decodes it, :func:`decode_bytes`
    says what that will cost."""
    Image = require("PIL.Image")
    name = source if isinstance(source, str) else getattr(source, "name", "<image>")
    # Pillow refuses images over 2x Image.MAX_IMAGE_PIXELS itself (DecompressionBombError, Pillow >= 5)
    bomb_errors = tuple(getattr(Image, n) for n in ("DecompressionBombError",) if hasattr(Image, n))
    try:
        with warnings.catch_warnings():
            # the size is judged below against max_pixels; Pillow's own warning would only add noise
            warnings.simplefilter("ignore", getattr(Image, "DecompressionBombWarning", Warning))
            image = Image.open(source)
    except (IOError, OSError, ValueError) as exc:
        raise UsageError("{} is not a readable image: {}".format(name, exc))
    except bomb_errors as exc:
        raise UsageError("{} is over the limit of {} pixels: {}".format(name, max_pixels, exc))
    width, height = image.size
    if width * height > max_pixels:
        raise UsageError("{} is {}x{} pixels, over the limit of {} pixels".format(name, width, height, max_pixels))
    image.jetcap_name = name
    return image


def decode_bytes(image):
    """Bytes an opened image's decode holds at its peak: its pixels in their mode plus the RGB result."""
    width, height = image.size
    return width * height * (MODE_BYTES.get(image.mode, 4) + (3 if image.mode != "RGB" else 0))


def decode_image(image):
    """Decode an image opened by :func:`peek_image`: turned upright as its EXIF says, as RGB."""
    try:
        image.load()
        image = _upright(image)
        return _to_rgb(image)
    except (IOError, OSError, ValueError, SyntaxError) as exc:
        raise UsageError("{} could not be decoded (truncated or corrupt?): {}".format(
            getattr(image, "jetcap_name", "<image>"), exc))


def _upright(image):
    """``image`` turned as its EXIF orientation says (a phone photo taken sideways is captioned upright)."""
    try:
        from PIL import ImageOps
    except ImportError:
        return image
    transpose = getattr(ImageOps, "exif_transpose", None)  # Pillow >= 6.0
    if transpose is None:
        return image
    try:
        if image.getexif().get(ORIENTATION_TAG, 1) in (None, 1):
            return image  # upright already: exif_transpose would only copy the pixels
        return transpose(image) or image
    except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return image  # a broken EXIF block: keep the pixels as stored


def _to_rgb(image):
    """RGB of any mode; 16-bit and 32-bit grayscale scaled to 8 bits (Pillow's convert clips them to white).

    An RGB image is returned as it is.  High-bit-depth images are scaled a block of rows at a time, so a
    36-megapixel 16-bit PNG costs its own pixels and the 8-bit result, not several float64 copies.
    """
    Image = require("PIL.Image")
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        array = np.asarray(image)
        peak = float(array.max()) if array.size else 0.0
        if image.mode.startswith("I;16"):
            top = 65535.0
        else:  # "I" (older Pillow reads 16-bit PNGs so): judged from the values
            top = 255.0 if peak <= 255 else (65535.0 if peak <= 65535 else peak)
        if image.mode == "F" and array.size and peak <= 1.0:
            top = 1.0
        gray = np.empty(array.shape, dtype=np.uint8)
        rows = max(1, CONVERT_ROWS_PIXELS // max(1, array.shape[1] if array.ndim > 1 else 1))
        for start in range(0, array.shape[0], rows):
            block = array[start:start + rows].astype(np.float64)
            gray[start:start + rows] = np.clip(np.round(block * (255.0 / top)), 0, 255)
        del array
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


def preprocess_image(image, preprocessing):
    """float32 CHW array of an RGB PIL image, resized and normalized as the manifest says."""
    Image = require("PIL.Image")
    height, width = preprocessing["image_size"]
    resample = getattr(Image, RESAMPLE[preprocessing.get("resize", "bilinear")])
    if image.size != (width, height):
        image = image.resize((width, height), resample)
    # channels first while still bytes, then one float32 array worked in place: the same float32
    # operations in the same order as ((x * scale) - mean) / std on HWC, bit for bit, in 0.13 ms instead
    # of 0.8 ms at 224x224 (five temporaries)
    array = np.asarray(image).transpose(2, 0, 1)
    if preprocessing.get("channel_order", "RGB") == "BGR":
        array = array[::-1]
    array = array.astype(np.float32, order="C")
    array *= np.float32(preprocessing.get("scale", 1.0 / 255.0))
    array -= np.asarray(preprocessing["mean"], dtype=np.float32)[:, None, None]
    array /= np.asarray(preprocessing["std"], dtype=np.float32)[:, None, None]
    return array


def preprocess_array(rgb_uint8, preprocessing):
    """Like :func:`preprocess_image` for an HxWx3 uint8 RGB array (camera frames, generated samples)."""
    Image = require("PIL.Image")
    return preprocess_image(Image.fromarray(np.asarray(rgb_uint8, dtype=np.uint8), "RGB"), preprocessing)


def load_images(paths, preprocessing, max_pixels=DEFAULT_MAX_PIXELS):
    """A float32 NCHW batch of the images at ``paths``."""
    return np.stack([preprocess_image(open_image(str(p), max_pixels), preprocessing) for p in paths])
