"""Translators into the image space: closed-form maps (ridge, Procrustes), an MLP, and a residual MLP
on a closed-form start. They share one shape: ``translator`` (caption -> z-scored image features) and
``space`` (the z-scoring), so submissions are ``space.inverse(translator(caption))``."""

from __future__ import annotations

import torch
from torch import nn

from stitch.translators.base import Translator
from stitch.translators.closed_form import LinearMap, closed_form_solution
from stitch.translators.mlp import MLP, ResidualMLP
from stitch.translators.moments import PairMoments


class MappedTranslator(Translator):
    """A network from caption space into the (z-scored) image space; retrieval is a cosine there."""

    def __init__(self, translator: nn.Module, text_dim: int, image_dim: int) -> None:
        super().__init__(text_dim, image_dim)
        self.translator = translator

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        return self.translator(captions)

    def to_image_space(self, captions: torch.Tensor) -> torch.Tensor:
        return self.space.inverse(self.translator(captions))


class IdentityTranslator(MappedTranslator):
    """Queries and gallery already share one space (precomputed embeddings): score them as they are."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Identity(), dim, dim)


class RidgeTranslator(MappedTranslator):
    @classmethod
    def from_config(cls, model_cfg, text_dim: int, image_dim: int) -> RidgeTranslator:
        return cls(LinearMap(text_dim, image_dim), text_dim, image_dim)

    def initialise(self, moments: PairMoments, model_cfg) -> None:
        self.translator.set(*moments.ridge(model_cfg.ridge_alpha))


class ProcrustesTranslator(MappedTranslator):
    @classmethod
    def from_config(cls, model_cfg, text_dim: int, image_dim: int) -> ProcrustesTranslator:
        return cls(LinearMap(text_dim, image_dim), text_dim, image_dim)

    def initialise(self, moments: PairMoments, model_cfg) -> None:
        self.translator.set(*moments.procrustes())


class MLPTranslator(MappedTranslator):
    @classmethod
    def from_config(cls, model_cfg, text_dim: int, image_dim: int) -> MLPTranslator:
        c = model_cfg
        return cls(MLP(text_dim, image_dim, c.hidden, c.depth, c.dropout, c.activation), text_dim, image_dim)


class ResidualTranslator(MappedTranslator):
    @classmethod
    def from_config(cls, model_cfg, text_dim: int, image_dim: int) -> ResidualTranslator:
        c = model_cfg
        return cls(ResidualMLP(text_dim, image_dim, c.hidden, c.depth, c.dropout, c.activation), text_dim, image_dim)

    def initialise(self, moments: PairMoments, model_cfg) -> None:
        weight, bias = closed_form_solution(moments, model_cfg)
        self.translator.init_linear(torch.as_tensor(weight), torch.as_tensor(bias))
