"""Helpers of the caption-stream tests: a short real video of sample shapes, its decoded frames, the
captions CaptionPipeline gives those frames in-process, and a live MJPEG stream written into a FIFO."""
import os
import threading
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2", reason="caption-stream needs OpenCV (pip install opencv-python-headless)")

from jetcap.runtime import preprocess  # noqa: E402
from jetcap.runtime.session import open_bundle  # noqa: E402
from jetcap.samples import shapes  # noqa: E402

FPS = 10.0


def write_video(path, frames=24, seed=11, fps=FPS):
    """Write ``frames`` shapes images (96x96) as an MJPG AVI at ``fps``; returns the path (a str)."""
    images, _ = shapes.generate(frames, seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (shapes.IMAGE_SIZE, shapes.IMAGE_SIZE))
    assert writer.isOpened()
    for image in images:
        writer.write(np.ascontiguousarray(image[:, :, ::-1]))  # RGB -> BGR
    writer.release()
    return str(path)


def decoded_frames(path):
    """Every frame of the video at ``path`` as OpenCV decodes it (BGR uint8): what the stream sees."""
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def reference_captions(bundle, frames, beam=1):
    """Captions of BGR ``frames`` by the runtime's CaptionPipeline, one frame at a time, in-process."""
    with open_bundle(bundle, backend="onnxruntime") as session:
        pipeline = session.caption_pipeline()
        preprocessing = session.manifest.preprocessing
        out = []
        for frame in frames:
            batch = preprocess.preprocess_array(frame[:, :, ::-1], preprocessing)[None]
            out.append(pipeline.text(pipeline.caption(batch, beam_size=beam)[0]))
        return out


class FifoWriter(threading.Thread):
    """Writes ``frames`` JPEG-encoded shapes images into the FIFO at ``path`` (a raw MJPEG stream, what
    e.g. ``ffmpeg -f mjpeg`` sends to a pipe), ``delay`` seconds apart, then closes it: a live source
    that vanishes."""

    def __init__(self, path, frames, delay=0.0, seed=11):
        super(FifoWriter, self).__init__(name="fifo-writer")
        self.daemon = True
        self.path = str(path)
        self.frames = frames
        self.delay = delay
        self.images, _ = shapes.generate(24, seed)
        self.written = 0
        self.reader_left = False

    def run(self):
        try:
            with open(self.path, "wb") as handle:
                for index in range(self.frames):
                    image = np.ascontiguousarray(self.images[index % len(self.images)][:, :, ::-1])
                    handle.write(cv2.imencode(".jpg", image)[1].tobytes())
                    handle.flush()
                    self.written += 1
                    if self.delay:
                        time.sleep(self.delay)
        except BrokenPipeError:
            self.reader_left = True  # the stream stopped reading first (a limit or a stop): expected


def make_fifo(directory, name="live.mjpeg"):
    path = os.path.join(str(directory), name)
    os.mkfifo(path)
    return path
