"""A neighbourhood-preserving regulariser for captions that have no image (STRUCTURE-style).

Unpaired captions carry no target, but they carry structure: which captions are near which. Mapping a
batch of them should keep that arrangement (Gröger et al. 2025, "With limited data for multimodal
alignment, let the STRUCTURE guide you"). For a batch of rows ``x`` and their translations ``m``, each row's
neighbourhood is a softmax over its cosine similarities to the other rows of the batch, at ``temperature``
(a row is not its own neighbour); the regulariser is the mean over rows of ``KL(before || after)``, the
before side held fixed, times ``weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def neighbourhood_logits(rows: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cosine similarities among ``rows`` over ``temperature``, the diagonal left out (-inf)."""
    unit = F.normalize(rows.float(), dim=1)
    sims = unit @ unit.T / temperature
    eye = torch.eye(len(rows), dtype=torch.bool, device=rows.device)
    return sims.masked_fill(eye, float("-inf"))


class NeighbourhoodLoss(nn.Module):
    """``weight * mean_i KL(p_i || q_i)``: ``p_i`` the softmax of row ``i``'s similarities to the other rows
    before mapping, ``q_i`` after. Zero when the mapping keeps every batch's similarity ranks and gaps."""

    def __init__(self, weight: float = 1.0, temperature: float = 0.1) -> None:
        super().__init__()
        self.weight, self.temperature = weight, temperature

    @classmethod
    def from_config(cls, semi) -> NeighbourhoodLoss:
        """The term of training's ``semi`` section (``neighbour_weight``, ``neighbour_temperature``)."""
        return cls(semi.neighbour_weight, semi.neighbour_temperature)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        if len(before) != len(after) or len(before) < 2:
            raise ValueError(f"need two or more row-aligned rows, got {len(before)} and {len(after)}")  # a bug
        with torch.no_grad():
            target = neighbourhood_logits(before, self.temperature).log_softmax(dim=1)
        mapped = neighbourhood_logits(after, self.temperature).log_softmax(dim=1)
        off = ~torch.eye(len(before), dtype=torch.bool, device=before.device)
        terms = torch.where(off, target.exp() * (target - mapped), torch.zeros_like(mapped))
        return self.weight * terms.sum(dim=1).mean()
