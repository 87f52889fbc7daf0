"""Losses of metric learning as small classes with one calling convention (see ``base``)."""

from __future__ import annotations

from stitch.losses.base import PairLoss
from stitch.losses.infonce import InfoNCELoss, multi_positive_nll
from stitch.losses.memory import MemoryQueue
from stitch.losses.metric import ContrastiveLoss, EmbeddingNormRegularizer, TripletMarginLoss
from stitch.losses.miners import BatchHardMiner, DistanceWeightedMiner, TripletMiner, build_miner
from stitch.losses.regression import CosineLoss, MSELoss
from stitch.losses.siglip import SigLIPLoss

LOSS_NAMES = ("mse", "cosine", "infonce", "siglip", "contrastive", "triplet")


class MinedLoss(PairLoss):
    """A pair/triplet loss fed by a miner, plus an optional weighted embedding-norm penalty."""

    def __init__(self, loss: PairLoss, miner=None, norm_weight: float = 0.0) -> None:
        super().__init__()
        self.loss, self.miner, self.norm_weight = loss, miner, norm_weight
        self.norm = EmbeddingNormRegularizer()
        self.needs_aligned_targets = loss.needs_aligned_targets

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None):
        if indices_tuple is None and self.miner is not None:
            indices_tuple = self.miner(embeddings.detach(), labels, ref_emb, ref_labels)
        value = self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if self.norm_weight:
            value = value + self.norm_weight * self.norm(embeddings)
        return value

    def extra_state(self) -> dict[str, float]:
        return self.loss.extra_state()


def build_loss(
    name: str,
    temperature: float = 0.05,
    learnable_temperature: bool = True,
    margin: float = 0.2,
    miner: str | None = None,
    queue_size: int = 0,
    hard_negatives: int = 0,
    norm_weight: float = 0.0,
    dim: int | None = None,
) -> PairLoss:
    """A loss by its config name, optionally mined, queued and norm-regularised."""
    if name == "mse":
        loss: PairLoss = MSELoss()
    elif name == "cosine":
        loss = CosineLoss()
    elif name == "infonce":
        loss = InfoNCELoss(temperature=temperature, learnable=learnable_temperature)
    elif name == "siglip":
        loss = SigLIPLoss(temperature=temperature, learnable=learnable_temperature)
    elif name == "contrastive":
        loss = ContrastiveLoss(neg_margin=margin)
    elif name == "triplet":
        loss = TripletMarginLoss(margin=margin)
    else:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
    if queue_size:
        if loss.needs_aligned_targets or dim is None:
            raise ValueError("a memory queue needs a contrastive loss and the embedding dimension")
        loss = MemoryQueue(loss, dim, queue_size, hard_negatives or None)
    if miner not in (None, "none") or norm_weight:
        loss = MinedLoss(loss, build_miner(miner), norm_weight)
    return loss


__all__ = [
    "BatchHardMiner",
    "ContrastiveLoss",
    "CosineLoss",
    "DistanceWeightedMiner",
    "EmbeddingNormRegularizer",
    "InfoNCELoss",
    "LOSS_NAMES",
    "MSELoss",
    "MemoryQueue",
    "MinedLoss",
    "PairLoss",
    "SigLIPLoss",
    "TripletMarginLoss",
    "TripletMiner",
    "build_loss",
    "build_miner",
    "multi_positive_nll",
]
