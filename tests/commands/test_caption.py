"""``jetcap caption``: the reference captions, JSON, beam, attention maps, and one clear line per bad input."""
import json
import struct
import time
import zlib

import pytest
from click.testing import CliRunner
from PIL import Image

from jetcap import samples
from jetcap.cli import cli
from jetcap.export.tasks import unpad
from jetcap.runtime.backends.trt_api import tensorrt_available
from jetcap.runtime.manifest import Manifest
from jetcap.util.npz import load_npz


def run(*args):
    return CliRunner().invoke(cli, ["caption"] + [str(a) for a in args])


@pytest.fixture(scope="module")
def expected(captioner_bundle):
    """``{sample image name: (tokens, caption)}`` of PyTorch's greedy and beam decoding."""
    manifest = Manifest.load(captioner_bundle)
    reference = load_npz(manifest.reference_path())
    vocab = manifest.vocabulary()
    names = [str(n) for n in reference["task/names"]]
    out = {}
    for kind in ("greedy", "beam"):
        rows = reference["task/{}_tokens".format(kind)]
        out[kind] = dict((name, (unpad(row), vocab.decode(unpad(row)))) for name, row in zip(names, rows))
    out["beam_size"] = int(reference["task/beam_size"])
    return out


@pytest.fixture(scope="module")
def images():
    return samples.sample_images()


def test_captions_equal_the_pytorch_reference(captioner_bundle, images, expected):
    result = run(captioner_bundle, *images)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == len(images)
    for line, path in zip(lines, images):
        name, caption = line.split("\t")
        assert name == str(path)
        assert caption == expected["greedy"][path.name][1]
    assert "fp32" in result.stderr and "ms per image" in result.stderr
    if not tensorrt_available():
        assert "onnxruntime fp32 (tensorrt not installed" in result.stderr


def test_json_output(captioner_bundle, images, expected):
    result = run(captioner_bundle, images[0], images[1], "--json")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["image"] for r in records] == [str(images[0]), str(images[1])]
    for record, path in zip(records, images):
        assert set(record) == {"image", "caption", "tokens", "score", "backend", "precision", "latency_ms"}
        assert (record["tokens"], record["caption"]) == expected["greedy"][path.name]
        assert record["precision"] == "fp32" and record["backend"] in ("onnxruntime", "tensorrt")
        assert record["latency_ms"] > 0 and record["score"] <= 0


def test_beam_search_equals_the_pytorch_reference(captioner_bundle, images, expected):
    result = run(captioner_bundle, "--beam", expected["beam_size"], "--json", *images[:3])
    assert result.exit_code == 0, result.output
    for record, path in zip(json.loads(result.stdout), images):
        assert record["tokens"] == expected["beam"][path.name][0]


def test_max_len_and_other_precisions(captioner_bundle, images):
    result = run(captioner_bundle, images[0], "--max-len", 2, "--precision", "int8", "--backend", "onnxruntime",
                 "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)[0]
    assert len(record["tokens"]) <= 2 and record["precision"] == "int8" and record["backend"] == "onnxruntime"
    assert "onnxruntime int8 (requested)" in result.stderr


def test_attention_map_for_one_image(captioner_bundle, images, expected, tmp_path):
    out = tmp_path / "map.png"
    result = run(captioner_bundle, images[0], "--attention-map", out)
    assert result.exit_code == 0, result.output
    words = len(expected["greedy"][images[0].name][0])
    with Image.open(str(out)) as picture:
        assert picture.format == "PNG"
        width, height = picture.size
    tiles = words + 1
    assert width >= min(tiles, 5) * 160 and height >= -(-tiles // 5) * 160
    assert "attention map: " + str(out) in result.stderr


def test_attention_maps_for_several_images(captioner_bundle, images, tmp_path):
    result = run(captioner_bundle, images[0], images[1], "--attention-map", tmp_path / "maps.png")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        "maps_{}.png".format(p.stem) for p in images[:2])


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_header(width, height, data_chunks=()):
    header = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))  # 1-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + header + b"".join(data_chunks) + _chunk(b"IEND", b"")


