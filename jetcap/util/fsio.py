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
        # mkstemp makes the file 0600; a bundle written by one account is served by another: the mode a
        # plain open() would have given (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def same_file(a, b):
    """True when paths ``a`` and ``b`` name one file (links and ``..`` included; compared by path when one
    does not exist yet)."""
    a, b = str(a), str(b)
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return os.path.realpath(a) == os.path.realpath(b)


def check_output_file(path, option, keep_out_of=(), suffixes=None, not_any_of=None):
    """UsageError unless ``path`` may be written by ``option``, checked before any work: its folder exists
    and is writable, it is not a folder, it is not inside one of the folders ``keep_out_of`` (the bundle
    being read: ``--junit manifest.json`` would destroy it), it is none of the files ``not_any_of``
    (``{path: what it is}``: the inputs, another output; links included), and it ends in one of
    ``suffixes`` when given."""
    from jetcap.errors import UsageError

    path = str(path)
    if os.path.isdir(path):
        raise UsageError("cannot write {} {}: it is a directory".format(option, path))
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError("cannot write {} {}: folder {} does not exist".format(option, path, folder))
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError("cannot write {} {}: permission denied".format(option, path))
    real = os.path.realpath(path)
    for protected in keep_out_of:
        inside = os.path.realpath(str(protected))
        if real == inside or real.startswith(inside.rstrip(os.sep) + os.sep):
            raise UsageError("{} {} is inside the bundle {}: write it elsewhere".format(option, path, protected))
    for other, what in (not_any_of or {}).items():
        if other is not None and same_file(path, other):
            raise UsageError("{} {} is {}: write it elsewhere".format(option, path, what))
    if suffixes and not path.lower().endswith(tuple(suffixes)):
        raise UsageError("{} {} must end in {}".format(option, path, " or ".join(suffixes)))


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


JETCAP_MARKERS = ("manifest.json", "jetcap-repository.json")


def is_jetcap_output(path):
    """True when ``path`` is a directory jetcap wrote: a bundle (``manifest.json`` with format
    ``jetcap-bundle``) or a Triton repository (``jetcap-repository.json``).  Only these may be replaced."""
    path = str(path)
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    if os.path.isfile(os.path.join(path, "jetcap-repository.json")):
        return True
    try:
        with open(os.path.join(path, "manifest.json"), "r") as handle:
            data = json.load(handle)
    except (IOError, OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and data.get("format") == "jetcap-bundle"


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == 1  # EPERM: alive, someone else's
    return True


def _siblings(path, kind):
    """``(name, pid)`` of the ``.<kind>-<basename>-<pid>-*`` work directories next to ``path``."""
    parent, base = os.path.split(path)
    prefix = ".{}-{}-".format(kind, base)
    found = []
    for name in os.listdir(parent):
        if name.startswith(prefix):
            pid_text = name[len(prefix):].split("-", 1)[0]
            found.append((os.path.join(parent, name), int(pid_text) if pid_text.isdigit() else None))
    return sorted(found)


def recover_directory(path):
    """Finish or undo an interrupted :func:`atomic_directory` swap of ``path`` and remove its leftovers.

    A kill between "old out of the way" and "new in place" leaves no ``path``: the complete new
    directory (``.new-*``) is put in place when there is one, else the old one (``.old-*``) comes back.
    Work directories of processes that are gone (``.tmp-*``) are removed.  Returns what was done (a list
    of short strings, empty when there was nothing to do).
    """
    path = os.path.abspath(str(path))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        return []
    done = []
    stale = lambda entries: [p for p, pid in entries if pid is None or pid == os.getpid() or not _pid_alive(pid)]
    news, olds = stale(_siblings(path, "new")), stale(_siblings(path, "old"))
    if not os.path.exists(path) and (news or olds):
        source = news[-1] if news else olds[-1]
        os.rename(source, path)
        done.append("restored {} from {}".format(path, os.path.basename(source)))
    for leftover in stale(_siblings(path, "tmp")) + [p for p in news + olds if os.path.exists(p)]:
        shutil.rmtree(leftover, ignore_errors=True)
        done.append("removed " + os.path.basename(leftover))
    return done


@contextlib.contextmanager
def atomic_directory(path, force=False, replaceable=is_jetcap_output):
    """Yield a temporary directory that replaces ``path`` when the block succeeds.

    The swap is recoverable: the finished directory is first renamed to ``.new-<name>-<pid>-*``, the old
    one to ``.old-<name>-<pid>-*``, then the new one into place; a run killed in between is finished (or
    undone) by the next call for the same ``path`` (:func:`recover_directory`), which also removes the
    ``.tmp-*`` work directories of killed runs.

    Args:
        path: the final directory.
        force: replace an existing ``path``; without it an existing non-empty directory is an error
            raised *before* any work is done (FileExistsError).
        replaceable: ``replaceable(path) -> bool``: what ``force`` may replace (default: only directories
            jetcap wrote, :func:`is_jetcap_output`); anything else is refused (UsageError) even with
            ``force``, so a mistyped ``-o`` never deletes a user's folder.
    """
    path = os.path.abspath(str(path))
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent)
    recover_directory(path)
    if os.path.lexists(path) and (not os.path.isdir(path) or os.path.islink(path) or os.listdir(path)):
        if not force:
            raise FileExistsError(path)
        if not replaceable(path):
            from jetcap.errors import UsageError

            raise UsageError("{} exists and is not a directory jetcap wrote (a bundle or repository): --force "
                             "replaces only those".format(path), hint="choose another output or remove it yourself")
    tag = "{}-{}-".format(os.path.basename(path), os.getpid())
    tmp = tempfile.mkdtemp(prefix=".tmp-" + tag, dir=parent)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would keep another account (the server's) out
    try:
        yield tmp
        new = tempfile.mkdtemp(prefix=".new-" + tag, dir=parent)
        os.rmdir(new)
        os.rename(tmp, new)
        tmp = new
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=".old-" + tag, dir=parent)
            os.rmdir(old)
            os.rename(path, old)
            os.rename(new, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(new, path)
    except BaseException:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def list_inputs(folder, suffixes, limit=None):
    """Sorted paths (str) of the files in ``folder`` whose suffix is one of ``suffixes``, at most ``limit``.

    Raises:
        UsageError: the folder does not exist or holds no such file, or one of those names is not a regular
            file (a FIFO would block the reader forever, a device never end).
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
    paths = [os.path.join(folder, n) for n in names]
    for path in paths:
        if not os.path.isfile(path):  # follows links: a link to a FIFO is refused too
            raise UsageError("{} is not a regular file (a folder, FIFO or device): refused".format(path))
    return paths

