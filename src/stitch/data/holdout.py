"""The held-out rows of a split by image (by connected component when relevance is many-to-many): what
in-memory and on-disk pairs both call, so a split is taken one way whatever holds the pairs."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from stitch.data.errors import DataError
from stitch.data.relevance import Relevance


class SplitSource(Protocol):
    """What a split reads of the pairs: their images' split column and caption-image relation."""

    n_images: int
    image_split: np.ndarray | None
    relevance: Relevance | None

    @property
    def relevant(self) -> Relevance: ...

    def split_names(self) -> list[str]: ...


def random_image_split(
    n_images: int, fractions: dict[str, float], seed: int = 0, max_size: int = 0
) -> dict[str, np.ndarray]:
    """Seeded partition of image rows into named parts; ``train`` takes what the others leave. ``max_size``
    (0: none) caps each named part, so a held-out set of millions of pairs stays a size one can evaluate."""
    if n_images < 2:
        raise DataError(f"need at least 2 images to split, got {n_images}")
    named = {k: float(v) for k, v in fractions.items() if k != "train"}
    if any(v <= 0 or v >= 1 for v in named.values()) or sum(named.values()) >= 1:
        raise DataError(f"split fractions must be in (0, 1) and leave room for train, got {fractions}")
    order = np.random.default_rng(seed).permutation(n_images)
    parts, start = {}, 0
    for name, frac in named.items():
        size = max(1, int(round(frac * n_images)))
        size = min(size, max_size) if max_size else size
        parts[name] = np.sort(order[start : start + size])
        start += size
    parts["train"] = np.sort(order[start:])
    if len(parts["train"]) == 0:
        raise DataError(f"no images left for train with fractions {fractions}")
    return parts


LARGEST_COMPONENT = 0.5  # above this share of the images, splitting by component cannot balance: split by image


def component_split(data: SplitSource, dev_fraction: float = 0.1, seed: int = 0) -> tuple[dict, str]:
    """Image rows of ``train`` and ``dev`` with every connected component of the caption-image graph on one
    side, so no caption and no image straddles the two; falls back to (and says) a split by image when one
    component is too large. Returns the parts and a description with the achieved dev fraction."""
    _, image_component = data.relevant.components()
    names, sizes = np.unique(image_component, return_counts=True)
    if sizes.max() > LARGEST_COMPONENT * data.n_images:
        parts = random_image_split(data.n_images, {"dev": dev_fraction}, seed=seed)
        share = sizes.max() / data.n_images
        return parts, f"seeded split by image: one component holds {share:.0%} of the images (seed {seed})"
    order = np.random.default_rng(seed).permutation(len(names))
    taken = np.cumsum(sizes[order])
    n_dev = int(np.searchsorted(taken, dev_fraction * data.n_images)) + 1
    dev_components = names[order[: min(n_dev, len(names) - 1)]]
    is_dev = np.isin(image_component, dev_components)
    parts = {"dev": np.where(is_dev)[0], "train": np.where(~is_dev)[0]}
    achieved = is_dev.mean()
    how = f"seeded split by connected component ({len(names)} components; dev {achieved:.3f} of images, seed {seed})"
    return parts, how


def straddling_captions(data: SplitSource, image_rows: np.ndarray) -> int:
    """Captions relevant both to an image in ``image_rows`` and to one outside it (a leak across a split)."""
    inside = np.zeros(data.n_images, dtype=bool)
    inside[image_rows] = True
    links = data.relevant
    hits = np.bincount(links.link_queries, weights=inside[links.items], minlength=links.n_queries)
    return int(((hits > 0) & (hits < links.counts)).sum())


DEV_NAMES = ("dev", "validation")  # the split-column names a held-out part goes by
FILE_SPLIT = "the file's split column"  # how a split taken from the data's own column is described


def image_holdout(
    image_split: np.ndarray | None, n_images: int, dev_fraction: float, seed: int, max_dev_images: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and dev image rows, and where they came from: the split column's ``train`` and ``dev`` (or
    ``validation``) images when it has them; else a seeded split of its ``train`` images (so its ``test``
    images are never trained on), or of every image when there is no column."""
    names = set() if image_split is None else set(np.unique(image_split).tolist())
    dev_name = next((name for name in DEV_NAMES if name in names), None)
    if "train" in names and dev_name:
        train, dev = np.flatnonzero(image_split == "train"), np.flatnonzero(image_split == dev_name)
        return train, dev, FILE_SPLIT
    pool, where = np.arange(n_images), ""
    if "train" in names:
        pool, where = np.flatnonzero(image_split == "train"), " of the file's train images"
    parts = random_image_split(len(pool), {"dev": dev_fraction}, seed=seed, max_size=max_dev_images)
    how = f"seeded image split{where} (dev fraction {dev_fraction}, seed {seed})"
    if max_dev_images and len(parts["dev"]) == max_dev_images:
        how += f", dev capped at {max_dev_images} images"
    return pool[parts["train"]], pool[parts["dev"]], how


def holdout_rows(
    data: SplitSource, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and dev image rows of :func:`train_dev_split`, and where they came from (rows, so a run's
    split can be taken again from the same data to evaluate it)."""
    if data.relevance is None:
        return image_holdout(data.image_split, data.n_images, dev_fraction, seed, max_dev_images)
    names = data.split_names()
    dev_name = next((name for name in DEV_NAMES if name in names), None)
    if "train" in names and dev_name:
        dev = np.flatnonzero(data.image_split == dev_name)
        leaks = straddling_captions(data, dev)
        how = FILE_SPLIT + (f" ({leaks} captions relevant to images on both sides)" if leaks else "")
        return np.flatnonzero(data.image_split == "train"), dev, how
    parts, how = component_split(data, dev_fraction, seed)
    return parts["train"], parts["dev"], how
