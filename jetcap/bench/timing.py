"""Timing helpers: warm-up, repeated wall-clock samples, robust summaries (Python 3.6, stdlib only)."""
import math
import time


def percentile(values, q):
    """The ``q``-th percentile (0-100) of ``values`` with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = int(math.floor(position))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(seconds):
    """``{n, p50_ms, p95_ms, mean_ms, min_ms, total_s}`` of a list of durations in seconds."""
    return {
        "n": len(seconds),
        "p50_ms": percentile(seconds, 50) * 1e3,
        "p95_ms": percentile(seconds, 95) * 1e3,
        "mean_ms": sum(seconds) / len(seconds) * 1e3,
        "min_ms": min(seconds) * 1e3,
        "total_s": sum(seconds),
    }


def time_calls(call, repeat, warmup=0, before=None):
    """Durations (seconds) of ``repeat`` calls of ``call(i)`` after ``warmup`` untimed ones.

    Args:
        call: the function timed; receives the repetition index (warm-up calls get negative ones).
        repeat: timed calls (at least 1).
        warmup: untimed calls first (default 0).
        before: optional untimed setup run before every call, receiving the same index.
    """
    if repeat < 1:
        raise ValueError("repeat must be >= 1")
    for i in range(warmup):
        if before is not None:
            before(-1 - i)
        call(-1 - i)
    durations = []
    clock = time.perf_counter
    for i in range(repeat):
        if before is not None:
            before(i)
        start = clock()
        call(i)
        durations.append(clock() - start)
    return durations
