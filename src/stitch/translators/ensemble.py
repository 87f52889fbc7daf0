"""An ensemble of translators averaged into one: the mean of the members' unit translations, which
ranks a gallery exactly as the mean of the members' cosine scores."""

from __future__ import annotations

import math

import torch
from torch import nn

from stitch.translators.base import Translator


def check_weights(weights: list[float] | None, count: int) -> list[float]:
    """Equal weights by default; otherwise ``count`` finite, non-negative weights with a positive sum."""
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} ensemble weights for {count} runs")
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"ensemble weights must be finite, non-negative and not all zero, got {weights}")
    return [float(w) for w in weights]


class Ensemble(Translator):
    def __init__(self, members: list[Translator], weights: list[float] | None = None) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        first = members[0]
        super().__init__(first.text_dim, first.image_dim)
        for other in members:
            if not other.has_image_space:
                raise ValueError("dual-head runs learn their own gallery space and cannot be averaged")
            if (other.text_dim, other.image_dim) != (first.text_dim, first.image_dim):
                raise ValueError("ensemble members must share text and image dimensions")
            same = torch.allclose(other.space.mean, first.space.mean) and torch.allclose(
                other.space.std, first.space.std
            )
            if not same:
                raise ValueError("ensemble members must score in the same space (trained on the same data split)")
        self.members = nn.ModuleList(members)
        weights = check_weights(weights, len(members))
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32) / sum(weights))
        self.space = first.space

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        parts = [m.single_vector(m.normalize_queries(m.embed_queries(captions))) for m in self.members]
        return sum(w * p for w, p in zip(self.weights, parts))

    def embed_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return self.members[0].embed_gallery(images)

    def to_image_space(self, captions: torch.Tensor) -> torch.Tensor:
        return sum(w * m.to_image_space(captions) for w, m in zip(self.weights, self.members))
