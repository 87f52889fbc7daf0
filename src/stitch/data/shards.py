"""Training pairs as a list of shards whose rows are read on demand.

A :class:`Shard` is a block of images with the captions that describe them. Its arrays may be
memory-mapped files in float16 — rows are read (and widened to float32) only when a batch, a chunk of
statistics or an evaluation asks for them — or plain in-memory arrays: an in-memory
:class:`~stitch.data.PairedEmbeddings` is a single shard. Everything that trains reads pairs through
:class:`ShardList`, so data in RAM and data on disk take one path.

Image ids are global: ``image_offset`` of the shard plus the local image row, so labels stay
consistent across shards (a memory queue compares them across batches).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from stitch.data.errors import DataError, describe_rows
from stitch.options import CHUNK_ROWS  # noqa: F401 - rows per chunk when streaming; its readers import it here


@dataclass(frozen=True)
class Shard:
    """Captions of a block of images; ``rows``/``image_rows`` select a view (a split) without copying."""

    captions: np.ndarray  # (n, text_dim), any float dtype, possibly memory-mapped
    images: np.ndarray  # (m, image_dim)
    caption_image: np.ndarray  # (n,) local image row of each caption
    image_offset: int = 0  # global id of local image 0
    rows: np.ndarray | None = None  # the caption rows of this view (None: all)
    image_rows: np.ndarray | None = None  # the image rows of this view (None: all)
    relevant: np.ndarray | None = None  # (n, k) every relevant local image per caption, -1 padded
    name: str = "in memory"

    @property
    def n_captions(self) -> int:
        return len(self.captions) if self.rows is None else len(self.rows)

    @property
    def n_images(self) -> int:
        return len(self.images) if self.image_rows is None else len(self.image_rows)

    def caption_rows(self, positions: np.ndarray) -> np.ndarray:
        """Rows of the underlying arrays for positions within this view."""
        return positions if self.rows is None else self.rows[positions]

    def image_rows_at(self, positions: np.ndarray) -> np.ndarray:
        """Rows of the image array for positions within this view's images."""
        return positions if self.image_rows is None else np.asarray(self.image_rows)[positions]

    def image_chunks(self, chunk: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """The view's images in order, float32, at most ``chunk`` rows a read."""
        for start in range(0, self.n_images, chunk):
            yield self.read_images(self.image_rows_at(np.arange(start, min(start + chunk, self.n_images))))

    def read_captions(self, positions: np.ndarray) -> np.ndarray:
        """Captions at positions of this view, float32, checked finite (files on disk are read lazily, so a
        NaN is caught, with its shard and row, when first read)."""
        return read_checked(self.captions, self.caption_rows(positions), f"shard {self.name}: captions")

    def read_images(self, local: np.ndarray) -> np.ndarray:
        return read_checked(self.images, local, f"shard {self.name}: images")

    def own_images(self, positions: np.ndarray) -> np.ndarray:
        """Local image row of each caption at ``positions``."""
        return np.asarray(self.caption_image[self.caption_rows(positions)], dtype=np.int64)

    def labels(self, positions: np.ndarray) -> np.ndarray:
        """Global ids of every image relevant to each caption: (n,) or (n, k) padded with -1."""
        rows = self.caption_rows(positions)
        if self.relevant is None:
            return np.asarray(self.caption_image[rows], dtype=np.int64) + self.image_offset
        local = np.asarray(self.relevant[rows], dtype=np.int64)
        return np.where(local >= 0, local + self.image_offset, -1)

    def view(self, rows: np.ndarray, image_rows: np.ndarray) -> Shard:
        """This shard restricted to caption ``rows`` and image ``image_rows`` (rows of the full arrays)."""
        return replace(self, rows=rows, image_rows=image_rows)


def read_checked(matrix: np.ndarray, rows: np.ndarray, where: str) -> np.ndarray:
    """``matrix[rows]`` as float32, failing on NaN/Inf with the rows named (as in the shard's numbering)."""
    values = np.asarray(matrix[rows], dtype=np.float32)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DataError(f"{where} hold NaN/Inf values in {describe_rows(np.asarray(rows)[bad])}; clean or drop them")
    return values


class ShardList:
    """Shards seen as one sequence of captions (positions run across shards in order)."""

    def __init__(self, shards: Sequence[Shard]) -> None:
        shards = [s for s in shards if s.n_captions > 0]
        if not shards:
            raise DataError("no captions to train on")
        dims = {(s.captions.shape[1], s.images.shape[1]) for s in shards}
        if len(dims) != 1:
            raise DataError(f"shards disagree on dimensions (text, image): {sorted(dims)}")
        self.shards = list(shards)
        self.text_dim, self.image_dim = dims.pop()
        self.starts = np.concatenate([[0], np.cumsum([s.n_captions for s in self.shards])])

    @property
    def n_captions(self) -> int:
        return int(self.starts[-1])

    @property
    def label_width(self) -> int:
        """0 when every caption has one image (labels are ids), else the widest padded row of relevant images."""
        return max((0 if s.relevant is None else s.relevant.shape[1] for s in self.shards), default=0)

    @property
    def n_images(self) -> int:
        return sum(s.n_images for s in self.shards)

    def __len__(self) -> int:
        return len(self.shards)

    def read_captions(self, positions: np.ndarray) -> np.ndarray:
        """Captions at global positions (in the order given), float32."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), self.text_dim), dtype=np.float32)
        which = np.searchsorted(self.starts, positions, side="right") - 1
        for k in np.unique(which):
            mine = which == k
            out[mine] = self.shards[k].read_captions(positions[mine] - self.starts[k])
        return out

    def image_chunks(self, chunk: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
        """Every image of the view, float32, a chunk at a time."""
        for shard in self.shards:
            yield from shard.image_chunks(chunk)

    def pair_chunks(self, chunk: int = CHUNK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(captions, target images)`` a chunk at a time; a caption relevant to several images gets
        their mean (the closed-form fits' target)."""
        for shard in self.shards:
            for start in range(0, shard.n_captions, chunk):
                positions = np.arange(start, min(start + chunk, shard.n_captions))
                yield shard.read_captions(positions), _mean_target(shard, positions)


def _mean_target(shard: Shard, positions: np.ndarray) -> np.ndarray:
    if shard.relevant is None:
        return shard.read_images(shard.own_images(positions))
    local = np.asarray(shard.relevant[shard.caption_rows(positions)], dtype=np.int64)
    present = local >= 0
    total = np.zeros((len(local), shard.images.shape[1]), dtype=np.float64)
    for j in range(local.shape[1]):
        rows = np.where(present[:, j])[0]
        total[rows] += shard.read_images(local[rows, j])
    return (total / present.sum(1, keepdims=True)).astype(np.float32)
