"""Video input and output for ``jetcap caption-stream`` with OpenCV (Python 3.6, no torch).

* :func:`parse_source` / :func:`open_capture`: a camera index, a V4L2 device, a FIFO carrying a video
  stream, a GStreamer pipeline (``cv2.CAP_GSTREAMER``) or a video file, opened with one clear error.
* :class:`CaptureThread` reads a source into a bounded :class:`FrameQueue`: a live source never waits
  (a full queue drops its oldest frame, counted), a file waits (nothing is lost).
* :func:`draw_caption` / :class:`OverlayWriter`: the video with the current caption drawn on it.

``cv2`` is never imported here: callers pass the module they got from
:func:`jetcap.util.lazy.require` (``require("cv2")``), so importing this module costs nothing.
"""
import collections
import os
import stat
import threading
import time

import numpy as np

from jetcap.errors import UsageError

LIVE_KINDS = ("camera", "device", "pipe", "gstreamer", "url")
SOURCE_KINDS = LIVE_KINDS + ("file",)
OVERLAY_FOURCC = {".mp4": "mp4v", ".avi": "MJPG"}
LIVE_READ_RETRIES = 5  # consecutive failed reads (0.1 s apart) before a live source counts as gone
WINDOW_NAME = "jetcap caption-stream"
# The Jetson CSI camera (Raspberry Pi v2 / IMX219 and friends) through nvarguscamerasrc, as BGR frames
JETSON_CSI_PIPELINE = ("nvarguscamerasrc ! video/x-raw(memory:NVMM),width=1280,height=720,framerate=30/1 ! "
                       "nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! "
                       "appsink drop=true max-buffers=1")


# -- source -----------------------------------------------------------------------------------------
class VideoSource(object):
    """What SOURCE names.

    Attributes:
        text: SOURCE as given.
        kind: "camera" (an index), "device" (a character device such as /dev/video0), "pipe" (a FIFO
            carrying a video stream), "gstreamer" (a pipeline string), "url" (``rtsp://...``, an IP
            camera) or "file".
        target: what OpenCV opens: an int for a camera, else the path or pipeline string.
        live: True for every kind but "file" (frames are dropped rather than waited for).
    """

    def __init__(self, text, kind, target):
        if kind not in SOURCE_KINDS:
            raise ValueError("unknown source kind {!r}".format(kind))
        self.text = text
        self.kind = kind
        self.target = target
        self.live = kind in LIVE_KINDS

    def describe(self):
        """E.g. ``"camera 0 (live)"`` or ``"file clip.avi"``."""
        name = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return "{} {}{}".format(self.kind, name, " (live)" if self.live else "")

    def __repr__(self):
        return "VideoSource({})".format(self.describe())


def parse_source(text):
    """Classify SOURCE: a camera index (``0``), a device path, a FIFO, a GStreamer pipeline, a URL or a file.

    A string with ``!`` is a GStreamer pipeline; digits are a camera index; ``scheme://`` is a network
    stream; anything else must be an existing path (a character device, a FIFO or a regular file).

    Raises:
        UsageError: the path does not exist or is a directory.
    """
    text = str(text).strip()
    if not text:
        raise UsageError("empty SOURCE (a camera index such as 0, /dev/video0, a video file or a GStreamer pipeline)")
    if text.isdigit():
        return VideoSource(text, "camera", int(text))
    if "!" in text:
        return VideoSource(text, "gstreamer", text)
    if "://" in text.split()[0]:
        return VideoSource(text, "url", text)  # rtsp://, http://, udp://: an IP camera through FFmpeg
    try:
        mode = os.stat(text).st_mode
    except OSError:
        raise UsageError("video source not found: {}".format(text),
                         hint="SOURCE is a camera index such as 0, a device such as /dev/video0, a video file or "
                              "a GStreamer pipeline containing '!'")
    if stat.S_ISDIR(mode):
        raise UsageError("video source is a directory: {}".format(text))
    if stat.S_ISCHR(mode):
        return VideoSource(text, "device", text)
    if stat.S_ISFIFO(mode):
        return VideoSource(text, "pipe", text)
    return VideoSource(text, "file", text)


