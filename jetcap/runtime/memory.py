"""How much memory this process may still use: /proc/meminfo and cgroup v1/v2 limits (Python 3.6).

The parsers take the text of the files, so they are testable with any sample; ``read_memory_info``
reads the real files.  On a Jetson Nano the GPU shares the 4 GB of RAM, so ``MemAvailable`` is the
number that matters; in a container the cgroup limit can be much lower than what the host has.
Used by the checkpoint loader (refuse before instantiating a model that cannot fit) and the runtime.
"""
import os

# cgroup v1 reports "no limit" as a huge page-aligned number (2**63 - 4096 on 64-bit kernels).
_UNLIMITED_THRESHOLD = 1 << 60


def parse_meminfo(text):
    """``/proc/meminfo`` text -> ``{field: bytes}`` (``kB`` values are converted to bytes).

    Args:
        text: the file's content, lines like ``MemAvailable:   23712528 kB``.
    """
    out = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        if len(parts) > 1 and parts[1].lower() == "kb":
            value *= 1024
        out[name.strip()] = value
    return out


def parse_proc_cgroup(text):
    """``/proc/self/cgroup`` text -> ``(v1_memory_path, v2_path)``; either may be None.

    Lines are ``hierarchy-id:controllers:path``; cgroup v2 has the single line ``0::path`` and v1
    names ``memory`` among the controllers.
    """
    v1_memory, v2 = None, None
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2 = path
        elif "memory" in controllers.split(","):
            v1_memory = path
    return v1_memory, v2


def parse_limit(text):
    """A cgroup limit file (``memory.max`` or ``memory.limit_in_bytes``) -> bytes, or None for no limit."""
    value = text.strip()
    if not value or value == "max":
        return None
    number = int(value)
    if number >= _UNLIMITED_THRESHOLD:
        return None
    return number


