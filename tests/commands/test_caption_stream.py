"""``jetcap caption-stream``: real subprocesses (JSONL, SIGTERM, one-line errors) and click's runner, on a
short real video of sample shapes and the sample captioner bundle."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from jetcap.cli import cli
from runtime.stream_helpers import cv2, decoded_frames, reference_captions, write_video

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def bundle(request):
    return str(request.getfixturevalue("captioner_bundle"))


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("stream-cli") / "shapes.avi", frames=24, seed=23)


@pytest.fixture(scope="module")
def reference(bundle, video):
    return reference_captions(bundle, decoded_frames(video))


def invoke(*args):
    return CliRunner().invoke(cli, ["caption-stream"] + [str(a) for a in args])


def jetcap(*args, **kwargs):
    """A real ``python -m jetcap caption-stream`` process (not waited for)."""
    return subprocess.Popen([sys.executable, "-m", "jetcap", "caption-stream"] + [str(a) for a in args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, **kwargs)


def read_jsonl(path):
    with open(str(path)) as handle:
        return [json.loads(line) for line in handle]


def one_line_error(text):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("Error: ") and "Traceback" not in text
    return lines[0]


def test_help():
    result = invoke("--help")
    assert result.exit_code == 0
    for option in ("--every", "--jsonl", "--overlay", "--display", "--memory-threshold-mb", "--status-every",
                   "nvarguscamerasrc"):
        assert option in result.output


def test_jsonl_of_a_real_process_equals_the_in_process_captions(bundle, video, reference, tmp_path):
    out = tmp_path / "captions.jsonl"
    process = jetcap(bundle, video, "--jsonl", out, "--backend", "onnxruntime", "--status-every", "0.2")
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    records = read_jsonl(out)
    assert [r["frame"] for r in records] == list(range(24))
    assert [r["caption"] for r in records] == reference
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith("summary: 24 frames") and "24 captions" in summary and "stopped: end of file" in summary
    # stdout: FRAME<TAB>TIMESTAMP<TAB>CAPTION each time the caption changes
    changes = [line.split("\t") for line in stdout.splitlines()]
    expected = [(i, c) for i, c in enumerate(reference) if i == 0 or c != reference[i - 1]]
    assert [(int(f), c) for f, _, c in changes] == expected
    assert [float(t) for _, t, _ in changes] == [pytest.approx(i / 10.0) for i, _ in expected]


@pytest.mark.parametrize("flags", [[], ["--decode-loop"], ["--no-decode-loop"]])
def test_every_and_max_frames(bundle, video, reference, tmp_path, flags):
    out = tmp_path / "every.jsonl"
    result = invoke(bundle, video, "--every", 4, "--max-frames", 10, "--jsonl", out, "--json", "--status-every", 0,
                    *flags)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["frames_read"], summary["captions"], summary["dropped"]) == (10, 3, 0)
    assert summary["stop_reason"] == "max frames (10)" and summary["exit_code"] == 0
    records = read_jsonl(out)
    assert [(r["frame"], r["caption"]) for r in records] == [(i, reference[i]) for i in (0, 4, 8)]


@pytest.mark.parametrize("name", ["overlay.mp4", "overlay.avi"])
def test_overlay_video(bundle, video, tmp_path, name):
    out = tmp_path / name
    result = invoke(bundle, video, "--overlay", out, "--every", 6, "--status-every", 0)
    assert result.exit_code == 0, result.output
    capture = cv2.VideoCapture(str(out))
    assert capture.isOpened()
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    capture.release()
    frames = decoded_frames(out)
    assert len(frames) == 24 and frames[0].shape == (96, 96, 3)


def test_sigterm_finishes_cleanly(bundle, video, tmp_path):
    out = tmp_path / "looped.jsonl"
    process = jetcap(bundle, video, "--loop", "--jsonl", out, "--json", "--status-every", 0.5)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= 30:
            break
        time.sleep(0.1)
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "SIGTERM received: finishing the frame in flight" in stderr
    assert "summary: " in stderr and "stopped: SIGTERM" in stderr
    summary = json.loads(stdout)
    assert summary["stop_reason"] == "SIGTERM" and summary["exit_code"] == 0
    records = read_jsonl(out)  # every line is complete JSON
    assert len(records) == summary["captions"] >= 30
    assert [r["frame"] for r in records] == list(range(len(records)))  # a file: nothing dropped


def test_unopenable_sources_exit_2_with_one_line(bundle, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video\n")
    for source in (text, tmp_path / "missing.avi", tmp_path):
        result = invoke(bundle, source)
        assert result.exit_code == 2
        one_line_error(result.output)
    # a camera that is not there, in a real process: OpenCV's own warnings must not garble the message
    index = next(i for i in range(63, 0, -1) if not os.path.exists("/dev/video{}".format(i)))
    process = jetcap(bundle, index)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2 and stdout == ""
    assert "cannot open video source camera {}".format(index) in one_line_error(stderr)


def test_gstreamer_without_gstreamer_says_so(bundle):
    from jetcap.runtime.video import JETSON_CSI_PIPELINE, opencv_has_gstreamer

    if opencv_has_gstreamer(cv2):
        pytest.skip("this OpenCV has GStreamer; the CSI pipeline would need a Jetson camera")
    result = invoke(bundle, JETSON_CSI_PIPELINE)
    assert result.exit_code == 2
    assert "built without GStreamer" in one_line_error(result.output)


def test_unwritable_outputs_exit_2_before_starting(bundle, video, tmp_path):
    for args, message in (
        (("--jsonl", tmp_path / "missing" / "out.jsonl"), "cannot write --jsonl"),
        (("--overlay", tmp_path / "missing" / "out.mp4"), "cannot write --overlay"),
        (("--overlay", tmp_path / "out.mkv"), "--overlay must end in .avi or .mp4"),
    ):
        result = invoke(bundle, video, *args)
        assert result.exit_code == 2
        assert message in one_line_error(result.output)


def test_display_is_refused_without_a_display(bundle, video, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    result = invoke(bundle, video, "--display")
    assert result.exit_code == 2
    assert "--display needs a graphical display" in one_line_error(result.output)


def test_missing_opencv_names_the_package(bundle, video):
    script = textwrap.dedent("""
        import sys

        class RefuseCv2(object):
            def find_spec(self, name, path=None, target=None):
                if name == "cv2" or name.startswith("cv2."):
                    raise ImportError("No module named 'cv2' (refused by the test)")
                return None

        sys.meta_path.insert(0, RefuseCv2())
        from jetcap.cli import main
        main(sys.argv[1:])
    """)
    result = subprocess.run([sys.executable, "-c", script, "caption-stream", bundle, video], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "cv2 is required" in line and "pip install opencv-python-headless" in line
