"""Regression losses between a translation and its own target row."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stitch.errors import UsageError
from stitch.losses.base import PairLoss, weighted_mean


def _aligned(embeddings: torch.Tensor, ref_emb: torch.Tensor | None) -> torch.Tensor:
    if ref_emb is None or ref_emb.shape != embeddings.shape:
        shape = None if ref_emb is None else tuple(ref_emb.shape)
        raise UsageError(
            f"regression losses need ref_emb row-aligned with embeddings {tuple(embeddings.shape)}, got {shape}"
        )
    return ref_emb


class MSELoss(PairLoss):
    """Mean squared error per coordinate (the competition baseline's loss)."""

    needs_aligned_targets = True
    supports_weights = True

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, weights=None):
        if weights is None:
            return F.mse_loss(embeddings, _aligned(embeddings, ref_emb))
        return weighted_mean((embeddings - _aligned(embeddings, ref_emb)).pow(2).mean(dim=1), weights)


class CosineLoss(PairLoss):
    """``1 - cos(prediction, target)``, averaged: cares about direction only, as retrieval does."""

    needs_aligned_targets = True
    supports_weights = True

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, weights=None):
        return weighted_mean(1 - F.cosine_similarity(embeddings, _aligned(embeddings, ref_emb), dim=1), weights)
