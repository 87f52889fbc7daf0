"""Losses for set-prediction heads: ``embeddings`` are slot sets (B, K, D), ``ref_emb`` images (M, D).

- ``SetTripletLoss``: triplet on the Sinkhorn-matched set similarity with the hardest in-batch negative.
- ``SetInfoNCELoss``: multi-positive InfoNCE on the winner-slot similarity.
- regularisers (each weighted in the config): intra-set diversity (slots of one caption should differ),
  global discrimination (slots should not collapse onto the global translation), MMD between the mean
  slots and the images of the batch, and a uniformity term spreading all slots on the sphere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stitch.losses.base import PairLoss
from stitch.losses.config import LossSettings
from stitch.losses.infonce import InfoNCELoss, multi_positive_nll
from stitch.losses.pairs import same_label
from stitch.losses.sinkhorn import sinkhorn


def batch_set_similarity(slots, images, temperature, iters, stop_gradient):
    """(B, M) matched similarity of each caption's slot set to each single image.

    Scores are formed once as (B, M, K, 1) slot-vs-image cosines, so memory is B x M x K, never x D.
    """
    scores = torch.einsum("bkd,md->bmk", slots, images).unsqueeze(-1)
    plan = sinkhorn(scores, temperature, iters, stop_gradient)
    return (plan * scores).sum(dim=(-1, -2)) / slots.shape[1]


class SetTripletLoss(PairLoss):
    @classmethod
    def from_config(cls, c: LossSettings) -> SetTripletLoss:
        return cls(c.margin, c.sinkhorn_temperature, c.sinkhorn_iters, c.sinkhorn_stop_grad)

    def __init__(self, margin: float = 0.2, temperature: float = 0.2, iters: int = 10, stop_gradient: bool = True):
        super().__init__()
        self.margin, self.temperature, self.iters, self.stop_gradient = margin, temperature, iters, stop_gradient

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        sims = batch_set_similarity(
            embeddings, F.normalize(ref_emb, dim=-1), self.temperature, self.iters, self.stop_gradient
        )
        positive = same_label(labels, ref_labels)
        pos = sims.masked_fill(~positive, float("inf")).min(dim=1).values
        neg = sims.masked_fill(positive, float("-inf")).max(dim=1).values
        valid = positive.any(1) & (~positive).any(1)
        return (self.margin + neg - pos).clamp(min=0)[valid].mean()


class SetInfoNCELoss(InfoNCELoss):
    supports_weights = False

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        scale = self.log_scale.exp().clamp(max=100)
        sims = torch.einsum("bkd,md->bkm", embeddings, F.normalize(ref_emb, dim=-1)).max(dim=1).values
        positive = same_label(labels, ref_labels)
        logits = scale * sims
        return (multi_positive_nll(logits, positive) + multi_positive_nll(logits.T, positive.T)) / 2


def intra_set_diversity(slots: torch.Tensor, margin: float = 0.7) -> torch.Tensor:
    """Mean hinge on pairwise cosine of distinct slots of the same caption above ``margin``."""
    sims = slots @ slots.transpose(-1, -2)
    k = slots.shape[1]
    off = ~torch.eye(k, dtype=torch.bool, device=slots.device)
    return (sims[:, off] - margin).clamp(min=0).mean()


def global_discrimination(slots: torch.Tensor, global_vec: torch.Tensor, margin: float = 0.7) -> torch.Tensor:
    """Hinge on slot-vs-global cosine above ``margin``: slots must not collapse onto the global translation."""
    return (torch.einsum("bkd,bd->bk", slots, global_vec) - margin).clamp(min=0).mean()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Biased RBF-kernel MMD² between two samples."""

    def kernel(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * sigma**2))

    return kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """log E exp(-t ||x_i - x_j||²) over distinct pairs (Wang & Isola): lower is more spread out."""
    d = torch.pdist(x).pow(2)
    return torch.log(torch.exp(-t * d).mean().clamp(min=1e-12))
