"""Miners pick informative pairs or triplets from a batch; they return pml-style index tuples."""

from __future__ import annotations

import torch

from stitch.errors import UsageError
from stitch.losses.pairs import all_triplets, distance_matrix, label_masks, resolve_ref


class TripletMiner:
    """Triplets violating the margin, ``d(a,n) - d(a,p) <= margin`` (``all``), and of those the ``hard``
    ones (also <= 0) or the ``semihard`` ones (also > 0), as pml's TripletMarginMiner."""

    def __init__(self, margin: float = 0.2, kind: str = "all", distance: str = "euclidean") -> None:
        if kind not in ("all", "hard", "semihard"):
            raise UsageError(f"unknown triplet kind {kind!r}; choose all, hard or semihard")
        self.margin, self.kind, self.distance = margin, kind, distance

    @torch.no_grad()
    def __call__(self, embeddings, labels, ref_emb=None, ref_labels=None):
        ref, ref_labels, self_mask = resolve_ref(embeddings, labels, ref_emb, ref_labels)
        a, p, n = all_triplets(labels, ref_labels, self_mask)
        dist = distance_matrix(embeddings, ref, self.distance)
        gap = dist[a, n] - dist[a, p]
        keep = gap <= self.margin
        if self.kind != "all":
            keep &= gap <= 0 if self.kind == "hard" else gap > 0
        return a[keep], p[keep], n[keep]


class BatchHardMiner:
    """For each anchor, its farthest positive and nearest negative (batch-hard triplets)."""

    def __init__(self, distance: str = "euclidean") -> None:
        self.distance = distance

    @torch.no_grad()
    def __call__(self, embeddings, labels, ref_emb=None, ref_labels=None):
        ref, ref_labels, self_mask = resolve_ref(embeddings, labels, ref_emb, ref_labels)
        pos, neg = label_masks(labels, ref_labels, self_mask)
        dist = distance_matrix(embeddings, ref, self.distance)
        valid = pos.any(1) & neg.any(1)
        hardest_pos = dist.masked_fill(~pos, float("-inf")).argmax(1)
        hardest_neg = dist.masked_fill(~neg, float("inf")).argmin(1)
        anchors = valid.nonzero(as_tuple=True)[0]
        return anchors, hardest_pos[anchors], hardest_neg[anchors]


class DistanceWeightedMiner:
    """Negatives sampled with probability inversely proportional to the density of distances on the
    unit sphere (Wu et al., 2017), so that all distances are represented; one negative per positive pair.
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, seed: int | None = None) -> None:
        self.cutoff, self.nonzero_loss_cutoff = cutoff, nonzero_loss_cutoff
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def log_weights(self, dist: torch.Tensor, dim: int) -> torch.Tensor:
        """log of 1/q(d), q(d) ∝ d^(n-2) (1 - d²/4)^((n-3)/2): the distance density of uniform points."""
        d = dist.clamp(min=self.cutoff)
        log_q = (dim - 2) * torch.log(d) + ((dim - 3) / 2) * torch.log((1 - 0.25 * d * d).clamp(min=1e-8))
        return -log_q

    @torch.no_grad()
    def __call__(self, embeddings, labels, ref_emb=None, ref_labels=None):
        ref, ref_labels, self_mask = resolve_ref(embeddings, labels, ref_emb, ref_labels)
        pos, neg = label_masks(labels, ref_labels, self_mask)
        dist = distance_matrix(embeddings, ref, "euclidean")
        log_w = self.log_weights(dist, embeddings.shape[1])
        allowed = neg & (dist < self.nonzero_loss_cutoff)
        log_w = log_w.masked_fill(~allowed, float("-inf"))
        log_w = log_w - log_w.max(dim=1, keepdim=True).values.nan_to_num(neginf=0.0)
        weights = log_w.exp()
        a, p = pos.nonzero(as_tuple=True)
        has_neg = allowed[a].any(1)
        a, p = a[has_neg], p[has_neg]
        if len(a) == 0:
            empty = torch.zeros(0, dtype=torch.long, device=embeddings.device)
            return empty, empty, empty
        n = torch.multinomial(weights[a].cpu(), 1, generator=self.generator).squeeze(1).to(a.device)
        return a, p, n


def no_miner(**params) -> None:
    """``miner: none``: the loss forms its own pairs."""
    return None


def AllTripletMiner(**params) -> TripletMiner:  # noqa: N802 - registry name of a TripletMiner kind
    return TripletMiner(kind="all", **params)


def SemiHardTripletMiner(**params) -> TripletMiner:  # noqa: N802 - registry name of a TripletMiner kind
    return TripletMiner(kind="semihard", **params)


def build_miner(name: str | None, **params):
    """A miner by its registry name (``none`` gives None)."""
    from stitch.registries import MINERS

    return MINERS.get(name or "none", "loss.miner")(**params)