def opencv_has_gstreamer(cv2):
    """True when this OpenCV build lists ``GStreamer: YES`` in its build information."""
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip() == "GStreamer":
            return value.strip().upper().startswith("YES")
    return False


class _OpenCvQuiet(object):
    """Lower OpenCV's own log level to errors while opening (its WARN lines would garble our one-line
    messages); a no-op on builds without ``cv2.utils.logging``."""

    def __init__(self, cv2, enabled=True):
        logging = getattr(getattr(cv2, "utils", None), "logging", None)
        self.logging = logging if enabled and logging is not None and hasattr(logging, "setLogLevel") else None
        self.previous = None

    def __enter__(self):
        if self.logging is not None:
            self.previous = self.logging.getLogLevel()
            self.logging.setLogLevel(self.logging.LOG_LEVEL_ERROR)
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.logging is not None:
            self.logging.setLogLevel(self.previous)
        return False


def open_capture(cv2, source, quiet=True):
    """A ``cv2.VideoCapture`` for ``source`` that is open; UsageError saying why otherwise.

    Cameras and devices get a one-frame driver buffer, so a frame read is the newest one.
    """
    with _OpenCvQuiet(cv2, quiet):
        if source.kind == "camera":
            capture = cv2.VideoCapture(source.target)
        elif source.kind == "device" and hasattr(cv2, "CAP_V4L2"):
            capture = cv2.VideoCapture(source.target, cv2.CAP_V4L2)
        elif source.kind == "gstreamer":
            capture = cv2.VideoCapture(source.target, cv2.CAP_GSTREAMER)
        else:
            capture = cv2.VideoCapture(source.target)
    if not capture.isOpened():
        capture.release()
        hint = None
        if source.kind == "gstreamer" and not opencv_has_gstreamer(cv2):
            hint = ("this OpenCV {} was built without GStreamer; on a Jetson use JetPack's python3-opencv, "
                    "not pip's opencv-python".format(cv2.__version__))
        elif source.kind in ("camera", "device"):
            hint = "is a camera connected there and not in use by another process? v4l2-ctl --list-devices lists them"
        elif source.kind == "file":
            hint = "not a video OpenCV {} can decode".format(cv2.__version__)
        raise UsageError("cannot open video source {}".format(source.describe()), hint=hint)
    if source.kind in ("camera", "device"):
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
    return capture


def check_display(cv2):
    """UsageError unless a window can be shown: a display must exist and OpenCV must have a GUI."""
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise UsageError("--display needs a graphical display, but DISPLAY is not set",
                         hint="record the captioned video with --overlay OUT.mp4 instead")
    try:
        cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
    except cv2.error as exc:
        # cv2.error's .err is the reason without OpenCV's source location ("The function is not implemented. ...")
        detail = (getattr(exc, "err", None) or str(exc) or type(exc).__name__).strip().split(". ")[0]
        raise UsageError("this OpenCV cannot open windows: {}".format(detail),
                         hint="opencv-python-headless has no GUI; on a Jetson use JetPack's python3-opencv")


# -- frames, queue ----------------------------------------------------------------------------------
class Frame(object):
    """One source frame: ``index`` (0-based, in source order), ``timestamp`` (seconds into a file, wall
    time for a live source), ``image`` (BGR uint8 HxWx3) and ``captured_at`` (wall time it was read)."""

    __slots__ = ("index", "timestamp", "image", "captured_at")

    def __init__(self, index, timestamp, image, captured_at):
        self.index = index
        self.timestamp = timestamp
        self.image = image
        self.captured_at = captured_at


