"""The one dataset type of stitch: paired caption and image embeddings.

Captions point at images through ``caption_image`` (many captions per image). Everything that
splits, trains or evaluates works on this type, so every reader ends by building one and
calling :meth:`PairedEmbeddings.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from stitch.data.errors import DataError, describe_rows
from stitch.data.holdout import holdout_rows
from stitch.data.relevance import Relevance
from stitch.data.shards import Shard, ShardList
from stitch.data.texts import as_texts


def check_finite(name: str, matrix: np.ndarray) -> None:
    """Fail on NaN/Inf rows, naming how many and which."""
    bad = np.where(~np.isfinite(matrix).all(axis=1))[0]
    if len(bad):
        raise DataError(f"{name} has NaN/Inf values in {describe_rows(bad)}; clean or drop them")


def check_matrix(name: str, matrix: np.ndarray) -> np.ndarray:
    """Return ``matrix`` as a non-empty 2-D float32 array with finite values."""
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise DataError(f"{name} must be 2-D (rows x dims), got shape {matrix.shape}")
    if matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise DataError(f"{name} is empty (shape {matrix.shape})")
    if matrix.dtype.kind not in "iuf":  # not bool, complex, timedelta, datetime, strings or objects
        raise DataError(f"{name} must be real numbers, got dtype {matrix.dtype}")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    check_finite(name, matrix)
    return matrix


def _check_labels(name: str, values: np.ndarray | None, length: int) -> np.ndarray | None:
    if values is None:
        return None
    values = as_texts(values, name)
    if values.shape != (length,):
        raise DataError(f"{name} has shape {values.shape}, expected ({length},) to match the rows")
    return values


@dataclass(frozen=True)
class Queries:
    """Caption-side embeddings to translate, with optional ids and texts (a test file)."""

    embeddings: np.ndarray
    ids: np.ndarray | None = None
    texts: np.ndarray | None = None

    def __post_init__(self) -> None:
        emb = check_matrix("caption embeddings", self.embeddings)
        object.__setattr__(self, "embeddings", emb)
        object.__setattr__(self, "ids", _check_labels("caption ids", self.ids, len(emb)))
        object.__setattr__(self, "texts", _check_labels("caption texts", self.texts, len(emb)))
        if self.ids is not None and len(np.unique(self.ids)) != len(self.ids):
            raise DataError("caption ids are not unique; a submission needs one row per id")

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def row_ids(self) -> np.ndarray:
        """Ids for output rows: the file's ids, else the row numbers."""
        return self.ids if self.ids is not None else np.arange(len(self)).astype(str)


def _check_relevance(relevance: Relevance | None, owner: np.ndarray, n_images: int) -> Relevance | None:
    """The relation, checked against the captions and images; None when it says no more than ``owner``."""
    if relevance is None:
        return None
    if not isinstance(relevance, Relevance):
        raise DataError(f"relevance must be a stitch.data.Relevance, got {type(relevance).__name__}")
    if relevance.n_queries != len(owner) or relevance.n_items != n_images:
        raise DataError(
            f"relevance relates {relevance.n_queries} queries to {relevance.n_items} items, "
            f"but the data has {len(owner)} captions and {n_images} images"
        )
    keys = relevance.link_queries * n_images + relevance.items  # sorted: rows are ordered, items within rows
    wanted = np.arange(len(owner)) * n_images + owner
    found = np.searchsorted(keys, wanted)
    missing = np.where((found >= len(keys)) | (keys[np.minimum(found, len(keys) - 1)] != wanted))[0]
    if len(missing):
        raise DataError(f"captions whose own image is not among their relevant images: {describe_rows(missing)}")
    return None if relevance.is_single else relevance


