"""Text columns (caption texts, ids, image names, splits) whose memory follows their total size.

numpy's fixed-width strings take rows x the longest string x 4 bytes: one 2,000,000-character caption among
a few thousand rows is tens of gigabytes. Texts stitch holds are numpy's variable-width ``StringDType``;
texts it writes are Arrow's layout (UTF-8 bytes plus int64 row offsets, two ``.npy`` files read
memory-mapped); texts it reads from Arrow or Parquet stay Arrow columns until rows are asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stitch.data.errors import DataError, describe_rows
from stitch.data.npy import read_npy

TEXT = np.dtypes.StringDType()
OFFSETS, UTF8 = "offsets.npy", "utf8.npy"  # the two files of a column stem: ``NNNNN.caption_texts.offsets.npy``


def as_texts(values: Sequence | np.ndarray, name: str = "texts") -> np.ndarray:
    """``values`` (any strings, numbers, a lazy column) as a numpy string array: fixed-width numpy strings as
    they are (an npz file's own; ``np.savez`` can write them back), anything else variable width."""
    if isinstance(values, (OffsetTexts, ArrowTexts)):
        return values[np.arange(len(values))]
    array = values if isinstance(values, np.ndarray) else np.asarray(values, dtype=object)
    if array.dtype == TEXT or array.dtype.kind == "U":  # fixed-width as given: its memory is the file's own
        return array
    if array.dtype.kind == "S":
        raise DataError(f"{name} are bytes ({array.dtype}); store them as text")
    return array.astype(TEXT)


class OffsetTexts:
    """A column of texts stored as Arrow lays out strings: row ``i`` is ``utf8[offsets[i]:offsets[i + 1]]``.
    Opened memory-mapped and checked (offsets start at 0, never decrease, end at the byte count); rows are
    decoded when asked for, and a row that is not UTF-8 is named by file and row."""

    def __init__(self, offsets: np.ndarray, utf8: np.ndarray, where: str) -> None:
        self.offsets, self.utf8, self.where = offsets, utf8, where

    @classmethod
    def open(cls, folder: Path, stem: str, rows: int) -> OffsetTexts:
        """The column ``stem`` of ``folder`` (its two files read memory-mapped), checked to hold ``rows`` rows."""
        offsets_path, utf8_path = folder / f"{stem}.{OFFSETS}", folder / f"{stem}.{UTF8}"
        return cls.checked(read_npy(offsets_path, mmap=True), read_npy(utf8_path, mmap=True), offsets_path, rows)

    @classmethod
    def checked(cls, offsets: np.ndarray, utf8: np.ndarray, offsets_path: Path, rows: int) -> OffsetTexts:
        """The column of arrays already read from ``offsets_path`` and its ``utf8`` sibling, checked."""
        utf8_path = offsets_path.with_name(offsets_path.name.removesuffix(OFFSETS) + UTF8)
        if offsets.shape != (rows + 1,) or offsets.dtype != np.int64:
            raise DataError(f"{offsets_path}: expected {rows + 1} int64 offsets, got {offsets.dtype} {offsets.shape}")
        if utf8.ndim != 1 or utf8.dtype != np.uint8:
            raise DataError(f"{utf8_path}: expected 1-D uint8 bytes, got {utf8.dtype} {utf8.shape}")
        steps = np.diff(offsets)
        if offsets[0] != 0 or offsets[-1] != len(utf8) or (steps < 0).any():
            bad = np.flatnonzero(steps < 0)
            rows_named = f"; decreasing at {describe_rows(bad)}" if len(bad) else ""
            raise DataError(
                f"{offsets_path}: offsets must run from 0 to the {len(utf8)} bytes of {utf8_path.name} without "
                f"decreasing (they run {int(offsets[0])} to {int(offsets[-1])}{rows_named}); truncated or replaced?"
            )
        return cls(offsets, utf8, str(offsets_path))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, rows: np.ndarray | slice) -> np.ndarray:
        picked = np.arange(len(self))[rows] if isinstance(rows, slice) else _rows(rows)
        out = np.empty(len(picked), dtype=TEXT)
        for k, row in enumerate(picked.tolist()):
            try:
                out[k] = bytes(self.utf8[self.offsets[row] : self.offsets[row + 1]]).decode("utf-8")
            except UnicodeDecodeError as err:
                raise DataError(f"{self.where}: row {row} is not valid UTF-8 ({err.reason})") from err
        return out

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self[slice(None)]


class ArrowTexts:
    """A pyarrow string column (memory-mapped where its file is) turned into numpy texts only for the rows
    asked for: as one numpy array every row would take the longest caption's width."""

    def __init__(self, column: object) -> None:
        self.column = column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, rows: np.ndarray | slice) -> np.ndarray:
        import pyarrow as pa

        picked = np.arange(len(self))[rows] if isinstance(rows, slice) else _rows(rows)
        return as_texts(self.column.take(pa.array(picked)).to_numpy(zero_copy_only=False))

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self[slice(None)]


def _rows(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)


def write_texts(folder: Path, stem: str, values: Sequence | np.ndarray) -> None:
    """``values`` as ``stem.offsets.npy`` and ``stem.utf8.npy`` (Arrow's string layout)."""
    encoded = [str(v).encode("utf-8") for v in (values.tolist() if isinstance(values, np.ndarray) else values)]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    utf8 = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    for name, array in ((f"{stem}.{OFFSETS}", offsets), (f"{stem}.{UTF8}", utf8)):
        with open(folder / name, "wb") as handle:
            np.save(handle, array, allow_pickle=False)
