"""Image-level splits: captions of one image always land on the same side, so nothing leaks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from stitch.data.dataset import DataError, PairedEmbeddings


def random_image_split(n_images: int, fractions: dict[str, float], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded partition of image rows into named parts; ``train`` takes what the others leave."""
    if n_images < 2:
        raise DataError(f"need at least 2 images to split, got {n_images}")
    named = {k: float(v) for k, v in fractions.items() if k != "train"}
    if any(v <= 0 or v >= 1 for v in named.values()) or sum(named.values()) >= 1:
        raise DataError(f"split fractions must be in (0, 1) and leave room for train, got {fractions}")
    order = np.random.default_rng(seed).permutation(n_images)
    parts, start = {}, 0
    for name, frac in named.items():
        size = max(1, int(round(frac * n_images)))
        parts[name] = np.sort(order[start : start + size])
        start += size
    parts["train"] = np.sort(order[start:])
    if len(parts["train"]) == 0:
        raise DataError(f"no images left for train with fractions {fractions}")
    return parts


def train_dev_split(
    data: PairedEmbeddings, dev_fraction: float = 0.1, seed: int = 0
) -> tuple[PairedEmbeddings, PairedEmbeddings, str]:
    """The file's own ``train``/``dev`` split when it has one, else a seeded image split.

    Returns the two sets and a description of where the split came from.
    """
    names = data.split_names()
    if "train" in names and "dev" in names:
        return data.split("train"), data.split("dev"), "the file's split column"
    parts = random_image_split(data.n_images, {"dev": dev_fraction}, seed=seed)
    how = f"seeded image split (dev fraction {dev_fraction}, seed {seed})"
    return data.subset_images(parts["train"]), data.subset_images(parts["dev"]), how


def kfold_by_image(
    data: PairedEmbeddings, k: int = 5, seed: int = 0
) -> Iterator[tuple[PairedEmbeddings, PairedEmbeddings]]:
    """K folds over images: each image is in the held-out part of exactly one fold."""
    if k < 2 or k > data.n_images:
        raise DataError(f"k must be between 2 and the number of images ({data.n_images}), got {k}")
    order = np.random.default_rng(seed).permutation(data.n_images)
    for held in np.array_split(order, k):
        rest = np.setdiff1d(order, held)
        yield data.subset_images(np.sort(rest)), data.subset_images(np.sort(held))
