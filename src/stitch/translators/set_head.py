"""Set-prediction head: one caption -> K candidate image embeddings (slots).

A caption can fit several pictures; K gated slots let the translator spread its bets. Each slot is a
learnt query plus a gated copy of the global translation plus a caption-specific offset, then
LayerNorm; slot dropout zeroes whole slots while training. Retrieval scores a gallery item by the
best slot (``winner``) or by the mean slot direction (``mean``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stitch.errors import UsageError
from stitch.translators.base import Translator, check_target
from stitch.translators.closed_form import closed_form_solution
from stitch.translators.moments import PairMoments


class SetPredictionHead(Translator):
    """Its queries are slot sets (n, K, D) with ``winner`` aggregation, single vectors with ``mean``."""

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        slots: int = 6,
        hidden: int = 1024,
        slot_dropout: float = 0.1,
        aggregation: str = "winner",
    ) -> None:
        super().__init__(text_dim, image_dim)
        if aggregation not in ("winner", "mean"):
            raise UsageError(f"model.aggregation must be winner or mean, got {aggregation!r}")
        self.slots, self.aggregation = slots, aggregation
        self.vectors_per_query = slots if aggregation == "winner" else 1
        self.global_map = nn.Linear(text_dim, image_dim)
        self.slot_queries = nn.Parameter(torch.randn(slots, image_dim) * 0.02)
        self.gates = nn.Linear(text_dim, slots)
        self.offsets = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, slots * image_dim))
        nn.init.zeros_(self.offsets[-1].weight)
        nn.init.zeros_(self.offsets[-1].bias)
        self.norm = nn.LayerNorm(image_dim)
        self.slot_dropout = slot_dropout

    @classmethod
    def from_config(cls, c, text_dim: int, image_dim: int) -> SetPredictionHead:
        return cls(text_dim, image_dim, c.slots, c.hidden, c.slot_dropout, c.aggregation)

    def initialise(self, moments: PairMoments, model_cfg) -> None:
        """Start the global translation from the configured closed-form fit."""
        weight, bias = closed_form_solution(moments, model_cfg)
        with torch.no_grad():
            self.global_map.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).T)
            self.global_map.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))

    def slot_embeddings(self, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-norm slots (B, K, D) and the unit-norm global translation (B, D)."""
        base = self.global_map(captions)
        gate = torch.sigmoid(self.gates(captions)).unsqueeze(-1)
        offsets = self.offsets(captions).view(len(captions), self.slots, self.image_dim)
        slots = self.norm(self.slot_queries + gate * base.unsqueeze(1) + offsets)
        slots = F.normalize(F.normalize(slots, dim=-1) + F.normalize(base, dim=-1).unsqueeze(1), dim=-1)
        if self.training and self.slot_dropout > 0:
            keep = torch.rand(len(captions), self.slots, 1, device=captions.device) >= self.slot_dropout
            keep[:, :1] |= ~keep.any(dim=1, keepdim=True)  # never drop every slot of a caption
            slots = slots * keep
        return slots, F.normalize(base, dim=-1)

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        slots, _ = self.slot_embeddings(captions)
        if self.aggregation == "mean":
            return F.normalize(slots.mean(dim=1), dim=-1)
        return slots  # (B, K, D): scored by the best slot

    def training_queries(self, captions: torch.Tensor) -> torch.Tensor:
        """Slot sets (B, K, D) whatever the aggregation: the set losses need every slot."""
        return self.slot_embeddings(captions)[0]

    def to_image_space(self, captions: torch.Tensor, target: str = "direction") -> torch.Tensor:
        """One vector per caption: the mean slot direction. A grader ranks a single vector, so a ``winner``
        set (scored by its best slot) is approximated; ``mean`` aggregation in the raw space is exact."""
        slots, _ = self.slot_embeddings(captions)
        mean = F.normalize(slots.mean(dim=1), dim=-1)
        if check_target(target) == "point":
            return self.space.inverse(mean * self.image_dim**0.5)
        return self.raw_direction(mean)

    def raw_direction(self, queries: torch.Tensor) -> torch.Tensor:
        return self.space.direction(queries)

    @property
    def exact_submission(self) -> bool:
        return self.aggregation == "mean" and self.space.is_identity
