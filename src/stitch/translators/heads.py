"""Dual projection heads: a text tower and an image tower into a shared space (CLIP-style retrieval).

Tower kinds:
- ``identity``: no projection (the image tower of a translator-like dual model).
- ``linear``: one linear layer (as in simple two-tower InfoNCE notebooks).
- ``mlp``: Linear -> GELU -> Dropout -> Linear, with a residual linear path (CLIP-style projection head).
- ``align``: a wider two-layer head with BatchNorm (ALIGN-style).
- ``attention``: the vector is cut into tokens, refined by self-attention layers, pooled and projected.
- ``crossattn``: like ``attention``, but tokens also cross-attend to a learnt bank of prototype tokens of
  the other modality, so each tower stays independent (galleries can be pre-computed and indexed).

``DualEncoder`` optionally keeps momentum (EMA) copies of both towers (BLIP/ALBEF-style): the momentum
towers produce soft targets for a distillation term, and are updated after every optimiser step.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from stitch.translators.space import Standardizer

TOWERS = ("identity", "linear", "mlp", "align", "attention", "crossattn")


class ProjectionMLP(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.skip = nn.Linear(in_dim, out_dim)
        self.body = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim))
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.skip(x) + self.body(x))


class AlignHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Linear(hidden, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TokenAttentionHead(nn.Module):
    """Self-attention over ``tokens`` pieces of the input vector; optional cross-attention to prototypes."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int = 128,
        tokens: int = 8,
        layers: int = 1,
        heads: int = 4,
        dropout: float = 0.1,
        prototypes: int = 0,
    ) -> None:
        super().__init__()
        self.tokens = tokens
        self.to_tokens = nn.Linear(in_dim, tokens * width)
        self.position = nn.Parameter(torch.zeros(tokens, width))
        layer = nn.TransformerEncoderLayer(width, heads, 2 * width, dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.prototypes = nn.Parameter(torch.randn(prototypes, width) * 0.02) if prototypes else None
        self.cross = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True) if prototypes else None
        self.cross_norm = nn.LayerNorm(width) if prototypes else None
        self.out = nn.Linear(tokens * width, out_dim)
        self.skip = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.to_tokens(x).view(len(x), self.tokens, -1) + self.position
        h = self.encoder(h)
        if self.cross is not None:
            memory = self.prototypes.unsqueeze(0).expand(len(x), -1, -1)
            attended, _ = self.cross(self.cross_norm(h), memory, memory, need_weights=False)
            h = h + attended
        return self.skip(x) + self.out(h.flatten(1))


def build_tower(kind: str, in_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Module:
    if kind == "identity":
        return nn.Identity()
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return ProjectionMLP(in_dim, out_dim, hidden, dropout)
    if kind == "align":
        return AlignHead(in_dim, out_dim, 2 * hidden, dropout)
    if kind == "attention":
        return TokenAttentionHead(in_dim, out_dim, dropout=dropout)
    if kind == "crossattn":
        return TokenAttentionHead(in_dim, out_dim, dropout=dropout, prototypes=16)
    raise ValueError(f"unknown tower {kind!r}; choose from {TOWERS}")


class DualEncoder(nn.Module):
    """Text and image towers into a shared space; the image side is z-scored first."""

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        shared_dim: int,
        text_tower: str,
        image_tower: str,
        hidden: int,
        dropout: float,
        freeze_image: bool = False,
        momentum: float = 0.0,
    ) -> None:
        super().__init__()
        self.text_dim, self.image_dim = text_dim, image_dim
        if image_tower == "identity":
            shared_dim = image_dim
        self.shared_dim = shared_dim
        self.space = Standardizer(image_dim)
        self.text_tower = build_tower(text_tower, text_dim, shared_dim, hidden, dropout)
        self.image_tower = build_tower(image_tower, image_dim, shared_dim, hidden, dropout)
        if freeze_image:
            for p in self.image_tower.parameters():
                p.requires_grad_(False)
        self.momentum = momentum
        if momentum > 0:
            self.text_momentum = copy.deepcopy(self.text_tower).requires_grad_(False)
            self.image_momentum = copy.deepcopy(self.image_tower).requires_grad_(False)

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        return self.text_tower(captions)

    def embed_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_tower(self.space(images))

    @torch.no_grad()
    def after_step(self) -> None:
        """EMA update of the momentum towers (BLIP-style)."""
        if self.momentum <= 0:
            return
        for online, ema in ((self.text_tower, self.text_momentum), (self.image_tower, self.image_momentum)):
            for p, q in zip(online.parameters(), ema.parameters()):
                q.mul_(self.momentum).add_(p.detach(), alpha=1 - self.momentum)
            for b, c in zip(online.buffers(), ema.buffers()):
                c.copy_(b)

    def auxiliary_loss(self, captions, queries, images, gallery, labels, ref_labels, weights) -> torch.Tensor:
        """Momentum distillation (when momentum > 0): cross-entropy of the online similarities against
        the momentum towers' soft targets mixed with the hard multi-positive targets (ALBEF/BLIP)."""
        if self.momentum <= 0 or not weights.distill_weight:
            return captions.new_zeros(())
        scale = 1.0 / weights.distill_temperature
        with torch.no_grad():
            tq = F.normalize(self.text_momentum(captions), dim=1)
            tg = F.normalize(self.image_momentum(self.space(images)), dim=1)
            soft = (scale * tq @ tg.T).softmax(dim=1)
            hard = (labels[:, None] == ref_labels[None, :]).float()
            target = 0.5 * soft + 0.5 * hard / hard.sum(1, keepdim=True).clamp(min=1)
        logits = scale * F.normalize(queries, dim=1) @ F.normalize(gallery, dim=1).T
        return weights.distill_weight * -(target * logits.log_softmax(dim=1)).sum(1).mean()
