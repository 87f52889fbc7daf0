"""Losses of metric learning as small classes with one calling convention (see ``base``)."""

from __future__ import annotations

from dataclasses import replace

from stitch.errors import UsageError
from stitch.losses.base import PairLoss
from stitch.losses.config import LossSettings
from stitch.losses.infonce import InfoNCELoss, multi_positive_nll
from stitch.losses.memory import MemoryQueue
from stitch.losses.metric import ContrastiveLoss, EmbeddingNormRegularizer, TripletMarginLoss
from stitch.losses.miners import BatchHardMiner, DistanceWeightedMiner, TripletMiner, build_miner
from stitch.losses.neighbourhood import NeighbourhoodLoss
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

    @property
    def supports_weights(self) -> bool:
        """Weights pass to the wrapped loss; a miner picks pairs or triplets, which carry no row weights."""
        return self.miner is None and self.loss.supports_weights

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, weights=None):
        if indices_tuple is None and self.miner is not None:
            indices_tuple = self.miner(embeddings.detach(), labels, ref_emb, ref_labels)
        weighted = {} if weights is None else {"weights": weights}
        value = self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels, **weighted)
        if self.norm_weight:
            value = value + self.norm_weight * self.norm(embeddings)
        return value

    def extra_state(self) -> dict[str, float]:
        return self.loss.extra_state()

    def set_temperature(self, temperature: float) -> None:
        self.loss.set_temperature(temperature)


def build_loss(config: LossSettings | str, dim: int | None = None, **settings) -> PairLoss:
    """The loss ``config`` describes, optionally mined, queued and norm-regularised.

    ``config``: a :class:`LossSettings`, or a loss's registry name, with any :class:`LossSettings` field as a
    keyword (``build_loss("triplet", miner="hardest")``; keywords given with a ``LossSettings`` replace its
    fields). ``dim``: the embedding dimension, which a memory queue needs.
    """
    if isinstance(config, str):
        config = LossSettings(config, **settings)
    elif settings:
        config = replace(config, **settings)
    loss: PairLoss = LOSSES.get(config.name, "loss.name").from_config(config)
    if config.queue_size:
        if LOSSES.tag(config.name, "kind") != "pair" or dim is None:
            raise UsageError(
                "a memory queue needs a loss with negatives (infonce, siglip, ...) and the embedding dimension"
            )
        loss = MemoryQueue(loss, dim, config.queue_size, config.hard_negatives or None)
    if config.miner not in (None, "none") or config.norm_weight:
        loss = MinedLoss(loss, build_miner(config.miner), config.norm_weight)
    return loss


__all__ = [
    "BatchHardMiner",
    "ContrastiveLoss",
    "CosineLoss",
    "DistanceWeightedMiner",
    "EmbeddingNormRegularizer",
    "InfoNCELoss",
    "LossSettings",
    "MSELoss",
    "MemoryQueue",
    "MinedLoss",
    "NeighbourhoodLoss",
    "PairLoss",
    "SigLIPLoss",
    "TripletMarginLoss",
    "TripletMiner",
    "build_loss",
    "build_miner",
    "multi_positive_nll",
]
