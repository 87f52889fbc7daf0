"""The rows every layout reader produces, before they become shards: one input file's pairs (:class:`Part`),
the column options every table layout shares (:class:`Spec`), and :class:`ChunkedRows` for a matrix an Arrow
file holds in several record batches.

Kept apart from the readers so that each reader fills the same container and one grouping step
(:mod:`stitch.data.layouts.grouping`) checks and shards them all alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class ChunkedRows:
    """A matrix held as several zero-copy row blocks (an Arrow file's record batches), indexed by rows like an
    array. Joining the blocks would copy the whole file into memory; rows are gathered only when read."""

    def __init__(self, blocks: Sequence[np.ndarray]) -> None:
        self.blocks = list(blocks)
        self.starts = np.concatenate([[0], np.cumsum([len(b) for b in self.blocks])]).astype(np.int64)
        self.dtype = self.blocks[0].dtype
        self.shape = (int(self.starts[-1]), int(self.blocks[0].shape[1]))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        """``rows`` (ints, a slice or a boolean mask) as a new (k, dims) array; an int gives one row."""
        if isinstance(rows, tuple):
            raise TypeError("ChunkedRows is indexed by rows only")
        picked = self._positions(rows)
        out = np.empty((picked.size, self.shape[1]), dtype=self.dtype)
        flat = picked.ravel()
        which = np.searchsorted(self.starts, flat, side="right") - 1
        for k in np.unique(which):
            mine = which == k
            out[mine] = self.blocks[k][flat[mine] - self.starts[k]]
        return out[0] if picked.ndim == 0 else out

    def _positions(self, rows: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(rows, slice):
            return np.arange(*rows.indices(n))
        picked = np.asarray(rows)
        if picked.size == 0:
            return picked.astype(np.int64)
        if picked.dtype == bool:
            if picked.shape != (n,):
                raise IndexError(f"boolean index of shape {picked.shape} for {n} rows")
            return np.flatnonzero(picked)
        if picked.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, a slice or a boolean mask, got {picked.dtype}")
        if picked.min() < -n or picked.max() >= n:
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(picked < 0, picked + n, picked).astype(np.int64)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)


@dataclass(frozen=True)
class Spec:
    """Which columns hold what (the same options for every table layout)."""

    text_column: str | None = None
    image_column: str | None = None
    image_key: str | None = None
    caption_column: str | None = "caption"
    split_column: str | None = "split"


@dataclass
class Part:
    """One input file's rows, one image-caption pair a row, before rows sharing a key become one image."""

    name: str
    text: np.ndarray | ChunkedRows
    image: np.ndarray | ChunkedRows
    keys: np.ndarray | None = None
    captions: np.ndarray | None = None
    split: np.ndarray | None = None
