"""Runs combined into one predictor: :class:`Ensemble` averages the members' unit translations (one space,
submittable; ranks as the mean of cosine scores), :class:`Fusion` averages their scores across spaces."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stitch.errors import UsageError
from stitch.translators.base import Translator, check_target


def check_weights(weights: list[float] | None, count: int) -> list[float]:
    """Equal weights by default; otherwise ``count`` finite, non-negative weights with a positive sum."""
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise UsageError(f"{len(weights)} ensemble weights for {count} runs")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise UsageError(f"ensemble weights must be finite, non-negative and not all zero, got {weights}")
    return [float(w) for w in weights]


class Ensemble(Translator):
    def __init__(self, members: list[Translator], weights: list[float] | None = None) -> None:
        if not members:
            raise UsageError("an ensemble needs at least one member")
        first = members[0]
        super().__init__(first.text_dim, first.image_dim)
        for other in members:
            if not other.has_image_space:
                raise UsageError("dual-head runs learn their own gallery space and cannot be averaged")
            if (other.text_dim, other.image_dim) != (first.text_dim, first.image_dim):
                raise UsageError("ensemble members must share text and image dimensions")
            same = torch.allclose(other.space.mean, first.space.mean) and torch.allclose(
                other.space.std, first.space.std
            )
            if not same:
                raise UsageError("ensemble members must score in the same space (trained on the same data split)")
            if type(other).embed_gallery is not type(first).embed_gallery:
                raise UsageError(
                    f"ensemble members must score against the same gallery: {type(first).__name__} and "
                    f"{type(other).__name__} embed images differently; fuse them by score (--combine score)"
                )
        self.members = nn.ModuleList(members)
        weights = check_weights(weights, len(members))
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights))
        self.space = first.space

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        parts = [m.single_vector(m.normalize_queries(m.embed_queries(captions))) for m in self.members]
        return sum(w * p for w, p in zip(self.weights, parts))

    def embed_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return self.members[0].embed_gallery(images)

    def to_image_space(self, captions: torch.Tensor, target: str = "direction") -> torch.Tensor:
        """The weighted mean of the members' points, or the raw direction of the ensemble's own query (the
        weighted mean of the members' unit queries, which scores the weighted mean of their cosines): exact
        when the members' directions are."""
        if check_target(target) == "point":
            return sum(w * m.to_image_space(captions, target) for w, m in zip(self.weights, self.members))
        return self.raw_direction(self.embed_queries(captions))

    def raw_direction(self, queries: torch.Tensor) -> torch.Tensor:
        return self.members[0].raw_direction(queries)

    @property
    def exact_submission(self) -> bool:
        return all(m.exact_submission for m in self.members)


class Fusion(Translator):
    """Score-level fusion of runs that score in different spaces (recipes of other families, other splits):
    a query's score for an item is the weighted mean of the members' cosine scores.

    Each side is the concatenation of the members' unit vectors scaled by the square roots of the weights,
    so one dot product is that weighted mean and indexes, rescorers and the service need nothing new.
    There is no single image-space prediction, so a fusion cannot be submitted (use :class:`Ensemble`)."""

    has_image_space = False

    def __init__(self, members: list[Translator], weights: list[float] | None = None) -> None:
        if not members:
            raise UsageError("a fusion needs at least one member")
        first = members[0]
        super().__init__(first.query_dim, first.gallery_dim)
        for other in members:
            if (other.query_dim, other.gallery_dim) != (first.query_dim, first.gallery_dim):
                raise UsageError("fused runs must take the same caption and image features")
        self.members = nn.ModuleList(members)
        weights = check_weights(weights, len(members))
        self.register_buffer("scales", torch.tensor(weights, dtype=torch.float32).div(sum(weights)).sqrt())

    @property
    def space_dim(self) -> int:
        return sum(m.space_dim for m in self.members)

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        parts = [m.single_vector(m.normalize_queries(m.embed_queries(captions))) for m in self.members]
        return torch.cat([s * p for s, p in zip(self.scales, parts)], dim=-1)

    def embed_gallery(self, images: torch.Tensor) -> torch.Tensor:
        parts = [F.normalize(m.embed_gallery(images).float(), dim=-1) for m in self.members]
        return torch.cat([s * p for s, p in zip(self.scales, parts)], dim=-1)
