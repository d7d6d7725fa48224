"""Hostile checkpoint files: zip (decompression) bombs and malformed safetensors headers.

Each is refused with one line before anything is inflated or read; the bombs are real ``torch.save``
archives (its members and pickle layout) whose tensor member is deflated, built here with zipfile.
"""
import collections
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import pytest
import torch

from jetcap.errors import CheckpointError, InsufficientMemoryError
from jetcap.models import load_checkpoint
from jetcap.models.checkpoint_file import MAX_COMPRESSION_RATIO, declared_size, read_checkpoint

GIB = 1 << 30


def one_line(exc_info):
    text = str(exc_info.value)
    assert "\n" not in text and "Traceback" not in text
    return text


def tensor_pickle(numel):
    """The ``data.pkl`` torch.save writes for a float32 tensor of ``numel`` elements in storage "0"."""
    storage = object()

    class Tensor:
        def __reduce__(self):
            return torch._utils._rebuild_tensor_v2, (storage, 0, (numel,), (1,), False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "0", "cpu", numel) if obj is storage else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(Tensor())
    return buffer.getvalue()


def repack(template, path, data_pkl=None, storage_bytes=None, chunk=1 << 24):
    """``template`` (a torch.save file) rewritten to ``path`` as a zip archive ``archive/...`` with its
    tensor members deflated; ``data_pkl`` replaces the pickle, ``storage_bytes`` (a count of zero bytes,
    written in chunks so nothing large is held) replaces storage "0"."""
    with zipfile.ZipFile(str(template)) as src, \
            zipfile.ZipFile(str(path), "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst:
        for info in src.infolist():
            name = "archive/" + info.filename.split("/", 1)[1]
            if name == "archive/data.pkl" and data_pkl is not None:
                dst.writestr(name, data_pkl, zipfile.ZIP_STORED)
            elif name == "archive/data/0" and storage_bytes is not None:
                zeros, left = bytes(chunk), storage_bytes
                with dst.open(name, "w", force_zip64=True) as out:
                    while left:
                        out.write(zeros[:min(left, chunk)])
                        left -= min(left, chunk)
            elif name.startswith("archive/data/"):
                dst.writestr(name, src.read(info), zipfile.ZIP_DEFLATED)
            else:
                dst.writestr(name, src.read(info), zipfile.ZIP_STORED)
    return path


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory):
    """A ~1 MB torch.save archive whose one tensor member declares 1 GiB (zeros, deflated)."""
    folder = tmp_path_factory.mktemp("bomb")
    torch.save(torch.zeros(1), str(folder / "template.pt"))
    return repack(folder / "template.pt", folder / "bomb.pt", data_pkl=tensor_pickle(GIB // 4), storage_bytes=GIB)


def test_the_bomb_is_what_it_claims(zip_bomb):
    assert zip_bomb.stat().st_size < 2 * 2 ** 20
    with zipfile.ZipFile(str(zip_bomb)) as archive:
        member = archive.getinfo("archive/data/0")
    assert member.file_size == GIB and member.compress_type == zipfile.ZIP_DEFLATED


def test_zip_bomb_is_refused_before_inflating(zip_bomb):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(zip_bomb)
    message = one_line(info)
    assert "archive/data/0 declares 1.0 GiB uncompressed" in message and "decompression bomb" in message
    assert "over the {}x".format(MAX_COMPRESSION_RATIO) in message
    assert info.value.exit_code == 2


def test_zip_bomb_is_refused_by_read_checkpoint_too(zip_bomb):
    """read_checkpoint is also reached without load_checkpoint's memory check (the user-code sources)."""
    with pytest.raises(CheckpointError, match="decompression bomb"):
        read_checkpoint(zip_bomb, trust_pickle=True)


RSS_PROBE = """
import json, resource, sys
import torch
from jetcap.cli import main
import jetcap.commands.export, jetcap.models.checkpoint
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    main(["export", sys.argv[1], "-o", sys.argv[2]])
    code = 0
except SystemExit as exc:
    code = exc.code
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.stdout.write(json.dumps({"code": code, "before_kib": before, "after_kib": after}))
"""


def peak_rss_of_export(checkpoint, out_dir):
    """(exit code, stderr, peak RSS in MiB) of `jetcap export CHECKPOINT -o OUT_DIR` in a fresh process."""
    run = subprocess.run([sys.executable, "-c", RSS_PROBE, str(checkpoint), str(out_dir)], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    result = json.loads(run.stdout.strip().splitlines()[-1])
    return result["code"], run.stderr, result["after_kib"] / 1024


def test_zip_bomb_keeps_rss_low(zip_bomb, tmp_path):
    """`jetcap export BOMB` in a fresh process: exit 2, one line, and a peak RSS no higher than refusing
    a 4-byte checkpoint costs (the bomb reached 2.1 GB before the check existed; the 1 GiB would show)."""
    code, stderr, bomb_mib = peak_rss_of_export(zip_bomb, tmp_path / "out")
    assert code == 2, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "decompression bomb" in errors[0] and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()
    torch.save({"not_a_model": torch.zeros(1)}, str(tmp_path / "tiny.pt"))
    code, stderr, control_mib = peak_rss_of_export(tmp_path / "tiny.pt", tmp_path / "out")
    assert code == 2, stderr
    assert bomb_mib < control_mib + 64, "peak RSS {:.0f} MiB, {:.0f} MiB for a tiny checkpoint".format(
        bomb_mib, control_mib)


def test_aliased_members_are_judged_together(tmp_path):
    """The overlapping-entries bomb: many central-directory entries share one small deflated member, each
    under the per-member floor, together 1 GiB declared from a small file."""
    torch.save(torch.zeros(1), str(tmp_path / "template.pt"))
    path = repack(tmp_path / "template.pt", tmp_path / "aliased.pt")
    with zipfile.ZipFile(str(path), "a", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("archive/data/1", bytes(1 << 20))
        shared = archive.getinfo("archive/data/1")
        for index in range(2, 1026):
            alias = zipfile.ZipInfo("archive/data/{}".format(index), shared.date_time)
            for field in ("compress_type", "CRC", "compress_size", "file_size", "header_offset", "flag_bits"):
                setattr(alias, field, getattr(shared, field))
            archive.filelist.append(alias)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = one_line(info)
    assert "archive members declare 1.0 GiB in all" in message and "decompression bomb" in message


def test_declared_size_counts_against_the_memory_budget(tmp_path):
    """A deflated archive within the ratio limit: the budget is checked against what it inflates to,
    not the (much smaller) file -- and the same archive is a valid checkpoint torch reads."""
    torch.manual_seed(0)
    tensor = torch.zeros(1 << 22)  # 16 MiB, sparse: deflates about 60x
    tensor[::97] = torch.randn(len(tensor[::97]))
    torch.save({"state_dict": {"weight": tensor}}, str(tmp_path / "dense.pt"))
    path = repack(tmp_path / "dense.pt", tmp_path / "deflated.pt")
    assert declared_size(path) > 16 * 2 ** 20 and path.stat().st_size * 3 < 2 * 2 ** 20
    assert torch.equal(read_checkpoint(path).obj["state_dict"]["weight"], tensor)
    with pytest.raises(InsufficientMemoryError) as info:
        load_checkpoint(path, max_memory_mb=8)
    message = one_line(info)
    assert "of declared uncompressed size" in message and "only 8.0 MiB is available" in message


def test_deflated_real_checkpoint_still_loads(tmp_path, classifier_ref):
    torch.save(classifier_ref.state_dict(), str(tmp_path / "cls.pt"))
    path = repack(tmp_path / "cls.pt", tmp_path / "cls-deflated.pt")
    loaded = load_checkpoint(path, hints={"num_heads": 2})
    for name, value in classifier_ref.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value)


# -- malformed safetensors headers ----------------------------------------------------------------

def safetensors_file(path, header, data=b"\x00" * 16, header_len=None):
    encoded = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    length = len(encoded) if header_len is None else header_len
    path.write_bytes(struct.pack("<Q", length) + encoded + data)
    return path


def entry(dtype="F32", shape=(2, 2), offsets=(0, 16)):
    out = {"dtype": dtype, "shape": list(shape) if shape is not None else None}
    if offsets is not None:
        out["data_offsets"] = list(offsets)
    return out


MALFORMED = {
    "huge shape": ({"w": entry(shape=(2 ** 40, 2 ** 40))}, None, "needs 4835703278458516698824704 bytes but its "
                                                                "data_offsets span 16"),
    "negative dimension": ({"w": entry(shape=(-4, -1))}, None, "invalid shape [-4, -1]"),
    "shape not a list": ({"w": entry(shape=None)}, None, "invalid shape None"),
    "missing offsets": ({"w": entry(offsets=None)}, None, "invalid data_offsets None"),
    "one offset": ({"w": entry(offsets=(0,))}, None, "invalid data_offsets [0]"),
    "offsets not integers": ({"w": entry(offsets=("0", 16.0))}, None, "invalid data_offsets ['0', 16.0]"),
    "reversed offsets": ({"w": entry(shape=(0,), offsets=(16, 0))}, None, "reversed data_offsets [16, 0]"),
    "offsets past the file": ({"w": entry(shape=(4, 4), offsets=(0, 64))}, None,
                              "is truncated: tensor 'w' ends at byte 64 of a 16-byte data section"),
    "overlapping tensors": ({"a": entry(shape=(3,), offsets=(0, 12)), "b": entry(shape=(3,), offsets=(4, 16))},
                            None, "the data of tensors 'a' and 'b' overlap"),
    "unknown dtype": ({"w": entry(dtype="F128")}, None, "unsupported dtype 'F128'"),
    "dtype not a string": ({"w": entry(dtype=["F32"])}, None, "unsupported dtype ['F32']"),
    "entry not an object": ({"w": [1, 2]}, None, "malformed safetensors entry (a JSON list"),
    "header not an object": ([1, 2, 3], None, "a JSON list instead of an object"),
    "metadata not an object": ({"__metadata__": "x", "w": entry()}, None, "malformed safetensors __metadata__"),
    "non-JSON header": (b"{not json at all", None, "corrupted safetensors header (not JSON)"),
    "not UTF-8": (b"{\"\xff\xfe\": 1}", None, "corrupted safetensors header (not JSON)"),
    "nested too deep": (b"{\"w\":" + b"[" * 100000 + b"]" * 100000 + b"}", None,
                        "corrupted safetensors header (not JSON)"),
    "header length past the file": ({"w": entry()}, 10 ** 12, "its length 1000000000000 runs past the end"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_safetensors_header(tmp_path, case):
    header, header_len, expected = MALFORMED[case]
    path = safetensors_file(tmp_path / "model.safetensors", header, header_len=header_len)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = one_line(info)
    assert expected in message and str(path) in message


def test_well_formed_safetensors_edge_cases_still_load(tmp_path):
    """Scalars, empty tensors and gaps between tensors are allowed by the format."""
    from jetcap.models.checkpoint_file import read_safetensors

    header = {"scalar": entry(shape=(), offsets=(0, 4)), "empty": entry(shape=(0, 3), offsets=(4, 4)),
              "v": entry(dtype="I16", shape=(2,), offsets=(8, 12)), "__metadata__": {"note": "plain text"}}
    data = struct.pack("<f", 1.5) + b"\x00" * 4 + struct.pack("<hh", -2, 7) + b"\x00" * 4
    out = read_safetensors(safetensors_file(tmp_path / "ok.safetensors", header, data=data))
    tensors = out["state_dict"]
    assert tensors["scalar"].shape == () and float(tensors["scalar"]) == 1.5
    assert tensors["empty"].shape == (0, 3)
    assert tensors["v"].tolist() == [-2, 7] and out["note"] == "plain text"
