"""Classic metric-learning losses: contrastive (siamese), triplet margin, embedding-norm regularisation."""

from __future__ import annotations

import torch

from stitch.losses.base import PairLoss
from stitch.losses.config import LossSettings
from stitch.losses.pairs import (
    all_pairs,
    all_triplets,
    distance_matrix,
    mean_nonzero,
    pairs_to_triplets,
    resolve_ref,
    triplets_to_pairs,
)


class ContrastiveLoss(PairLoss):
    """Siamese loss: pull positives within ``pos_margin``, push negatives past ``neg_margin``.

    Positive and negative pair terms are each averaged over their non-zero entries and summed.
    """

    @classmethod
    def from_config(cls, c: LossSettings) -> ContrastiveLoss:
        return cls(neg_margin=c.margin)

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, distance: str = "euclidean") -> None:
        super().__init__()
        self.pos_margin, self.neg_margin, self.distance = pos_margin, neg_margin, distance

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        ref, ref_labels, self_mask = resolve_ref(embeddings, labels, ref_emb, ref_labels)
        dist = distance_matrix(embeddings, ref, self.distance)
        a1, p, a2, n = triplets_to_pairs(indices_tuple) if indices_tuple else all_pairs(labels, ref_labels, self_mask)
        pos = (dist[a1, p] - self.pos_margin).clamp(min=0)
        neg = (self.neg_margin - dist[a2, n]).clamp(min=0)
        return mean_nonzero(pos, embeddings) + mean_nonzero(neg, embeddings)


class TripletMarginLoss(PairLoss):
    """``max(0, d(a, p) - d(a, n) + margin)`` over all or mined triplets, averaged over non-zero ones."""

    @classmethod
    def from_config(cls, c: LossSettings) -> TripletMarginLoss:
        return cls(margin=c.margin)

    def __init__(self, margin: float = 0.05, distance: str = "euclidean") -> None:
        super().__init__()
        self.margin, self.distance = margin, distance

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        ref, ref_labels, self_mask = resolve_ref(embeddings, labels, ref_emb, ref_labels)
        dist = distance_matrix(embeddings, ref, self.distance)
        if indices_tuple is None:
            a, p, n = all_triplets(labels, ref_labels, self_mask)
        else:
            a, p, n = pairs_to_triplets(indices_tuple, labels, ref_labels, self_mask)
        return mean_nonzero((dist[a, p] - dist[a, n] + self.margin).clamp(min=0), embeddings)


class EmbeddingNormRegularizer(PairLoss):
    """Mean of ``||e||_p ** power``: keeps embedding norms from drifting (pml's LpRegularizer)."""

    def __init__(self, p: float = 2.0, power: float = 1.0) -> None:
        super().__init__()
        self.p, self.power = p, power

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        return torch.linalg.vector_norm(embeddings, ord=self.p, dim=1).pow(self.power).mean()
