"""Attention maps drawn with Pillow: grid layout, the overlay follows the attention, output paths."""
import numpy as np
import pytest
from PIL import Image

from jetcap.errors import UsageError
from jetcap.runtime.attention_map import (HEAT_RAMP, attention_map_paths, feature_grid, heat_colours,
                                          render_attention_map, save_attention_map)


@pytest.fixture
def grey_image():
    return Image.new("RGB", (120, 80), (128, 128, 128))


def test_feature_grid():
    assert feature_grid(9) == (3, 3)
    assert feature_grid(49) == (7, 7)
    assert feature_grid(6, image_size=(64, 96)) == (2, 3)  # ceil(64/32) x ceil(96/32)
    assert feature_grid(6, image_size=(96, 96)) == (1, 6)  # nothing fits: one row
    with pytest.raises(UsageError):
        feature_grid(0)


def test_heat_colours_span_the_ramp():
    colours = heat_colours(np.array([0.0, 1.0, 2.0, -1.0]))
    np.testing.assert_allclose(colours[0], HEAT_RAMP[0])
    np.testing.assert_allclose(colours[1], HEAT_RAMP[-1])
    np.testing.assert_allclose(colours[2], HEAT_RAMP[-1])  # clipped
    np.testing.assert_allclose(colours[3], HEAT_RAMP[0])


def _tile(picture, index, columns, tile_size, title_height):
    """Crop tile ``index`` (without its title) out of a rendered map."""
    from jetcap.runtime.attention_map import PAD

    cell_w, cell_h = tile_size[0] + 2 * PAD, tile_size[1] + title_height + PAD
    left, top = (index % columns) * cell_w + PAD, (index // columns) * cell_h + title_height
    return np.asarray(picture.crop((left, top, left + tile_size[0], top + tile_size[1])), dtype=np.float32)


def test_layout_titles_and_overlay_follow_the_attention(grey_image):
    words = ["a", "red", "circle"]
    alphas = np.zeros((3, 9), np.float32)
    alphas[0, 0] = 1.0  # top-left cell
    alphas[1, 8] = 1.0  # bottom-right cell
    alphas[2] = 1.0 / 9  # uniform
    picture = render_attention_map(grey_image, words, alphas, tile=120, columns=2)
    # 4 tiles (input + 3 words) in 2 columns: 2 rows; tiles keep the 3:2 aspect ratio
    tile_size = (120, 80)
    assert picture.mode == "RGB"
    assert picture.size[0] == 2 * (tile_size[0] + 8)
    title_height = (picture.size[1] // 2) - tile_size[1] - 4
    assert title_height > 8
    pixels = np.asarray(picture)
    assert (pixels[:title_height] < 100).any()  # title text drawn in black on white
    original = _tile(picture, 0, 2, tile_size, title_height)
    np.testing.assert_allclose(original, 128, atol=1)
    first, second, uniform = (_tile(picture, i, 2, tile_size, title_height) for i in (1, 2, 3))
    # red dominates where the attention is, blue elsewhere
    assert first[5, 5, 0] > first[5, 5, 2] and first[-5, -5, 2] > first[-5, -5, 0]
    assert second[-5, -5, 0] > second[-5, -5, 2] and second[5, 5, 2] > second[5, 5, 0]
    assert np.ptp(uniform.reshape(-1, 3), axis=0).max() < 2  # uniform attention: one colour


def test_empty_caption_draws_only_the_input(grey_image):
    picture = render_attention_map(grey_image, [], np.zeros((0, 0), np.float32), tile=60)
    assert picture.size[0] == 60 + 8


def test_words_and_attention_must_agree(grey_image):
    with pytest.raises(UsageError, match="2 words but attention of shape"):
        render_attention_map(grey_image, ["a", "b"], np.ones((3, 9), np.float32))


def test_save_writes_a_png(grey_image, tmp_path):
    path = tmp_path / "map.png"
    assert save_attention_map(path, grey_image, ["a"], np.full((1, 9), 1 / 9.0, np.float32)) == str(path)
    with Image.open(str(path)) as written:
        assert written.format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]  # no temporary file left behind


def test_attention_map_paths():
    assert attention_map_paths("out/maps.png", ["x/cat.jpg"]) == ["out/maps.png"]
    assert attention_map_paths("out/maps.png", ["x/cat.jpg", "y/dog.png"]) == ["out/maps_cat.png", "out/maps_dog.png"]
    assert attention_map_paths("maps", ["cat.jpg", "dog.png"]) == ["maps_cat.png", "maps_dog.png"]
    with pytest.raises(UsageError, match="share the stem 'cat'"):
        attention_map_paths("maps.png", ["a/cat.jpg", "b/cat.png"])
