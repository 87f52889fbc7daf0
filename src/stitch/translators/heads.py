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
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from stitch.registries import TOWERS
from stitch.translators.base import Translator


class LinearTower(nn.Linear):
    """One linear layer (as in simple two-tower InfoNCE notebooks)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__(in_dim, out_dim)


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
        hidden = 2 * hidden  # ALIGN's head is wider than the other towers
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


class AttentionTower(TokenAttentionHead):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.1) -> None:
        super().__init__(in_dim, out_dim, dropout=dropout)


class CrossAttentionTower(TokenAttentionHead):
    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0, dropout: float = 0.1) -> None:
        super().__init__(in_dim, out_dim, dropout=dropout, prototypes=16)


def build_tower(kind: str, in_dim: int, out_dim: int, hidden: int, dropout: float) -> nn.Module:
    """A tower by its registry name; every tower takes ``(in_dim, out_dim, hidden, dropout)``."""
    return TOWERS.get(kind, "tower")(in_dim, out_dim, hidden, dropout)


@dataclass(frozen=True)
class TowerTraining:
    """How a :class:`DualEncoder`'s towers learn, apart from their shape: a frozen image tower, and the
    momentum of the EMA copies that give distillation targets (0: no copies)."""

    freeze_image: bool = False
    momentum: float = 0.0


class DualEncoder(Translator):
    """Text and image towers into a shared space; the image side is z-scored first.

    Its gallery space is learnt, so it has no image-space predictions for submissions. ``settings`` are
    :class:`TowerTraining`'s fields by name (``momentum=0.9``), applied over ``training``."""

    has_image_space = False

    def __init__(
        self,
        text_dim: int,
        image_dim: int,
        shared_dim: int,
        text_tower: str,
        image_tower: str,
        hidden: int,
        dropout: float,
        training: TowerTraining | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(text_dim, image_dim)
        training = replace(training or TowerTraining(), **settings)
        freeze_image, momentum = training.freeze_image, training.momentum
        if image_tower == "identity":  # the shared space is one side's own: images', or (below) captions'
            shared_dim = image_dim
        elif text_tower == "identity":
            shared_dim = text_dim
        self.shared_dim = shared_dim
        self.text_tower = build_tower(text_tower, text_dim, shared_dim, hidden, dropout)
        self.image_tower = build_tower(image_tower, image_dim, shared_dim, hidden, dropout)
        if freeze_image:
            for p in self.image_tower.parameters():
                p.requires_grad_(False)
        self.momentum = momentum
        if momentum > 0:
            self.text_momentum = copy.deepcopy(self.text_tower).requires_grad_(False)
            self.image_momentum = copy.deepcopy(self.image_tower).requires_grad_(False)

    @classmethod
    def from_config(cls, c, text_dim: int, image_dim: int) -> DualEncoder:
        return cls(
            text_dim,
            image_dim,
            c.shared_dim,
            c.text_tower,
            c.image_tower,
            c.hidden,
            c.dropout,
            TowerTraining(c.freeze_image, c.momentum),
        )

    @property
    def space_dim(self) -> int:
        return self.shared_dim

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

    def momentum_embeddings(self, captions: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both sides through the momentum (EMA) towers, without gradients: distillation targets."""
        with torch.no_grad():
            return self.text_momentum(captions), self.image_momentum(self.space(images))
