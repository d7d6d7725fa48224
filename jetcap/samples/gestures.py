"""Synthetic hand-gesture keypoint sequences (numpy only, Python 3.6).

Each frame holds 21 hand landmarks in MediaPipe order (wrist; thumb 1-4; index 5-8; middle 9-12;
ring 13-16; pinky 17-20) as ``x, y, z`` (63 features): ``x``/``y`` in normalized image coordinates
(0..1, y down), ``z`` a relative depth.  Six classes (:data:`CLASSES`):

* ``wave``: open hand rocking about the wrist;       * ``swipe_left`` / ``swipe_right``: open hand
  sweeping across the image;                          * ``circle``: pointing hand tracing a loop;
* ``pinch``: thumb and index closing and opening;    * ``point``: pointing hand pushed towards the camera.

They are made less than trivially separable by: a random hand size, position, in-plane rotation
(+-35 degrees) and handedness (mirroring); random amplitude, speed, number of cycles, phase and
direction; idle frames before and after the motion; a slow random drift of the whole hand; per-finger
pose jitter; landmark noise; and dropped detections (all-zero frames, ~3 %).  Lengths vary from 20 to
120 frames.  The same ``(n, seed)`` gives the same bytes (numpy's legacy ``RandomState`` stream).
"""
import numpy as np

CLASSES = ["wave", "swipe_left", "swipe_right", "circle", "pinch", "point"]
NUM_LANDMARKS = 21
NUM_FEATURES = 3 * NUM_LANDMARKS
MIN_FRAMES = 20
MAX_FRAMES = 120

# (base x, base y, direction in degrees, segment lengths) of thumb, index, middle, ring, pinky in a
# hand-length-1 frame: wrist at the origin, fingers pointing up (+y), palm facing the camera.
_FINGERS = (
    (-0.20, 0.10, 140.0, (0.20, 0.16, 0.12)),
    (-0.13, 0.45, 96.0, (0.25, 0.15, 0.12)),
    (0.00, 0.48, 90.0, (0.28, 0.17, 0.13)),
    (0.11, 0.45, 84.0, (0.26, 0.16, 0.12)),
    (0.21, 0.40, 77.0, (0.20, 0.12, 0.10)),
)
_BENDS = np.radians([75.0, 90.0, 60.0]).astype(np.float32)  # per-joint bend at full flexion
_OPEN = np.array([0.10, 0.05, 0.05, 0.05, 0.05], dtype=np.float32)
_POINTING = np.array([0.70, 0.02, 0.95, 0.95, 0.95], dtype=np.float32)


def generate(n, seed, length=None):
    """``n`` gesture sequences and their labels, deterministic in ``(n, seed, length)``.

    Args:
        n: number of sequences (>= 0); classes are drawn uniformly.
        seed: integer seed in [0, 2**32).
        length: frames of every sequence (20..120); default ``None`` draws each length uniformly.
    Returns:
        ``(sequences, labels)``: a list of float32 arrays ``(T, 63)`` and a list of class indices.
    """
    if length is not None and not MIN_FRAMES <= int(length) <= MAX_FRAMES:
        raise ValueError("length must be in [{}, {}], got {}".format(MIN_FRAMES, MAX_FRAMES, length))
    rng = np.random.RandomState(seed)
    sequences, labels = [], []
    for _ in range(n):
        label = int(rng.randint(len(CLASSES)))
        frames = int(length) if length is not None else int(rng.randint(MIN_FRAMES, MAX_FRAMES + 1))
        sequences.append(make_sequence(rng, label, frames))
        labels.append(label)
    return sequences, labels


