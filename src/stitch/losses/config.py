"""The settings a loss is built from: one typed, frozen object, handed whole to :func:`stitch.losses.build_loss`.

A loss class takes it at construction (``from_config``, as pytorch-metric-learning's losses take theirs) and
reads only its own fields; the wrappers ``build_loss`` adds (a miner, a memory queue, the norm penalty) read
theirs. Training builds it once from its ``loss`` section (:meth:`LossSettings.from_section`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class LossSettings:
    """A loss by its registry name (:data:`stitch.registries.LOSSES`) and every setting a loss or its wrappers
    read. The defaults are the library's for one loss; a training recipe's are its ``loss`` section's."""

    name: str
    # the loss itself (each class reads its own)
    temperature: float = 0.05  # infonce, siglip, set-infonce: initial (or fixed) temperature
    learnable_temperature: bool = True
    symmetric: bool = True  # infonce: add the image->text direction
    margin: float = 0.2  # contrastive (negative margin), triplet, set-triplet
    sinkhorn_temperature: float = 0.2  # set-triplet matching
    sinkhorn_iters: int = 10
    sinkhorn_stop_grad: bool = True
    # the wrappers build_loss adds
    miner: str | None = "none"  # a miner (stitch.registries.MINERS) feeding the loss pairs or triplets
    queue_size: int = 0  # > 0: a memory queue of past references as extra negatives (losses with negatives)
    hard_negatives: int = 0  # with a queue: only the top-k hardest memory negatives
    norm_weight: float = 0.0  # weight of the embedding-norm penalty

    @classmethod
    def from_section(cls, section: object) -> LossSettings:
        """The settings of a config section holding these fields by name (training's ``loss`` section, which
        holds more: the training-level terms it adds itself are not read)."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})
