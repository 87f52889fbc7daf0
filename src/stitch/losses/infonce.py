"""Symmetric multi-positive InfoNCE with a learnable temperature.

Several captions describe one image, so a batch can hold more than one positive per row: all of
them go in the numerator (log of summed probabilities), and captions of the same image are never
treated as each other's negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from stitch.losses.base import PairLoss, reference_weights, weighted_mean
from stitch.losses.config import LossSettings
from stitch.losses.pairs import resolve_ref, same_label


def multi_positive_nll(
    logits: torch.Tensor, positive: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over rows of ``-log sum_{j positive} softmax(logits)_ij``, weighted by ``weights`` (one per row)
    when given; rows without positives skipped."""
    has_pos = positive.any(dim=1)
    if not has_pos.any():
        raise ValueError("no row has a positive; check that labels and ref_labels share values")  # a bug, not input
    log_norm = torch.logsumexp(logits[has_pos], dim=1)
    log_pos = torch.logsumexp(logits[has_pos].masked_fill(~positive[has_pos], float("-inf")), dim=1)
    return weighted_mean(log_norm - log_pos, None if weights is None else weights[has_pos])


class InfoNCELoss(PairLoss):
    """CLIP-style symmetric InfoNCE on cosine similarities.

    ``embeddings`` (queries) and ``ref_emb`` (gallery items) are L2-normalised here; the logit scale
    ``1/temperature`` is learnt in log space and clamped at 100, as CLIP does. With ``weights`` both
    directions are weighted means: a caption row by its weight, an image row by its captions' weight.
    """

    supports_weights = True

    @classmethod
    def from_config(cls, c: LossSettings) -> InfoNCELoss:
        return cls(temperature=c.temperature, learnable=c.learnable_temperature, symmetric=c.symmetric)

    def __init__(self, temperature: float = 0.05, learnable: bool = True, symmetric: bool = True) -> None:
        super().__init__()
        log_scale = torch.tensor(math.log(1.0 / temperature), dtype=torch.float32)
        self.log_scale = nn.Parameter(log_scale, requires_grad=learnable)
        self.symmetric = symmetric

    @property
    def temperature(self) -> float:
        return float(1.0 / self.log_scale.detach().exp().clamp(max=100))

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, weights=None):
        if labels is None:
            labels = torch.arange(len(embeddings), device=embeddings.device)
        ref_emb, ref_labels, self_mask = resolve_ref(embeddings, labels, ref_emb, ref_labels)
        scale = self.log_scale.exp().clamp(max=100)
        logits = scale * F.normalize(embeddings, dim=1) @ F.normalize(ref_emb, dim=1).T
        logits = logits.masked_fill(self_mask, float("-inf"))  # an item is not its own candidate
        positive = same_label(labels, ref_labels) & ~self_mask
        loss = multi_positive_nll(logits.float(), positive, weights)
        if self.symmetric:
            ref_weights = None if weights is None else reference_weights(positive, weights)
            loss = (loss + multi_positive_nll(logits.T.float(), positive.T, ref_weights)) / 2
        return loss

    def set_temperature(self, temperature: float) -> None:
        with torch.no_grad():
            self.log_scale.fill_(math.log(1.0 / temperature))

    def extra_state(self) -> dict[str, float]:
        return {"temperature": self.temperature}