def big_png(path, side=20000):
    """A complete, valid side x side 1-bit PNG of ~50 kB (zeros compress well), built without Pillow."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + -(-side // 8))
    parts = [compressor.compress(row * 1000) for _ in range(side // 1000)]
    parts.append(compressor.flush())
    path.write_bytes(_png_header(side, side, [_chunk(b"IDAT", b"".join(parts))]))
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    return big_png(tmp_path_factory.mktemp("huge") / "huge.png")


@pytest.fixture
def bad_inputs(tmp_path, images, classifier_bundle, huge_png):
    text = tmp_path / "notes.png"
    text.write_text("this is not an image\n")
    truncated = tmp_path / "truncated.png"
    data = images[0].read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    header_only = tmp_path / "huge_header.png"
    header_only.write_bytes(_png_header(20000, 20000))
    large = tmp_path / "large_header.png"
    large.write_bytes(_png_header(8000, 8000))  # over jetcap's 40 MP, under Pillow's own bomb limit
    not_a_bundle = tmp_path / "not_a_bundle"
    not_a_bundle.mkdir()
    return {
        "not an image": (None, text, "is not a readable image"),
        "truncated png": (None, truncated, "could not be decoded"),
        "20000x20000 header": (None, header_only, "over the limit of"),
        "20000x20000 png": (None, huge_png, "over the limit of"),
        "8000x8000 header": (None, large, "is 8000x8000 pixels, over the limit of 40000000 pixels"),
        "missing file": (None, tmp_path / "missing.png", "image not found"),
        "a directory": (None, not_a_bundle, "image is not a file"),
        "not a bundle": (not_a_bundle, images[0], "is it a jetcap bundle"),
        "missing bundle": (tmp_path / "nowhere", images[0], "bundle directory not found"),
        "classifier bundle": (classifier_bundle, images[0], "is a classifier bundle, not a captioner"),
    }


BAD_INPUTS = ["not an image", "truncated png", "20000x20000 header", "20000x20000 png", "8000x8000 header",
              "missing file", "a directory", "not a bundle", "missing bundle", "classifier bundle"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_clear_line(captioner_bundle, bad_inputs, case):
    bundle, image, message = bad_inputs[case]
    started = time.time()
    result = run(bundle or captioner_bundle, image)
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert time.time() - started < 5  # refused from the header: nothing huge is decoded


def test_pixel_limit_is_checked_before_decoding(captioner_bundle, bad_inputs):
    # the header-only PNG has no pixel data at all: decoding it would fail as "truncated"; the size
    # refusal shows the header was judged first
    result = run(captioner_bundle, bad_inputs["20000x20000 header"][1])
    assert "over the limit" in result.stderr and "could not be decoded" not in result.stderr


def test_a_bad_image_among_good_ones_stops_before_loading(captioner_bundle, images, bad_inputs):
    result = run(captioner_bundle, images[0], bad_inputs["not an image"][1], "--max-memory-mb", 1)
    assert result.exit_code == 2 and "notes.png is not a readable image" in result.stderr  # not the memory error


def test_too_little_memory(captioner_bundle, images):
    result = run(captioner_bundle, images[0], "--max-memory-mb", 1)
    assert result.exit_code == 2
    assert "needs about" in result.stderr and "budget of 1.0 MiB" in result.stderr


def test_duplicate_stems_with_attention_maps_are_refused(captioner_bundle, images, tmp_path):
    other = tmp_path / images[0].name
    other.write_bytes(images[0].read_bytes())
    result = run(captioner_bundle, images[0], other, "--attention-map", tmp_path / "m.png")
    assert result.exit_code == 2 and "share the stem" in result.stderr


@pytest.mark.skipif(tensorrt_available(), reason="a usable TensorRT is installed here")
def test_forced_tensorrt_without_tensorrt(captioner_bundle, images):
    result = run(captioner_bundle, images[0], "--backend", "tensorrt")
    assert result.exit_code == 2 and "tensorrt" in result.stderr and "Traceback" not in result.output


def test_help_documents_the_options():
    result = CliRunner().invoke(cli, ["caption", "--help"])
    assert result.exit_code == 0
    for option in ("--backend", "--precision", "--beam", "--max-len", "--json", "--attention-map", "--engine-cache",
                   "--max-memory-mb", "OUT_<stem>.png"):
        assert option in result.output


def test_unwritable_attention_map_is_one_line(captioner_bundle, images, tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a directory should be")
    result = run(captioner_bundle, images[0], "--attention-map", blocker / "map.png")
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""  # refused before any work


def test_outputs_inside_the_bundle_are_refused(captioner_bundle, images, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(str(captioner_bundle), str(bundle))
    manifest = (bundle / "manifest.json").read_bytes()
    result = run(bundle, images[0], "--attention-map", bundle / "manifest.json")
    assert result.exit_code == 2 and "is inside the bundle" in result.stderr
    result = CliRunner().invoke(cli, ["validate", str(bundle), "--precision", "fp32", "--no-check",
                                      "--junit", str(bundle / "manifest.json")])
    assert result.exit_code == 2 and "is inside the bundle" in result.output
    assert (bundle / "manifest.json").read_bytes() == manifest
    result = run(bundle, images[0], "--attention-map", tmp_path / "map.txt")
    assert result.exit_code == 2 and "must end in .png" in result.stderr
    picture = tmp_path / "in.png"
    picture.write_bytes(open(str(images[0]), "rb").read())
    result = run(bundle, picture, "--attention-map", picture)
    assert result.exit_code == 2 and "is one of the inputs" in result.stderr
    assert picture.read_bytes() == open(str(images[0]), "rb").read()


def test_captions_are_escaped_in_the_tab_separated_output(captioner_bundle, images, tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(str(captioner_bundle), str(bundle))
    manifest = json.loads((bundle / "manifest.json").read_text())
    specials = set(manifest["vocabulary"]["specials"].values())
    manifest["vocabulary"]["itos"] = [w if i in specials else "w{}\tFAKE\nLINE".format(i)
                                      for i, w in enumerate(manifest["vocabulary"]["itos"])]
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = run(bundle, images[0], images[1])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.count("\t") == 1 for line in lines) and "\\tFAKE\\nLINE" in lines[0]