class FrameQueue(object):
    """A bounded frame queue between the capture thread and inference.

    With ``drop_oldest`` (live sources) :meth:`put` never waits: a full queue loses its oldest frame
    (counted in ``dropped``).  Without it (files) :meth:`put` waits for room, so nothing is lost.
    """

    TIMEOUT = object()  # what get() returns when nothing arrived in time

    def __init__(self, capacity, drop_oldest):
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = int(capacity)
        self.drop_oldest = bool(drop_oldest)
        self.dropped = 0
        self._items = collections.deque()
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._woken = False

    def __len__(self):
        return len(self._items)

    @property
    def closed(self):
        return self._closed

    def put(self, item):
        """Add ``item``; False when the queue was closed (the item is not added)."""
        with self._cond:
            while not self._closed and len(self._items) >= self.capacity:
                if self.drop_oldest:
                    self._items.popleft()
                    self.dropped += 1
                else:
                    self._cond.wait(0.5)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout=None):
        """The oldest item; None once closed and empty; :attr:`TIMEOUT` when ``timeout`` passed first, or
        when :meth:`wake` was called since the last ``get`` that found no item."""
        deadline = None if timeout is None else time.time() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                if self._woken:
                    self._woken = False
                    return self.TIMEOUT
                remaining = None if deadline is None else deadline - time.time()
                if remaining is not None and remaining <= 0:
                    return self.TIMEOUT
                self._cond.wait(remaining if remaining is not None else 0.5)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def wake(self):
        """Make a waiting (or the next empty) :meth:`get` return :attr:`TIMEOUT` now: the consumer has
        something else to do (a caption in flight finished)."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def close(self):
        """No more puts; waiting producers and consumers wake up (consumers still get what is queued)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self):
        """Forget every queued item; returns how many there were."""
        with self._cond:
            count = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return count


class CaptureThread(threading.Thread):
    """Reads the source into a :class:`FrameQueue` until stopped, the end, ``max_frames`` or a lost source.

    Only this thread touches the ``cv2.VideoCapture`` (OpenCV captures are not thread-safe) and it
    releases the capture when it ends.  Frames of a file that will neither be captioned nor drawn are
    grabbed without being decoded into an image.

    Attributes:
        frames_read: source frames taken so far.
        refused: frames read while the queue was closing at a stop, never queued (at most one).
        end_reason: why it stopped ("end of file", "max frames", "source vanished", "stopped", ...).
        vanished: a live source stopped delivering frames.
        damaged: a file ended well before the frame count its header declares, or a frame of it could
            not be decoded (the run ends with exit code 1: a truncated or corrupt file is not a clean end).
        error: an exception raised while reading (the run ends with exit code 1), else None.
    """

    def __init__(self, cv2, source, capture, queue, fps, first_image, every=1, need_all_images=True, max_frames=None,
                 loop=False, reopen=None):
        super(CaptureThread, self).__init__(name="jetcap-capture")
        self.daemon = True
        self.cv2 = cv2
        self.source = source
        self.capture = capture
        self.queue = queue
        self.fps = fps
        self.first_image = first_image
        self.every = every
        self.need_all_images = need_all_images or source.live
        self.max_frames = max_frames
        self.loop = loop
        self.reopen = reopen
        self.frames_read = 0
        self.refused = 0  # frames read but refused by the queue, closed at a stop (not processed)
        self.loops = 0
        self.end_reason = None
        self.vanished = False
        self.damaged = False
        self.error = None
        self._pass_start = 0  # frames_read when the current pass over a file began (--loop)
        declared = capture.get(cv2.CAP_PROP_FRAME_COUNT) if not source.live else 0
        self.declared_frames = int(declared) if declared and declared == declared and 0 < declared < 1e9 else 0
        self.released = threading.Event()
        self._stop_requested = threading.Event()

    def stop(self):
        """Ask the thread to stop after the frame it is reading."""
        self._stop_requested.set()

    def _timestamp(self, index, now):
        if self.source.live:
            return now
        if self.fps > 0:
            return index / self.fps
        return self.capture.get(self.cv2.CAP_PROP_POS_MSEC) / 1000.0

    def _grab(self):
        """True when a frame was grabbed, retrying a live source and looping a file as configured."""
        if self.capture.grab():
            return True
        if self.source.live:
            for _ in range(LIVE_READ_RETRIES):
                if self._stop_requested.wait(0.1):
                    return False
                if self.capture.grab():
                    return True
            self.vanished = True
            self.end_reason = "source vanished (no frame for {:.1f} s)".format(0.1 * LIVE_READ_RETRIES)
            return False
        read = self.frames_read - self._pass_start
        # containers estimate the count (duration x fps): a frame or 2 % short is still a whole file
        if self.declared_frames and read < self.declared_frames * 0.98 - 1:
            self.damaged = True
            self.end_reason = "the file ended after {} of the {} frames its header declares (truncated or " \
                              "corrupt?)".format(read, self.declared_frames)
            return False
        if self.loop and self.reopen is not None and self.frames_read > 0:
            self.capture.release()
            self.capture = self.reopen()
            self.loops += 1
            self._pass_start = self.frames_read
            if self.capture.grab():
                return True
        self.end_reason = "end of file"
        return False

    def _offer(self, index, image, now):
        """Queue a frame; False (and the frame counted in ``refused``) when the queue closed at a stop."""
        if self.queue.put(Frame(index, self._timestamp(index, now), image, now)):
            return True
        self.refused += 1
        return False

    def run(self):
        try:
            self.frames_read = 1
            if not self._offer(0, self.first_image, time.time()):
                self.end_reason = "stopped"
                return
            self.first_image = None
            index = 1
            while True:
                if self._stop_requested.is_set():
                    self.end_reason = "stopped"
                    return
                if self.max_frames is not None and index >= self.max_frames:
                    self.end_reason = "max frames ({})".format(self.max_frames)
                    return
                if not self._grab():
                    if self.end_reason is None:
                        self.end_reason = "stopped"
                    return
                now = time.time()
                self.frames_read += 1
                if self.need_all_images or index % self.every == 0:
                    ok, image = self.capture.retrieve()
                    if not ok or image is None:
                        self.vanished = self.source.live
                        self.damaged = not self.source.live
                        self.end_reason = "frame {} could not be decoded".format(index)
                        return
                    if not self._offer(index, image, now):
                        self.end_reason = "stopped"
                        return
                index += 1
        except Exception as exc:  # handed to the main thread, which reports it and exits 1
            self.error = exc
            self.end_reason = "capture failed: {}: {}".format(type(exc).__name__, exc)
        finally:
            self.queue.close()
            self.capture.release()
            self.released.set()


