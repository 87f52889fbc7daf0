"""The common shape of a stitch loss, after pytorch-metric-learning's calling convention."""

from __future__ import annotations

import torch
from torch import nn

from stitch.errors import UsageError
from stitch.losses.config import LossSettings


class PairLoss(nn.Module):
    """``loss(embeddings, labels, indices_tuple, ref_emb, ref_labels) -> scalar``.

    ``embeddings`` are translated queries; ``ref_emb`` the embeddings they are compared with. Row
    ``i`` of ``embeddings`` matches every row ``j`` of ``ref_emb`` with ``labels[i] == ref_labels[j]``;
    regression losses, which need aligned targets, require ``ref_emb`` row-aligned with ``embeddings``.

    ``weights`` (one per row of ``embeddings``, a loss with ``supports_weights`` only) count row ``i`` as
    ``weights[i]`` rows: the loss is the weighted mean of its rows' terms, and equals the unweighted loss when
    every weight is 1. A reference row takes the largest weight among the rows it is a positive of.
    """

    needs_aligned_targets = False
    supports_weights = False

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: tuple | None = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def from_config(cls, c: LossSettings) -> PairLoss:
        """The loss from its settings ``c``, reading only its own fields (temperature, margin, ...);
        parameterless by default."""
        return cls()

    def extra_state(self) -> dict[str, float]:
        """Scalars worth logging per epoch (e.g. a learnt temperature)."""
        return {}

    def set_temperature(self, temperature: float) -> None:
        """Set the temperature (a schedule's step); losses without one refuse."""
        raise UsageError(f"{type(self).__name__} has no temperature to schedule")


def weighted_mean(terms: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """``sum(w * terms) / sum(w)``: the mean of per-row terms with row ``i`` counted ``w[i]`` times (the plain
    mean without weights)."""
    if weights is None:
        return terms.mean()
    weights = weights.to(terms.dtype)
    return (weights * terms).sum() / weights.sum().clamp_min(1e-12)


def reference_weights(positive: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Each reference's weight: the largest weight of the rows it is a positive of (0 for none)."""
    return (positive.to(weights.dtype) * weights[:, None]).amax(dim=0)
