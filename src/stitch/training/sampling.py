"""The order a training pass visits one shard's captions in (``optim.sampler``).

``random`` is a permutation of the captions. ``grouped`` visits whole images — all captions of an image
one after another, images in random order — so a batch holds every caption of most of its images (only the
images cut by the batch boundaries are split), which gives the multi-positive loss all positives of an
image at once. ``hard`` is grouped with similar images next to each other: images are clustered once per
shard by k-means (cosine, about one batch of images per cluster) and a pass visits the clusters in random
order, so a batch's negatives are look-alikes (hard-image batches).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stitch.data.shards import Shard

KMEANS_ITERATIONS = 10
KMEANS_SAMPLE = 100_000  # images the centroids are fitted on; every image is then assigned (in chunks)


def _images_of_captions(shard: Shard) -> np.ndarray:
    return shard.own_images(np.arange(shard.n_captions))


def _captions_by_image_order(own: np.ndarray, image_rank: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Caption positions sorted by their image's rank (ties, captions of one image, in random order)."""
    tie = torch.rand(len(own), generator=generator).numpy()
    return np.lexsort((tie, image_rank[own]))


class RandomOrder:
    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __call__(self, k: int, shard: Shard, generator: torch.Generator, batch_size: int) -> np.ndarray:
        return torch.randperm(shard.n_captions, generator=generator).numpy()


class GroupedOrder(RandomOrder):
    def __call__(self, k: int, shard: Shard, generator: torch.Generator, batch_size: int) -> np.ndarray:
        own = _images_of_captions(shard)
        rank = np.zeros(len(shard.images), dtype=np.int64)
        images = np.unique(own)
        rank[images] = torch.randperm(len(images), generator=generator).numpy()
        return _captions_by_image_order(own, rank, generator)


class HardOrder(RandomOrder):
    """Clusters are fitted once per shard, from a generator of their own seeded by (seed, shard), so the pass
    generator's draws — and a resumed run's batches — do not depend on when a shard was first clustered."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        self.clusters: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, k: int, shard: Shard, generator: torch.Generator, batch_size: int) -> np.ndarray:
        own = _images_of_captions(shard)
        if k not in self.clusters:
            images = np.unique(own)
            per_batch = max(1, round(batch_size * len(images) / len(own)))
            clusters = -(-len(images) // per_batch)
            own_generator = torch.Generator().manual_seed(self.seed * 100_003 + k)
            self.clusters[k] = (images, kmeans_labels(shard.read_images(images), clusters, own_generator))
        images, label = self.clusters[k]
        cluster_rank = torch.randperm(int(label.max()) + 1, generator=generator).numpy()
        within = torch.rand(len(images), generator=generator).numpy()
        rank = np.zeros(len(shard.images), dtype=np.int64)
        rank[images[np.lexsort((within, cluster_rank[label]))]] = np.arange(len(images))
        return _captions_by_image_order(own, rank, generator)


def kmeans_labels(vectors: np.ndarray, clusters: int, generator: torch.Generator, chunk: int = 8192) -> np.ndarray:
    """Spherical k-means: centroids fitted on a seeded sample, then every vector's nearest centroid."""
    x = F.normalize(torch.as_tensor(vectors, dtype=torch.float32), dim=1)
    clusters = max(1, min(clusters, len(x)))
    sample = x[torch.randperm(len(x), generator=generator)[:KMEANS_SAMPLE]]
    centroids = sample[torch.randperm(len(sample), generator=generator)[:clusters]].clone()
    for _ in range(KMEANS_ITERATIONS):
        assign = (sample @ centroids.T).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, sample)
        filled = torch.bincount(assign, minlength=clusters) > 0
        centroids[filled] = F.normalize(sums[filled], dim=1)  # an empty cluster keeps its centroid
    return torch.cat([(x[i : i + chunk] @ centroids.T).argmax(1) for i in range(0, len(x), chunk)]).numpy()