@dataclass(frozen=True)
class PairedEmbeddings:
    """Caption embeddings, image embeddings and which image each caption describes."""

    captions: np.ndarray
    images: np.ndarray
    caption_image: np.ndarray
    caption_ids: np.ndarray | None = None
    caption_texts: np.ndarray | None = None
    image_names: np.ndarray | None = None
    image_split: np.ndarray | None = None
    encoders: dict = field(default_factory=dict)
    allow_images_without_captions: bool = False
    relevance: Relevance | None = None  # every image each caption is relevant to; None: just caption_image

    def __repr__(self) -> str:
        """A summary a notebook can show (counts, dimensions, splits), not the arrays."""
        splits = ""
        if self.image_split is not None:
            names, counts = np.unique(self.image_split, return_counts=True)
            splits = ", images by split: " + ", ".join(f"{n} {c}" for n, c in zip(names, counts))
        encoders = f", encoders {self.encoders}" if self.encoders else ""
        return (
            f"PairedEmbeddings({len(self.captions)} captions x {self.captions.shape[1]}, "
            f"{len(self.images)} images x {self.images.shape[1]}{splits}{encoders})"
        )

    def __post_init__(self) -> None:
        captions = check_matrix("caption embeddings", self.captions)
        images = check_matrix("image embeddings", self.images)
        index = np.asarray(self.caption_image)
        if index.ndim != 1 or len(index) != len(captions):
            raise DataError(
                f"caption->image index has shape {index.shape}, expected ({len(captions)},): one image row per caption"
            )
        if not np.issubdtype(index.dtype, np.integer):
            if np.issubdtype(index.dtype, np.floating) and np.all(np.mod(index, 1) == 0):
                index = index.astype(np.int64)
            else:
                raise DataError(f"caption->image index must be integers, got dtype {index.dtype}")
        index = index.astype(np.int64)
        out = np.where((index < 0) | (index >= len(images)))[0]
        if len(out):
            raise DataError(f"caption->image index out of range [0, {len(images)}) in {describe_rows(out)}")
        relevance = _check_relevance(self.relevance, index, len(images))
        if not self.allow_images_without_captions:
            orphans = np.setdiff1d(np.arange(len(images)), index if relevance is None else relevance.items)
            if len(orphans):
                raise DataError(
                    f"images without captions: {describe_rows(orphans)}; remove them or pass "
                    "allow_images_without_captions=True to keep them as distractors"
                )
        set_ = object.__setattr__
        set_(self, "captions", captions)
        set_(self, "images", images)
        set_(self, "caption_image", index)
        set_(self, "relevance", relevance)
        set_(self, "caption_ids", _check_labels("caption ids", self.caption_ids, len(captions)))
        set_(self, "caption_texts", _check_labels("caption texts", self.caption_texts, len(captions)))
        set_(self, "image_names", _check_labels("image names", self.image_names, len(images)))
        set_(self, "image_split", _check_labels("image split", self.image_split, len(images)))

    @property
    def relevant(self) -> Relevance:
        """Which images each caption is relevant to (its own image when the data says no more)."""
        return self.relevance if self.relevance is not None else Relevance.from_owner(self.caption_image, self.n_images)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def text_dim(self) -> int:
        return self.captions.shape[1]

    @property
    def image_dim(self) -> int:
        return self.images.shape[1]

    def split_names(self) -> list[str]:
        """Names of the file's own image splits (empty when it has none)."""
        return [] if self.image_split is None else sorted(set(self.image_split.tolist()))

    def subset_images(self, image_rows: np.ndarray) -> PairedEmbeddings:
        """Keep these images and every caption of theirs; indices are renumbered."""
        image_rows = np.asarray(image_rows, dtype=np.int64)
        if len(image_rows) == 0:
            raise DataError("cannot take an empty set of images")
        if len(np.unique(image_rows)) != len(image_rows):
            raise DataError("image subset has repeated rows")
        remap = np.full(self.n_images, -1, dtype=np.int64)
        remap[image_rows] = np.arange(len(image_rows))
        keep = remap[self.caption_image] >= 0
        if not keep.any():
            raise DataError("the selected images have no captions")

        def pick(values: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
            return None if values is None else values[rows]

        rows = np.where(keep)[0]
        relevance = None if self.relevance is None else self.relevance.subset(rows, image_rows)
        return replace(
            self,
            relevance=relevance,
            captions=self.captions[keep],
            images=self.images[image_rows],
            caption_image=remap[self.caption_image[keep]],
            caption_ids=pick(self.caption_ids, keep),
            caption_texts=pick(self.caption_texts, keep),
            image_names=pick(self.image_names, image_rows),
            image_split=pick(self.image_split, image_rows),
        )

    def split(self, name: str) -> PairedEmbeddings:
        """The images of the file's own split ``name`` with their captions."""
        if self.image_split is None:
            raise DataError(f"this data has no split column, so split {name!r} does not exist")
        rows = np.where(self.image_split == name)[0]
        if len(rows) == 0:
            raise DataError(f"split {name!r} not found; the data has {self.split_names()}")
        return self.subset_images(rows)

    def select(self, split: str | None = None) -> PairedEmbeddings:
        """The pairs of split ``split`` (all when None) in memory; the contract sharded data shares."""
        return self if split is None else self.split(split)

    @property
    def in_memory(self) -> bool:
        """Every row is in RAM (see :class:`stitch.data.pairs.Pairs`)."""
        return True

    def to_memory(self) -> PairedEmbeddings:
        """These pairs (already in RAM); the contract sharded data shares."""
        return self

    def shards(self) -> ShardList:
        """These pairs as one in-memory shard: what training reads (data on disk is several)."""
        relevant = None if self.relevance is None else self.relevance.padded()
        return ShardList([Shard(self.captions, self.images, self.caption_image, relevant=relevant)])

    def image_shards(self) -> tuple[list[Shard], dict[str, list[np.ndarray]], str]:
        """``(shards, per-shard image columns, source)`` of the images (a gallery): one shard in memory; the
        contract sharded data shares."""
        named = {"image_names": self.image_names, "image_split": self.image_split}
        columns = {k: [v] for k, v in named.items() if v is not None}
        return [Shard(self.captions, self.images, self.caption_image)], columns, ""

    def holdout(
        self, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
    ) -> tuple[ShardList, PairedEmbeddings, str]:
        """Train pairs (as shards), dev pairs and how they were split (see ``train_dev_split``); the same
        contract as :meth:`stitch.data.sharded.ShardedPairs.holdout`."""
        train, dev, how = holdout_rows(self, dev_fraction, seed, max_dev_images)
        return self.subset_images(train).shards(), self.subset_images(dev), how

    def holdout_rows(
        self, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Train and dev image rows of :meth:`holdout` (a run's split, taken again to evaluate it)."""
        return holdout_rows(self, dev_fraction, seed, max_dev_images)

    def take_images(self, image_rows: np.ndarray) -> PairedEmbeddings:
        """These image rows with their captions, in memory; the contract sharded data shares."""
        return self.subset_images(image_rows)

    def as_queries(self) -> Queries:
        return Queries(self.captions, ids=self.caption_ids, texts=self.caption_texts)
