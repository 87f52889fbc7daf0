"""Unpaired pools: caption embeddings with no image and image embeddings with no caption, read from any
file stitch reads (a ``.npy`` matrix, a query file, a paired file or folder, whose links are then dropped).

They are untrusted like paired data: dimensions are checked against the pairs, NaN/Inf rows named by file
and row, and an image pool row equal to an evaluated dev image is refused (exact duplicates, found by
hashing rows), since pseudo-pairs drawn on the dev set would score what was trained on; caption pool rows
equal to dev captions (common texts repeat across pictures) are left out, and said. So are caption pool rows
equal to a training pair's caption: their image is known, and a pseudo-pair could only repeat or contradict it
(a pool of "all my captions" holds the paired ones too).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stitch.data.dataset import PairedEmbeddings, check_matrix
from stitch.data.dedupe import row_hashes
from stitch.data.errors import DataError, describe_rows
from stitch.data.npy import read_npy
from stitch.data.readers import load_pairs, load_queries

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnpairedPools:
    """Loose captions and images (float32 rows); ``truth[caption row]`` is the pool image row it was taken
    from, or -1, known only when both pools come from one paired file (used to measure pseudo-pair
    precision, never to fit)."""

    captions: np.ndarray
    images: np.ndarray
    truth: np.ndarray | None = None
    source: str = ""

    def describe(self) -> str:
        return f"{len(self.captions)} unpaired captions and {len(self.images)} unpaired images ({self.source})"


def read_side(path: str | Path, side: str, dim: int) -> tuple[np.ndarray, PairedEmbeddings | None]:
    """The ``captions`` or ``images`` rows of ``path`` as a finite float32 matrix of ``dim`` columns, and the
    paired data they came from when the file is a paired one."""
    path = Path(path)
    paired = None
    if path.suffix == ".npy":
        rows = read_npy(path)
    else:
        try:
            opened = load_pairs(path)
        except DataError:
            if side != "captions":
                raise
            rows = load_queries(path).embeddings  # a query file: captions with no images
        else:
            paired = opened.to_memory()  # in memory already, or read from disk
            rows = paired.captions if side == "captions" else paired.images
    return _checked(path, side, rows, dim), paired


def _checked(path: Path, side: str, rows: np.ndarray, dim: int) -> np.ndarray:
    rows = check_matrix(f"{path}: unpaired {side}", rows)  # 2-D, non-empty, numbers, finite: float32
    if rows.shape[1] != dim:
        raise DataError(f"{path}: unpaired {side} have {rows.shape[1]} dims, the pairs' {side} have {dim}")
    return rows


def read_pools(
    captions_path: str, images_path: str, text_dim: int, image_dim: int, dev: PairedEmbeddings
) -> UnpairedPools:
    """Both pools, checked against the pairs' dimensions and refused where a row is a dev row. Both from one
    paired file: it is read once, and its links are the truth pseudo-pairs are measured against."""
    if not captions_path or not images_path:
        raise DataError("self-learning needs both pools: semi.unpaired_captions and semi.unpaired_images")
    captions, paired = read_side(captions_path, "captions", text_dim)
    same_file = paired is not None and Path(captions_path).resolve() == Path(images_path).resolve()
    if same_file:
        images = _checked(Path(images_path), "images", paired.images, image_dim)
    else:
        images, _ = read_side(images_path, "images", image_dim)
    refuse_dev_rows(images, dev.images, f"{images_path}: unpaired images", "dev images")
    truth = np.asarray(paired.caption_image, dtype=np.int64) if same_file else None
    kept = without_dev_captions(captions, dev.captions, f"{captions_path}: unpaired captions")
    truth = truth[kept] if truth is not None else None
    return UnpairedPools(captions[kept], images, truth, f"{captions_path} + {images_path}")


def without_dev_captions(pool: np.ndarray, dev: np.ndarray, where: str) -> np.ndarray:
    """Rows of the caption pool to keep: none equal to a dev caption. Captions repeat across pictures ("a dog
    runs through the grass" is the caption of many), so a copy of a dev caption in a pool of training captions
    is expected: it is left out and said, not refused. A pool left empty (the dev file given as a pool) is."""
    pool_hash = row_hashes(pool)
    shared = np.isin(pool_hash, row_hashes(dev))
    if shared.all():
        raise DataError(f"{where}: every row equals a dev caption; a pool must not hold what is evaluated")
    if shared.any():
        row = int(np.flatnonzero(shared)[0])
        logger.warning(
            "%s: left out %d row(s) equal to dev captions (the same text on another picture, e.g. row %d), so no "
            "evaluated query is learnt from",
            where,
            int(shared.sum()),
            row,
        )
    return np.flatnonzero(~shared)


def without_paired_captions(pools: UnpairedPools, paired: Iterable[np.ndarray]) -> UnpairedPools:
    """``pools`` without the caption rows equal to a caption of ``paired`` (the training pairs' captions, in
    chunks): already paired, they are left out and said; the image pool is kept whole (an unpaired caption may
    well describe a paired image). Nothing may be left, and then no pseudo-pair is drawn."""
    known = [row_hashes(chunk) for chunk in paired]
    shared = np.isin(row_hashes(pools.captions), np.concatenate(known) if known else np.zeros(0, "S16"))
    if not shared.any():
        return pools
    logger.warning(
        "unpaired captions: left out %d of %d row(s) equal to training captions (already paired)%s",
        int(shared.sum()),
        len(shared),
        "; none is left, so no pseudo-pair is drawn" if shared.all() else "",
    )
    truth = None if pools.truth is None else pools.truth[~shared]
    return UnpairedPools(pools.captions[~shared], pools.images, truth, pools.source)


def refuse_dev_rows(pool: np.ndarray, dev: np.ndarray, where: str, dev_name: str) -> None:
    """A pool row equal to an evaluated row would let pseudo-pairs learn the dev set: refused, naming both."""
    pool_hash, dev_hash = row_hashes(pool), row_hashes(dev)
    shared = np.flatnonzero(np.isin(pool_hash, dev_hash))
    if len(shared):
        row = int(shared[0])
        dev_row = int(np.flatnonzero(dev_hash == pool_hash[row])[0])
        raise DataError(
            f"{where}: {describe_rows(shared)} equal rows of the {dev_name} (pool row {row} is dev row {dev_row}); "
            "a pool must not hold what is evaluated: drop the dev split from it"
        )
