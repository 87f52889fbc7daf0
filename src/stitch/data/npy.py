"""One ``.npy`` array from an untrusted folder: a regular file, read without pickle, its failures one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stitch.data.errors import DataError
from stitch.io.untrusted import regular_file


def read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """The array at ``path`` (memory-mapped with ``mmap``), or one line saying why it cannot be read."""
    if not path.exists():
        raise DataError(f"{path}: no such file")
    regular_file(path, error=DataError)  # a FIFO would block np.load forever
    try:
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, EOFError, OSError) as err:
        raise DataError(f"{path}: not a readable .npy array (truncated, corrupt or pickled?): {err}") from err
