"""Atomic file and directory writes, hashing, and JSON helpers (Python 3.6 compatible).

Every file jetcap produces is written to a temporary sibling and renamed into place, so an
interrupted run never leaves a half-written file that looks usable.
"""
import contextlib
import hashlib
import json
import os
import shutil
import tempfile


def sha256_file(path, chunk_size=1 << 20):
    """Hex sha256 of the file at ``path``, read in chunks of ``chunk_size`` bytes."""
    digest = hashlib.sha256()
    with open(str(path), "rb") as handle:
        while True:
            block = handle.read(chunk_size)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data):
    """Hex sha256 of ``data`` (bytes)."""
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    path = str(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        os.makedirs(directory)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix="-" + os.path.basename(path), dir=directory)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)


def write_json_atomic(path, obj):
    """Write ``obj`` as pretty, key-sorted JSON (deterministic bytes) to ``path`` atomically."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path):
    """Read a JSON file."""
    with open(str(path), "r") as handle:
        return json.load(handle)


@contextlib.contextmanager
def atomic_directory(path, force=False):
    """Yield a temporary directory that replaces ``path`` when the block succeeds.

    Args:
        path: the final directory.
        force: replace an existing ``path``; without it an existing non-empty directory is an error
            raised *before* any work is done (FileExistsError).
    """
    path = os.path.abspath(str(path))
    if os.path.exists(path) and not force and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(path)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    tmp = tempfile.mkdtemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=parent)
    try:
        yield tmp
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=".old-" + os.path.basename(path) + "-", dir=parent)
            os.rmdir(old)
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def list_inputs(folder, suffixes, limit=None):
    """Sorted paths (str) of the files in ``folder`` whose suffix is one of ``suffixes``, at most ``limit``.

    Raises:
        UsageError: the folder does not exist or holds no such file.
    """
    from jetcap.errors import UsageError

    folder = str(folder)
    if not os.path.isdir(folder):
        raise UsageError("folder not found: {}".format(folder))
    names = sorted(n for n in os.listdir(folder) if os.path.splitext(n)[1].lower() in suffixes)
    if limit:
        names = names[:limit]
    if not names:
        raise UsageError("{} holds no {} files".format(folder, "/".join(suffixes)))
    return [os.path.join(folder, n) for n in names]

