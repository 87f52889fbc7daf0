"""Image-level splits: captions of one image always land on the same side, so nothing leaks."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import numpy as np

from stitch.data.dataset import DataError, PairedEmbeddings
from stitch.data.holdout import (  # noqa: F401  (re-exported: the split functions' public home)
    DEV_NAMES,
    FILE_SPLIT,
    component_split,
    holdout_rows,
    image_holdout,
    random_image_split,
    straddling_captions,
)


def train_dev_split(
    data: PairedEmbeddings, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
) -> tuple[PairedEmbeddings, PairedEmbeddings, str]:
    """The file's own train/dev split when it has one, else a seeded image split (see :func:`image_holdout`),
    by connected component when captions are relevant to several images.

    Returns the two sets and a description of where the split came from.
    """
    train, dev, how = holdout_rows(data, dev_fraction, seed, max_dev_images)
    return data.subset_images(train), data.subset_images(dev), how


# -- a run's own seeded split, recorded so that evaluate can take it again --------------------------------
SEEDED_SPLIT = "seeded_split"  # the key of a run's config.json that records it
RUN_SPLITS = ("train", "dev")


def is_seeded(how: str) -> bool:
    """Whether a split description is of a seeded split (not the file's own split column)."""
    return not how.startswith(FILE_SPLIT)


def images_digest(images: np.ndarray) -> str:
    """A digest of image embeddings at half precision, so the same data stored as float16 shards or
    float32 arrays digests alike: it tells whether evaluated data is the data a split was drawn from."""
    half = np.ascontiguousarray(np.asarray(images, dtype=np.float32).astype(np.float16))
    return hashlib.sha256(str(half.shape).encode() + half.tobytes()).hexdigest()[:32]


def split_record(n_images: int, dev: PairedEmbeddings, dev_fraction: float, seed: int, max_dev_images: int) -> dict:
    """What a run records of its seeded split: how to draw it again and what it drew (sizes, digest)."""
    return {
        "dev_fraction": float(dev_fraction),
        "seed": int(seed),
        "max_dev_images": int(max_dev_images),
        "n_images": int(n_images),
        "dev_images": int(dev.n_images),
        "dev_digest": images_digest(dev.images),
    }


_RECORD_TYPES = {
    "dev_fraction": float,
    "seed": int,
    "max_dev_images": int,
    "n_images": int,
    "dev_images": int,
    "dev_digest": str,
}


def check_split_record(record: object, where: str) -> dict:
    """A recorded split as written by :func:`split_record`, or a one-line DataError naming the key: the
    record comes from a run folder, which is untrusted input."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: {SEEDED_SPLIT} must be an object, got {type(record).__name__}")
    keys = set(record)
    if keys != set(_RECORD_TYPES):
        odd = sorted(keys - set(_RECORD_TYPES)) or sorted(set(_RECORD_TYPES) - keys)
        raise DataError(f"{where}: {SEEDED_SPLIT} has unknown or missing keys {odd}")
    for key, kind in _RECORD_TYPES.items():
        value = record[key]
        ok = isinstance(value, kind) and not isinstance(value, bool)
        ok = ok or (kind is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise DataError(f"{where}: {SEEDED_SPLIT}.{key} must be {kind.__name__}, got {value!r}")
    fraction = record["dev_fraction"]
    counts = ("seed", "max_dev_images", "n_images", "dev_images")
    if not (math.isfinite(fraction) and 0 < fraction < 1) or min(record[k] for k in counts) < 0:
        raise DataError(f"{where}: {SEEDED_SPLIT} holds a value out of range: {record}")
    return record


def image_folds(data: PairedEmbeddings, k: int = 5, seed: int = 0) -> np.ndarray:
    """Each image's fold in ``0..k-1``: whole connected components of the caption-image graph (single images
    when each caption has one image) dealt in seeded order to the fold with the fewest images, so no
    caption is relevant to images of two folds and the folds differ in size by at most one component."""
    if k < 2 or k > data.n_images:
        raise DataError(f"k must be between 2 and the number of images ({data.n_images}), got {k}")
    _, image_component = data.relevant.components()
    names, component, sizes = np.unique(image_component, return_inverse=True, return_counts=True)
    if len(names) < k:
        raise DataError(f"{k} folds need at least {k} connected components of captions and images, got {len(names)}")
    fold_of_component = np.empty(len(names), dtype=np.int64)
    filled = np.zeros(k, dtype=np.int64)
    for c in np.random.default_rng(seed).permutation(len(names)):
        fold = int(np.argmin(filled))
        fold_of_component[c], filled[fold] = fold, filled[fold] + sizes[c]
    return fold_of_component[component]


def kfold_by_image(
    data: PairedEmbeddings, k: int = 5, seed: int = 0
) -> Iterator[tuple[PairedEmbeddings, PairedEmbeddings]]:
    """K (train, held-out) pairs of subsets: each image is held out in exactly one fold (see :func:`image_folds`)."""
    folds = image_folds(data, k, seed)
    for fold in range(k):
        yield data.subset_images(np.flatnonzero(folds != fold)), data.subset_images(np.flatnonzero(folds == fold))


def run_split(data, split: str, record: dict, where: str) -> tuple[PairedEmbeddings, str] | None:
    """The images of a run's own ``split`` (train or dev) drawn again from ``data`` as the run drew them,
    and a description; None when ``data`` is not what the run split (another size or other dev images)."""
    record = check_split_record(record, where)
    if split not in RUN_SPLITS or data.n_images != record["n_images"]:
        return None
    train, dev, how = data.holdout_rows(record["dev_fraction"], record["seed"], record["max_dev_images"])
    dev_set = data.take_images(dev)
    if dev_set.n_images != record["dev_images"] or images_digest(dev_set.images) != record["dev_digest"]:
        return None
    chosen = dev_set if split == "dev" else data.take_images(train)
    return chosen, f"the run's own {split} split ({chosen.n_images} images; {how})"


def select_split(data, split: str | None, record: dict | None, where: str) -> tuple[PairedEmbeddings, str]:
    """The evaluated images of ``data`` and which they are: every image (``split`` None), the run's own
    seeded train/dev split when ``record`` (its ``seeded_split``) was drawn from this data, else the
    data's own split column. ``where`` names the record's file in messages."""
    if split is None:
        return data.select(None), "every image"
    if record is not None and split in RUN_SPLITS:
        taken = run_split(data, split, record, where)
        if taken is not None:
            return taken
        if split not in data.split_names():
            raise DataError(
                f"split {split!r}: the data has no such split column value, and it is not the data whose "
                f"seeded split {where} records ({record['n_images']} images, {record['dev_images']} of them dev); "
                "evaluate the run on the data it was trained on, or on data with a split column"
            )
    return data.select(split), f"the data's own split {split!r}"
