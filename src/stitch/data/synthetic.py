"""A seeded synthetic paired dataset with known structure, for the zero-setup demo and tests.

Each image has a latent concept vector; its image embedding is a fixed random non-linear map of the
concept into image space, and each caption is a different noisy non-linear view of the same concept
in text space. A translator can therefore learn text->image, but not perfectly: the noise sets a
ceiling, and a linear map is beaten by a non-linear one. Everything here is labelled synthetic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from stitch.data.dataset import PairedEmbeddings
from stitch.data.relevance import Relevance
from stitch.errors import UsageError

SYNTHETIC_ENCODER = "synthetic"  # recorded as the encoder name: no model makes these vectors, so text cannot be encoded


@dataclass(frozen=True)
class SyntheticSpec:
    """What :func:`make_synthetic` builds: the shape (images, captions each, text/image/latent dimensions),
    how noisy a caption's view of its concept is, the dev share, the seed and the share of images that
    depict another image's concept."""

    n_images: int = 3000
    captions_per_image: int = 5
    text_dim: int = 96
    image_dim: int = 192
    latent_dim: int = 32
    caption_noise: float = 1.0
    dev_fraction: float = 0.2
    seed: int = 0
    shared_fraction: float = 0.0


def make_synthetic(spec: SyntheticSpec | None = None, /, **settings: Any) -> PairedEmbeddings:
    """Build a synthetic dataset with a ``train``/``dev`` split column (by image).

    ``settings`` are :class:`SyntheticSpec`'s fields by name (``make_synthetic(n_images=600, seed=1)``),
    applied over ``spec`` (the defaults when None).

    ``shared_fraction`` > 0 gives many-to-many relevance with known structure: that share of the images
    depict the concept of another image (with their own noise), and every caption of a concept is relevant
    to all its images. The split column is then by concept, so no caption straddles train and dev."""
    spec = replace(spec or SyntheticSpec(), **settings)
    n_images, captions_per_image, latent_dim = spec.n_images, spec.captions_per_image, spec.latent_dim
    text_dim, image_dim, seed, shared_fraction = spec.text_dim, spec.image_dim, spec.seed, spec.shared_fraction
    rng = np.random.default_rng(seed)
    concepts = rng.standard_normal((n_images, latent_dim))
    source = _shared_concepts(n_images, shared_fraction, seed)
    concepts = concepts[source]
    to_image = rng.standard_normal((latent_dim, image_dim)) / np.sqrt(latent_dim)
    images = np.maximum(np.tanh(concepts @ to_image) + 0.1 * rng.standard_normal((n_images, image_dim)), 0)
    to_text = rng.standard_normal((latent_dim, text_dim)) / np.sqrt(latent_dim)
    owner = np.repeat(np.arange(n_images), captions_per_image)
    views = concepts[owner] + spec.caption_noise * rng.standard_normal((len(owner), latent_dim))
    text = np.sin(views @ to_text) + 0.05 * rng.standard_normal((len(owner), text_dim))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    split = np.where(rng.random(n_images) < spec.dev_fraction, "dev", "train")[source]
    return PairedEmbeddings(
        captions=text.astype(np.float32),
        images=images.astype(np.float32),
        caption_image=owner,
        caption_ids=np.array([f"synthetic{i}#{j}" for i in range(n_images) for j in range(captions_per_image)]),
        image_names=np.array([f"synthetic{i}.jpg" for i in range(n_images)]),
        image_split=split,
        encoders={"text": SYNTHETIC_ENCODER, "image": SYNTHETIC_ENCODER},
        relevance=_concept_relevance(source, owner) if shared_fraction > 0 else None,
    )


def _shared_concepts(n_images: int, shared_fraction: float, seed: int) -> np.ndarray:
    """The image whose concept each image depicts (itself, or for ``shared_fraction`` of them another)."""
    if not 0 <= shared_fraction < 1:
        raise UsageError(f"shared_fraction must be in [0, 1), got {shared_fraction}")
    source = np.arange(n_images)
    if shared_fraction > 0:
        rng = np.random.default_rng([seed, 1])  # a stream of its own: shared_fraction=0 data stay as they were
        copies = rng.choice(n_images, size=int(round(shared_fraction * n_images)), replace=False)
        originals = np.setdiff1d(source, copies)
        source[copies] = rng.choice(originals, size=len(copies))
    return source


def _concept_relevance(source: np.ndarray, owner: np.ndarray) -> Relevance:
    """Every caption is relevant to all images of its image's concept."""
    by_concept = [np.where(source == c)[0] for c in range(len(source))]
    return Relevance.from_lists([by_concept[source[image]] for image in owner], len(source))
