"""Image-level splits: captions of one image always land on the same side, so nothing leaks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from stitch.data.dataset import DataError, PairedEmbeddings


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


def component_split(data: PairedEmbeddings, dev_fraction: float = 0.1, seed: int = 0) -> tuple[dict, str]:
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


def straddling_captions(data: PairedEmbeddings, image_rows: np.ndarray) -> int:
    """Captions relevant both to an image in ``image_rows`` and to one outside it (a leak across a split)."""
    inside = np.zeros(data.n_images, dtype=bool)
    inside[image_rows] = True
    links = data.relevant
    hits = np.bincount(links.link_queries, weights=inside[links.items], minlength=links.n_queries)
    return int(((hits > 0) & (hits < links.counts)).sum())


def train_dev_split(
    data: PairedEmbeddings, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
) -> tuple[PairedEmbeddings, PairedEmbeddings, str]:
    """The file's own ``train``/``dev`` split when it has one, else a seeded image split.

    Returns the two sets and a description of where the split came from.
    """
    names = data.split_names()
    if "train" in names and "dev" in names:
        how = "the file's split column"
        if data.relevance is not None:
            leaks = straddling_captions(data, np.where(data.image_split == "dev")[0])
            how += f" ({leaks} captions relevant to images on both sides)" if leaks else ""
        return data.split("train"), data.split("dev"), how
    if data.relevance is not None:
        parts, how = component_split(data, dev_fraction, seed)
    else:
        parts = random_image_split(data.n_images, {"dev": dev_fraction}, seed=seed, max_size=max_dev_images)
        how = f"seeded image split (dev fraction {dev_fraction}, seed {seed})"
        if max_dev_images and len(parts["dev"]) == max_dev_images:
            how += f", dev capped at {max_dev_images} images"
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