# -- outputs ----------------------------------------------------------------------------------------
def wrap_words(cv2, text, scale, thickness, width):
    """``text`` split into lines no wider than ``width`` pixels in OpenCV's Hershey simplex font."""
    lines, current = [], ""
    for word in text.split():
        candidate = (current + " " + word).strip()
        if current and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    if current:
        lines.append(current)
    return lines


def draw_caption(cv2, image, text):
    """A copy of the BGR ``image`` with ``text`` in white on a darkened band at the bottom."""
    out = np.array(image, dtype=np.uint8, copy=True)
    if not text:
        return out
    height, width = out.shape[:2]
    scale = max(0.3, width / 1000.0)
    thickness = 1 if scale < 0.9 else 2
    margin = max(2, int(round(6 * scale)))
    lines = wrap_words(cv2, text, scale, thickness, width - 2 * margin)
    (_, text_height), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
    line_height = text_height + baseline + margin
    band = min(height, line_height * len(lines) + margin)
    out[height - band:] = (out[height - band:].astype(np.uint16) * 3 // 8).astype(np.uint8)
    y = height - band + margin + text_height
    for line in lines:
        cv2.putText(out, line, (margin, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness,
                    cv2.LINE_AA)
        y += line_height
    return out


class OverlayWriter(object):
    """The captioned video: ``cv2.VideoWriter`` at the source's frame rate and size (mp4v or MJPG)."""

    def __init__(self, cv2, path, fps, size):
        self.cv2 = cv2
        self.path = path
        self.frames = 0
        fourcc = OVERLAY_FOURCC[os.path.splitext(path)[1].lower()]
        with _OpenCvQuiet(cv2):
            self.writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*fourcc), float(fps), (int(size[0]), int(size[1])))
        if not self.writer.isOpened():
            self.writer.release()
            raise UsageError("cannot write --overlay {}: OpenCV {} could not open a {} writer for it".format(
                path, cv2.__version__, fourcc), hint="try the other container (.avi with MJPG or .mp4 with mp4v)")

    def write(self, image):
        self.writer.write(image)
        self.frames += 1

    def release(self):
        """Finish the file (safe to call twice)."""
        if self.writer is not None:
            self.writer.release()
            self.writer = None