def make_sequence(rng, label, frames):
    """One float32 ``(frames, 63)`` sequence of class ``label`` drawn from ``rng`` (a RandomState)."""
    t = _gesture_time(rng, frames)
    flex = np.tile(_OPEN, (frames, 1))
    angle = np.zeros(frames, dtype=np.float32)  # in-plane rotation about the wrist (radians)
    shift = np.zeros((frames, 2), dtype=np.float32)  # wrist offset in hand lengths
    scale = np.ones(frames, dtype=np.float32)
    name = CLASSES[label]
    cycles = rng.uniform(1.2, 3.5)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    if name == "wave":
        amplitude = np.radians(rng.uniform(12.0, 35.0))
        angle += amplitude * np.sin(2.0 * np.pi * cycles * t + phase) * _envelope(t)
    elif name in ("swipe_left", "swipe_right"):
        distance = rng.uniform(1.2, 2.8) * (-1.0 if name == "swipe_left" else 1.0)
        progress = _smoothstep(t)
        shift[:, 0] = distance * (progress - 0.5)
        shift[:, 1] = rng.uniform(-0.4, 0.4) * (progress - 0.5)
        angle += np.radians(rng.uniform(-10.0, 10.0)) * progress
    elif name == "circle":
        flex[:] = _POINTING
        radius = rng.uniform(0.45, 0.9)
        turns = rng.uniform(1.0, 2.0) * rng.choice([-1.0, 1.0])
        theta = 2.0 * np.pi * turns * t + phase
        shift[:, 0] = radius * (np.cos(theta) - np.cos(phase))
        shift[:, 1] = radius * (np.sin(theta) - np.sin(phase))
    elif name == "pinch":
        flex[:, 2:] = rng.uniform(0.05, 0.4)
        closing = 0.5 - 0.5 * np.cos(2.0 * np.pi * rng.uniform(1.0, 3.0) * t)
        flex[:, 0] = 0.25 + 0.55 * closing
        flex[:, 1] = 0.10 + 0.45 * closing
    else:  # point: pointing hand pushed towards the camera and back
        flex[:] = _POINTING
        push = np.sin(np.pi * t) ** 2
        scale *= 1.0 + rng.uniform(0.15, 0.5) * push
        shift[:, 1] += rng.uniform(-0.3, 0.3) * push
    flex += rng.uniform(-0.08, 0.08, size=(1, 5)).astype(np.float32)
    flex += rng.normal(0.0, 0.02, size=flex.shape).astype(np.float32)
    np.clip(flex, 0.0, 1.0, out=flex)
    shift += _drift(rng, frames, 0.25)
    angle += _drift(rng, frames, 0.08)[:, 0]
    points = _hand(flex)  # (T, 21, 3), hand-length units
    if rng.uniform() < 0.5:  # left hand
        points[:, :, 0] *= -1.0
    tilt = angle + np.radians(rng.uniform(-35.0, 35.0))
    cos, sin = np.cos(tilt)[:, None], np.sin(tilt)[:, None]
    x = cos * points[:, :, 0] - sin * points[:, :, 1]
    y = sin * points[:, :, 0] + cos * points[:, :, 1]
    size = rng.uniform(0.12, 0.22) * scale[:, None]
    centre = rng.uniform(0.3, 0.7, size=2)
    out = np.empty((frames, NUM_LANDMARKS, 3), dtype=np.float32)
    out[:, :, 0] = centre[0] + size * (x + shift[:, :1])
    out[:, :, 1] = centre[1] + 0.25 - size * (y + shift[:, 1:])
    out[:, :, 2] = 0.5 * size * points[:, :, 2]
    out += rng.normal(0.0, 0.004, size=out.shape).astype(np.float32)
    out[rng.uniform(size=frames) < 0.03] = 0.0  # dropped detections
    return out.reshape(frames, NUM_FEATURES).astype(np.float32)


def _gesture_time(rng, frames):
    """Normalized gesture time per frame: 0 before the motion starts, 1 after it ends, with a random
    start, end and speed profile in between."""
    begin = rng.uniform(0.0, 0.2)
    end = rng.uniform(0.8, 1.0)
    u = np.clip((np.linspace(0.0, 1.0, frames) - begin) / (end - begin), 0.0, 1.0)
    warp = rng.uniform(0.7, 1.4)
    return (u ** warp).astype(np.float32)


def _envelope(t):
    return np.sqrt(np.clip(np.sin(np.pi * t), 0.0, 1.0))


def _smoothstep(t):
    return t * t * (3.0 - 2.0 * t)


def _drift(rng, frames, amount):
    """A slow random walk ``(frames, 2)`` of about ``amount`` in size."""
    steps = rng.normal(0.0, 1.0, size=(frames, 2))
    walk = np.cumsum(steps, axis=0) / np.sqrt(frames)
    return (amount * (walk - walk[:1])).astype(np.float32)


def _hand(flex):
    """Landmarks ``(T, 21, 3)`` of a hand whose fingers (thumb..pinky) are flexed by ``flex`` (T, 5)
    in [0, 1]: each joint bends towards the palm (-z) by its share of :data:`_BENDS`."""
    frames = flex.shape[0]
    points = np.zeros((frames, NUM_LANDMARKS, 3), dtype=np.float32)
    for finger, (bx, by, direction, lengths) in enumerate(_FINGERS):
        u = np.array([np.cos(np.radians(direction)), np.sin(np.radians(direction)), 0.0], dtype=np.float32)
        joint = np.tile(np.array([bx, by, 0.0], dtype=np.float32), (frames, 1))
        index = 1 + 4 * finger
        points[:, index] = joint
        bend = np.zeros(frames, dtype=np.float32)
        for k, length in enumerate(lengths):
            bend = bend + flex[:, finger] * _BENDS[k]
            segment = (np.cos(bend)[:, None] * u[None, :]
                       + np.sin(bend)[:, None] * np.array([0.0, 0.0, -1.0], dtype=np.float32)[None, :])
            joint = joint + length * segment
            points[:, index + 1 + k] = joint
    return points
