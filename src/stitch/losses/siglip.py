"""SigLIP's pairwise sigmoid loss with learnable temperature and bias, computed in chunks.

Every query/reference pair is an independent binary problem, so the loss is a sum over column
chunks; each chunk runs under activation checkpointing, so the B x B logits are never all held for
the backward pass: memory grows with B x chunk, not B².
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from stitch.losses.base import PairLoss
from stitch.losses.config import LossSettings
from stitch.losses.pairs import resolve_ref, same_label


def _chunk_loss(q, ref, labels, ref_labels, self_mask, log_scale, bias, weights):
    logits = log_scale.exp() * q @ ref.T + bias
    sign = same_label(labels, ref_labels).float() * 2 - 1
    terms = -F.logsigmoid(sign * logits)
    return (terms.masked_fill(self_mask, 0.0).sum(dim=1) * weights).sum()


class SigLIPLoss(PairLoss):
    """``-mean_i sum_j log sigmoid(z_ij (t cos_ij + b))`` with z = +1 for matching pairs, -1 otherwise.

    Initialised as in the SigLIP paper (t = 10, b = -10); ``chunk`` columns are processed at a time. With
    ``weights`` the mean over queries is a weighted mean (each query's sum over references counted its weight).
    """

    supports_weights = True

    @classmethod
    def from_config(cls, c: LossSettings) -> SigLIPLoss:
        return cls(temperature=c.temperature, learnable=c.learnable_temperature)

    def __init__(self, temperature: float = 0.1, bias: float = -10.0, learnable: bool = True, chunk: int = 256) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)), requires_grad=learnable)
        self.bias = nn.Parameter(torch.tensor(float(bias)), requires_grad=learnable)
        self.chunk = chunk

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, weights=None):
        if labels is None:
            labels = torch.arange(len(embeddings), device=embeddings.device)
        ref, ref_labels, self_mask = resolve_ref(embeddings, labels, ref_emb, ref_labels)
        q, ref = F.normalize(embeddings, dim=1), F.normalize(ref, dim=1)
        rows = embeddings.new_ones(len(embeddings)) if weights is None else weights.to(q.dtype)
        total = embeddings.new_zeros(())
        for start in range(0, len(ref), self.chunk):
            cols = slice(start, start + self.chunk)
            args = (q, ref[cols], labels, ref_labels[cols], self_mask[:, cols], self.log_scale, self.bias, rows)
            if torch.is_grad_enabled():
                total = total + checkpoint(_chunk_loss, *args, use_reentrant=False)
            else:
                total = total + _chunk_loss(*args)
        return total / (len(embeddings) if weights is None else rows.sum().clamp_min(1e-12))

    def set_temperature(self, temperature: float) -> None:
        with torch.no_grad():
            self.log_scale.fill_(math.log(1.0 / temperature))

    def extra_state(self) -> dict[str, float]:
        return {"temperature": float(1 / self.log_scale.detach().exp()), "bias": float(self.bias.detach())}
