"""GPU/platform facts: capability table, Jetson detection from real files under a fake root."""
import os

import pytest

from jetcap.runtime import platform

NANO_RELEASE = ("# R32 (release), REVISION: 6.1, GCID: 27863751, BOARD: t210ref, EABI: aarch64, "
                "DATE: Mon Jul 26 19:20:30 UTC 2021\n")
ORIN_RELEASE = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: generic, EABI: aarch64, DATE: x\n"


@pytest.mark.parametrize("capability, expected", [
    ((5, 3), (True, False)),   # Nano: FP16 yes, INT8 no
    ((6, 1), (False, True)),   # GTX 1080
    ((6, 2), (True, False)),   # TX2
    ((7, 2), (True, True)),    # Xavier
    ((8, 7), (True, True)),    # Orin
    ((8, 6), (True, True)),
    ((12, 0), (True, True)),
    ((5, 2), (False, False)),  # Maxwell desktop
    ("5.3", (True, False)),
    (None, (None, None)),
])
def test_precision_support(capability, expected):
    assert platform.precision_support(capability) == expected


def test_compute_capability_parsing():
    assert platform.parse_compute_capability("8.6") == (8, 6)
    assert platform.parse_compute_capability([7, 2]) == (7, 2)
    assert platform.format_compute_capability((5, 3)) == "5.3"
    assert platform.format_compute_capability(None) == "unknown"
    with pytest.raises(ValueError):
        platform.parse_compute_capability("sm_53")


def test_parse_tegra_release():
    assert platform.parse_tegra_release(NANO_RELEASE) == ((32, 6, 1), "t210ref")
    assert platform.parse_tegra_release(ORIN_RELEASE) == ((35, 4, 1), "generic")
    assert platform.parse_tegra_release("not a release file") == (None, None)
    assert platform.jetpack_release((32, 6, 1)) == "4.6"
    assert platform.jetpack_release((99, 0, 0)) is None


@pytest.mark.parametrize("model, board, capability", [
    ("NVIDIA Jetson Nano Developer Kit", None, (5, 3)),
    ("NVIDIA Jetson Orin Nano Developer Kit", None, (8, 7)),  # "orin" wins over "nano"
    ("NVIDIA Jetson Xavier NX Developer Kit", None, (7, 2)),
    ("quill", "t186ref", (6, 2)),
    (None, "t210ref", (5, 3)),
    ("Raspberry Pi 4", None, None),
])
def test_jetson_compute_capability(model, board, capability):
    assert platform.jetson_compute_capability(model, board) == capability


def test_device_tree_model_cleanup():
    assert platform.clean_device_tree_model(b"NVIDIA Jetson Nano Developer Kit\x00") == \
        "NVIDIA Jetson Nano Developer Kit"


def _write(root, relative, data):
    path = os.path.join(root, *relative.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)


def test_read_jetson_info_from_a_nano_root(tmp_path):
    root = str(tmp_path)
    _write(root, "etc/nv_tegra_release", NANO_RELEASE.encode())
    _write(root, "proc/device-tree/model", b"NVIDIA Jetson Nano Developer Kit\x00")
    info = platform.read_jetson_info(root)
    assert info == platform.JetsonInfo("NVIDIA Jetson Nano Developer Kit", (32, 6, 1), "t210ref", (5, 3))
    gpu = platform.detect_gpu(root=root)
    assert gpu.name == "NVIDIA Jetson Nano Developer Kit"
    assert gpu.compute_capability == (5, 3) and gpu.integrated is True


def test_read_jetson_info_model_only(tmp_path):
    _write(str(tmp_path), "proc/device-tree/model", b"NVIDIA Jetson AGX Orin\x00")
    info = platform.read_jetson_info(str(tmp_path))
    assert info.compute_capability == (8, 7) and info.l4t is None


def test_not_a_jetson(tmp_path):
    _write(str(tmp_path), "proc/device-tree/model", b"Raspberry Pi 4 Model B\x00")
    assert platform.read_jetson_info(str(tmp_path)) is None
    assert platform.read_jetson_info(str(tmp_path / "empty")) is None


def test_parse_nvidia_smi():
    gpu = platform.parse_nvidia_smi("NVIDIA GeForce RTX 3090, 8.6, 24576\nNVIDIA A100, 8.0, 40960\n")
    assert gpu == platform.GpuInfo("NVIDIA GeForce RTX 3090", (8, 6), 24576 << 20, False, "nvidia-smi")
    assert platform.parse_nvidia_smi("") is None
    assert platform.parse_nvidia_smi("GPU, [N/A], [N/A]").compute_capability is None


def test_detect_gpu_on_this_machine_does_not_raise():
    gpu = platform.detect_gpu()
    assert gpu is None or isinstance(gpu, platform.GpuInfo)
