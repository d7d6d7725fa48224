"""Deterministic .npz files: the same arrays always give the same bytes (Python 3.6).

``numpy.savez`` stamps the current time into the zip entries; bundles must be reproducible, so this
writes the entries with a fixed timestamp, sorted by name.
"""
import io
import zipfile

import numpy as np

from jetcap.util.fsio import atomic_path

_EPOCH = (1980, 1, 1, 0, 0, 0)


def save_npz(path, arrays, compress=True):
    """Write ``arrays`` ``{name: ndarray}`` to ``path`` atomically and deterministically."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=method) as archive:
            for name in sorted(arrays):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(arrays[name]), allow_pickle=False)
                info = zipfile.ZipInfo(name + ".npy", date_time=_EPOCH)
                info.compress_type = method
                info.external_attr = 0o644 << 16
                archive.writestr(info, buffer.getvalue())


def load_npz(path):
    """``{name: ndarray}`` of an npz file, loaded eagerly, pickles refused."""
    with np.load(str(path), allow_pickle=False) as data:
        return dict((name, data[name]) for name in data.files)
