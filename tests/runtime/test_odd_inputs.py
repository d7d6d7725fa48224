"""Odd images and sequences: EXIF orientation, 16-bit grayscale, huge .npy, hostile JSON, TSV labels."""
import io
import json
import time

import numpy as np
import pytest

from jetcap.errors import UsageError
from jetcap.runtime.preprocess import open_image
from jetcap.runtime.sequences import load_sequence, parse_sequence_json

Image = pytest.importorskip("PIL.Image")


def test_exif_orientation_is_honoured():
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    buffer.seek(0)
    assert open_image(buffer).size == (20, 40)


def test_16_bit_grayscale_png_is_scaled_not_white():
    values = (np.arange(64 * 64).reshape(64, 64) * 15).astype(np.uint16)  # 0 .. 61425
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    buffer.seek(0)
    rgb = np.asarray(open_image(buffer))
    assert rgb.shape == (64, 64, 3) and rgb.min() == 0 and rgb.max() == round(61425 * 255 / 65535)


def test_huge_npy_is_refused_from_its_header(tmp_path):
    path = tmp_path / "big.npy"
    with open(str(path), "wb") as handle:  # 2 GB announced, sparse on disk
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (8000000, 63)})
        handle.truncate(handle.tell() + 8000000 * 63 * 4)
    with pytest.raises(UsageError, match="8000000 frames, more than the bundle's maximum of 128"):
        load_sequence(str(path), max_len=128, width=63)


def test_npy_with_a_negative_shape_in_its_header_is_refused(tmp_path):
    path = tmp_path / "negative.npy"
    with open(str(path), "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False, "shape": (-5, 63)})
        handle.write(b"\0" * 64)
    with pytest.raises(UsageError, match=r"header declares the shape \(-5, 63\)"):
        load_sequence(str(path), max_len=128, width=63)


def test_npy_of_objects_is_refused(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(str(path), np.array([[{"a": 1}]], dtype=object), allow_pickle=True)
    with pytest.raises(UsageError, match="not a readable sequence: it holds Python objects"):
        load_sequence(str(path))


@pytest.mark.parametrize("text, message", [("[" * 100000, "deeper than"), ("[[" + "1" * 400 + "]]", "characters"),
                                           ("[[1, 2", "not valid JSON")])
def test_hostile_json_is_one_line(text, message):
    with pytest.raises(UsageError, match=message):
        parse_sequence_json(text)


def test_huge_values_become_inf_and_are_refused(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"sequence": [[1e300 * 10, 2.0]]}).replace("Infinity", "1e999"))
    with pytest.raises(UsageError, match="NaN or infinite"):
        load_sequence(str(path))


def test_finite_values_too_large_for_float32_arithmetic_are_refused():
    # PyTorch answers float32-max keypoints with NaN logits where ONNX Runtime gave a label: no defined answer
    from jetcap.runtime.sequences import MAX_ABS_VALUE, check_sequence

    frames = np.ones((20, 2), np.float32)
    assert check_sequence(frames * 9e17).shape == (20, 2)
    with pytest.raises(UsageError, match=r"values as large as 1.1e\+18"):
        check_sequence(frames * MAX_ABS_VALUE * 1.1)
    frames[3, 1] = -np.finfo(np.float32).max
    with pytest.raises(UsageError, match=r"values as large as 3.4e\+38: beyond \+-1e\+18"):
        check_sequence(frames, "clip.npy")


def test_predict_tsv_escapes_labels():
    from jetcap.commands.predict import tsv_field

    assert tsv_field("wave\nleft\tx\\") == "wave\\nleft\\tx\\\\"


def test_a_large_16_bit_image_is_scaled_in_blocks_with_the_same_values():
    from jetcap.runtime import preprocess

    values = (np.random.RandomState(0).rand(3000, 700) * 65535).astype(np.uint16)  # > 1 block of rows
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    opened = preprocess.peek_image(io.BytesIO(buffer.getvalue()))
    assert opened.mode == "I;16" and preprocess.decode_bytes(opened) == 3000 * 700 * (2 + 3)
    rgb = np.asarray(preprocess.decode_image(opened))
    expected = np.clip(np.round(values.astype(np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
    assert (rgb == expected[:, :, None]).all()


@pytest.mark.parametrize("value", ['"1"', "true", "null", "{}"])
def test_sequence_values_must_be_numbers(tmp_path, value):
    path = tmp_path / "s.json"
    path.write_text('[[0.5, {}]]'.format(value))
    with pytest.raises(UsageError, match="not a number"):
        load_sequence(path)


def test_keypoints_with_their_own_axes_are_flattened_per_frame(tmp_path):
    frames = np.random.RandomState(0).rand(40, 2, 21, 3).astype(np.float32)  # (T, hands, joints, xyz)
    path = tmp_path / "two_hands.npy"
    np.save(str(path), frames)
    assert np.array_equal(load_sequence(path, width=126), frames.reshape(40, 126))
    from jetcap.runtime.sequences import check_sequence

    assert np.array_equal(check_sequence(frames.tolist(), width=126), frames.reshape(40, 126))
    with pytest.raises(UsageError, match="expected"):
        load_sequence(path, width=63)


def test_large_images_decode_on_the_request_thread_and_a_bounded_number_waits(captioner_bundle):
    import threading

    from jetcap.runtime import serving
    from jetcap.runtime.serving import ModelState, QueueFull
    from jetcap.serve.options import ServeOptions

    def png(width, height):
        buffer = io.BytesIO()
        Image.new("RGB", (width, height)).save(buffer, format="PNG")
        return buffer.getvalue()

    state = ModelState(captioner_bundle, ServeOptions(max_concurrency=1), serving.JsonLog(io.StringIO()))
    state.load()
    try:
        small, large = png(64, 64), png(5000, 5000)
        assert not isinstance(state.prepare(small, 5), np.ndarray)  # opened only: a worker decodes it
        height, width = state.manifest.preprocessing["image_size"]
        assert state.prepare(large, 5).shape == (1, 3, height, width)
        with state._large_decodes:  # another large image is decoding
            waiting = threading.Thread(target=lambda: state.prepare(large, 5))
            waiting.start()
            time.sleep(0.2)
            with pytest.raises(QueueFull, match="large images"):  # max_concurrency = 1 already waits
                state.prepare(large, 5)
            began = time.time()
            small_prepared = state.prepare(small, 5)  # a small image never waits for the large ones
            assert time.time() - began < 1.0
            assert state.caption(small_prepared, 1, 5)["tokens"]
        waiting.join(30)
        with state._large_decodes:
            with pytest.raises(QueueFull, match="waited 0.2 s"):
                state.prepare(large, 0.2)
    finally:
        state.close()


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_preprocessing_is_the_written_formula_bit_for_bit(order):
    """((x * scale) - mean) / std in float32, channels first, flipped for BGR: exactly, not approximately
    (captions near a tie must not move because the arithmetic was reorganised for speed)."""
    from jetcap.runtime import preprocess

    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8), "RGB")
    settings = dict(preprocess.default_preprocessing(24, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                    channel_order=order)
    got = preprocess.preprocess_image(image, settings)
    pixels = np.asarray(image.resize((24, 24), Image.BILINEAR), dtype=np.float32) * np.float32(settings["scale"])
    if order == "BGR":
        pixels = pixels[:, :, ::-1]
    expected = ((pixels - np.asarray(settings["mean"], np.float32)) / np.asarray(settings["std"], np.float32))
    assert got.dtype == np.float32 and got.shape == (3, 24, 24) and got.flags["C_CONTIGUOUS"]
    assert np.array_equal(got, expected.transpose(2, 0, 1))
