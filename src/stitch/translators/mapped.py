"""Translators into the image space: closed-form maps (ridge, Procrustes), an MLP, a residual MLP on a
closed-form start, and the graded residual MLP. They share one shape: ``translator`` (caption -> image
features in the run's space) and ``space`` (the z-scoring, or the identity for raw targets).

A submission holds ``space.direction(unit(translator(caption)))``: the raw-space vector that a grader's
cosine with raw images ranks as the model ranks (exact in the raw space, close in a z-scored one);
``space.inverse(translator(caption))`` is the regression point. :class:`GradedTranslator` scores exactly
as a grader does, so its submission is exact by construction."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from stitch.errors import UsageError
from stitch.translators.base import Translator, check_target
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

    def to_image_space(self, captions: torch.Tensor, target: str = "direction") -> torch.Tensor:
        predicted = self.translator(captions)
        if check_target(target) == "point":
            return self.space.inverse(predicted)
        return self.raw_direction(F.normalize(predicted.float(), dim=-1))

    def raw_direction(self, queries: torch.Tensor) -> torch.Tensor:
        return self.space.direction(queries)

    @property
    def exact_submission(self) -> bool:
        """Exact in the raw image space; in a z-scored space a grader's per-image norm differs."""
        return self.space.is_identity


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


class SelfLearningTranslator(MappedTranslator):
    """A linear map fitted on the pairs (``model.init``: ridge or procrustes) and refitted on pseudo-pairs
    drawn among unpaired pools (:mod:`stitch.semi`), which sets the final map here."""

    @classmethod
    def from_config(cls, model_cfg, text_dim: int, image_dim: int) -> SelfLearningTranslator:
        return cls(LinearMap(text_dim, image_dim), text_dim, image_dim)

    def initialise(self, moments: PairMoments, model_cfg) -> None:
        self.translator.set(*closed_form_solution(moments, model_cfg))

    def set_raw_map(self, weight: np.ndarray, bias: np.ndarray) -> None:
        """Take the map ``y = x @ weight + bias`` into the raw image space (as self-learning refitted it),
        carried into this model's space: ``(y - mean) / std`` (or the identity)."""
        mean = self.space.mean.double().numpy()
        std = self.space.std.double().numpy()
        self.translator.set(np.asarray(weight) / std[None, :], (np.asarray(bias) - mean) / std)


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


class GradedTranslator(ResidualTranslator):
    """A residual MLP scored exactly as a competition grader scores a submission: its gallery is the raw
    image, unit-normalised, and its query a free vector of the raw space, so the submitted vector ranks
    the grader's gallery as the model does — ties aside, by construction.

    Its network predicts in the z-scored space, as the default recipe's does, and its query is that
    prediction carried to a raw-space direction (``z / std``, see :meth:`Standardizer.direction`): the
    optimiser sees well-scaled weights, the scoring is the grader's. After training, a hubness bias that is
    linear in the unit raw image (``hub_bias``, fitted by ``stitch.training.hub_bias``) is subtracted from
    the unit query: scoring ``(unit(q) - b) . unit(x)`` stays in the grader's family, so it travels in the
    vector."""

    exact_submission = True
    folds_hub_bias = True

    def __init__(self, translator: nn.Module, text_dim: int, image_dim: int) -> None:
        super().__init__(translator, text_dim, image_dim)
        self.register_buffer("hub_bias", torch.zeros(image_dim))

    def embed_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return images  # raw: scoring takes unit rows, as a grader does

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.training_queries(captions).float(), dim=-1) - self.hub_bias

    def training_queries(self, captions: torch.Tensor) -> torch.Tensor:
        return self.space.direction(self.translator(captions))

    def to_image_space(self, captions: torch.Tensor, target: str = "direction") -> torch.Tensor:
        if check_target(target) == "point":
            raise UsageError(
                "a graded run (model.name=graded) predicts directions scored against unit raw images, not image "
                "features: it has no regression point; use target direction"
            )
        return self.embed_queries(captions)

    def raw_direction(self, queries: torch.Tensor) -> torch.Tensor:
        return queries  # already scored against the raw image

    def set_hub_bias(self, bias: torch.Tensor) -> None:
        """The hubness bias subtracted from every unit query (a per-image offset ``b . unit(x)``)."""
        with torch.no_grad():
            self.hub_bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
