"""Losses of metric learning as small classes with one calling convention (see ``base``)."""

from __future__ import annotations

from types import SimpleNamespace

from stitch.errors import UsageError
from stitch.losses.base import PairLoss
from stitch.losses.infonce import InfoNCELoss, multi_positive_nll
from stitch.losses.memory import MemoryQueue
from stitch.losses.metric import ContrastiveLoss, EmbeddingNormRegularizer, TripletMarginLoss
from stitch.losses.miners import BatchHardMiner, DistanceWeightedMiner, TripletMiner, build_miner
from stitch.losses.regression import CosineLoss, MSELoss
from stitch.losses.siglip import SigLIPLoss
from stitch.registries import LOSSES


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

    def set_temperature(self, temperature: float) -> None:
        self.loss.set_temperature(temperature)


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
    sinkhorn_temperature: float = 0.2,
    sinkhorn_iters: int = 10,
    sinkhorn_stop_grad: bool = True,
    symmetric: bool = True,
) -> PairLoss:
    """A loss by its registry name, optionally mined, queued and norm-regularised."""
    settings = SimpleNamespace(**{k: v for k, v in locals().items() if k not in ("name", "dim")})
    loss: PairLoss = LOSSES.get(name, "loss.name").from_config(settings)
    if queue_size:
        if LOSSES.tag(name, "kind") != "pair" or dim is None:
            raise UsageError(
                "a memory queue needs a loss with negatives (infonce, siglip, ...) and the embedding dimension"
            )
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