def parse_memory_stat(text):
    """A cgroup ``memory.stat`` text -> ``{field: int}``."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def cgroup_available(limit, usage, stat):
    """Bytes a cgroup may still allocate: ``limit`` minus its working set.

    The working set is ``usage`` minus inactive page cache (reclaimable), as container runtimes
    count it.  Returns None when ``limit`` is None (no limit).

    Args:
        limit: the limit in bytes or None.
        usage: current usage in bytes (``memory.current`` / ``memory.usage_in_bytes``) or None.
        stat: ``parse_memory_stat`` of ``memory.stat`` (v1 names ``total_inactive_file``, v2 ``inactive_file``).
    """
    if limit is None:
        return None
    if usage is None:
        return limit
    inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
    working_set = max(0, usage - min(inactive, usage))
    return max(0, limit - working_set)


class MemoryInfo(object):
    """What the system and the cgroup allow; ``available`` is the smaller of the two (bytes).

    Attributes:
        mem_available: ``MemAvailable`` from /proc/meminfo (or None when unreadable).
        mem_total: ``MemTotal`` (or None).
        cgroup_version: 1, 2 or None when no memory limit applies.
        cgroup_limit: the cgroup's memory limit in bytes (or None).
        cgroup_available: the limit minus the cgroup's working set (or None).
    """

    def __init__(self, mem_available=None, mem_total=None, cgroup_version=None, cgroup_limit=None,
                 cgroup_available=None):
        self.mem_available = mem_available
        self.mem_total = mem_total
        self.cgroup_version = cgroup_version
        self.cgroup_limit = cgroup_limit
        self.cgroup_available = cgroup_available

    @property
    def available(self):
        """Bytes this process may still allocate, or None when nothing could be read."""
        values = [v for v in (self.mem_available, self.cgroup_available) if v is not None]
        return min(values) if values else None

    def describe(self):
        """One line for messages, e.g. ``MemAvailable 3.1 GiB; cgroup v2 limit 2.0 GiB (1.2 GiB free)``."""
        parts = []
        if self.mem_available is not None:
            parts.append("MemAvailable {}".format(format_bytes(self.mem_available)))
        if self.cgroup_limit is not None:
            parts.append("cgroup v{} limit {} ({} free)".format(
                self.cgroup_version, format_bytes(self.cgroup_limit), format_bytes(self.cgroup_available or 0)))
        return "; ".join(parts) if parts else "memory information unavailable"

    def __repr__(self):
        return "MemoryInfo({})".format(self.describe())


def _read(path):
    try:
        with open(path, "r") as handle:
            return handle.read()
    except (IOError, OSError):
        return None


def _cgroup_dirs(root, path):
    """The cgroup directory of ``path`` under ``root`` and its ancestors (limits of each apply)."""
    dirs = []
    path = (path or "/").strip("/")
    while True:
        candidate = os.path.join(root, path) if path else root
        if os.path.isdir(candidate):
            dirs.append(candidate)
        if not path:
            break
        path = os.path.dirname(path)
    return dirs


def _v2_info(cgroup_root, path):
    best = None
    for directory in _cgroup_dirs(cgroup_root, path):
        text = _read(os.path.join(directory, "memory.max"))
        if text is None:
            continue
        limit = parse_limit(text)
        if limit is None:
            continue
        usage_text = _read(os.path.join(directory, "memory.current"))
        usage = int(usage_text.strip()) if usage_text and usage_text.strip() else None
        stat = parse_memory_stat(_read(os.path.join(directory, "memory.stat")) or "")
        free = cgroup_available(limit, usage, stat)
        if best is None or free < best[1]:
            best = (limit, free)
    return best


def _v1_info(memory_root, path):
    best = None
    for directory in _cgroup_dirs(memory_root, path):
        text = _read(os.path.join(directory, "memory.limit_in_bytes"))
        if text is None:
            continue
        stat = parse_memory_stat(_read(os.path.join(directory, "memory.stat")) or "")
        limits = [parse_limit(text), parse_limit(str(stat.get("hierarchical_memory_limit", "")))]
        limits = [v for v in limits if v is not None]
        if not limits:
            continue
        limit = min(limits)
        usage_text = _read(os.path.join(directory, "memory.usage_in_bytes"))
        usage = int(usage_text.strip()) if usage_text and usage_text.strip() else None
        free = cgroup_available(limit, usage, stat)
        if best is None or free < best[1]:
            best = (limit, free)
    return best


def read_memory_info(proc_root="/proc", cgroup_root="/sys/fs/cgroup"):
    """Read /proc/meminfo and this process's cgroup memory limit (v2 first, then v1).

    Args:
        proc_root: where procfs is mounted (default ``/proc``).
        cgroup_root: where the cgroup filesystem is mounted (default ``/sys/fs/cgroup``).
    """
    meminfo = parse_meminfo(_read(os.path.join(proc_root, "meminfo")) or "")
    info = MemoryInfo(mem_available=meminfo.get("MemAvailable", meminfo.get("MemFree")),
                      mem_total=meminfo.get("MemTotal"))
    v1_path, v2_path = parse_proc_cgroup(_read(os.path.join(proc_root, "self", "cgroup")) or "")
    found, version = None, None
    if v2_path is not None:
        found, version = _v2_info(cgroup_root, v2_path), 2
    if found is None and v1_path is not None:
        found, version = _v1_info(os.path.join(cgroup_root, "memory"), v1_path), 1
    if found is not None:
        info.cgroup_version = version
        info.cgroup_limit, info.cgroup_available = found
    return info


def format_bytes(count):
    """``1536`` -> ``'1.5 KiB'``; ``None`` -> ``'unknown'``."""
    if count is None:
        return "unknown"
    value = float(count)
    if abs(value) < 1024.0:
        return "{:.0f} B".format(value)
    unit = "KiB"
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024.0
        if abs(value) < 1024.0:
            break
    return "{:.1f} {}".format(value, unit)


M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number
MMAP_THRESHOLD_BYTES = 1 << 20


def pin_mmap_threshold(threshold=MMAP_THRESHOLD_BYTES):
    """Fix glibc's mmap threshold at ``threshold`` bytes; True when glibc took it (False elsewhere).

    glibc serves allocations above the threshold with their own mmap, returned to the system on free,
    but by default it raises the threshold to the size of each such block freed (up to 32 MiB on 64-bit),
    so a server that decoded one 36-megapixel image serves the next from its heap, which it rarely gives
    back: RSS ratchets up request by request.  A fixed threshold also turns that adjustment off.  This is
    what ``MALLOC_MMAP_THRESHOLD_`` does, for a process already started.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (or no C library to ask): nothing to pin
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, int(threshold)) == 1
