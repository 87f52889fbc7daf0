"""Translators from caption space to image space, and the model a run saves.

A :class:`StitchModel` has two sides: ``embed_queries`` (captions -> scoring space) and
``embed_gallery`` (images -> scoring space). Retrieval is a cosine in the scoring space;
``to_image_space`` gives submissions in the raw image-feature space.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stitch.translators.closed_form import LinearMap, fit_procrustes, fit_ridge, procrustes_solution, ridge_solution
from stitch.translators.heads import DualEncoder
from stitch.translators.mlp import MLP, ResidualMLP
from stitch.translators.set_head import SetPredictionHead
from stitch.translators.space import Standardizer

CLOSED_FORM = ("ridge", "procrustes")


class StitchModel(nn.Module):
    """A translator plus the image space it predicts into."""

    def __init__(self, translator: nn.Module, space: Standardizer, text_dim: int, image_dim: int) -> None:
        super().__init__()
        self.translator = translator
        self.space = space
        self.text_dim = text_dim
        self.image_dim = image_dim

    def embed_queries(self, captions: torch.Tensor) -> torch.Tensor:
        return self.translator(captions)

    def embed_gallery(self, images: torch.Tensor) -> torch.Tensor:
        return self.space(images)

    def to_image_space(self, captions: torch.Tensor) -> torch.Tensor:
        """Predicted raw image features (what a competition submission holds)."""
        return self.space.inverse(self.translator(captions))


def build_translator(model_cfg, text_dim: int, image_dim: int) -> nn.Module:
    """An untrained translator of the configured kind (closed-form ones hold zeros until fitted)."""
    name = model_cfg.name
    if name in CLOSED_FORM:
        return LinearMap(text_dim, image_dim)
    if name == "mlp":
        return MLP(text_dim, image_dim, model_cfg.hidden, model_cfg.depth, model_cfg.dropout, model_cfg.activation)
    if name == "resmlp":
        return ResidualMLP(
            text_dim, image_dim, model_cfg.hidden, model_cfg.depth, model_cfg.dropout, model_cfg.activation
        )
    raise ValueError(f"unknown translator {name!r}")


def build_model(model_cfg, text_dim: int, image_dim: int) -> nn.Module:
    """The model a config names: a translator into image space, dual heads, or a set-prediction head.

    Every model has ``embed_queries``, ``embed_gallery``, ``space`` (image z-scoring), ``text_dim`` and
    ``image_dim``; translators and set heads also have ``to_image_space`` for submissions.
    """
    if model_cfg.name == "dual":
        return DualEncoder(
            text_dim,
            image_dim,
            model_cfg.shared_dim,
            model_cfg.text_tower,
            model_cfg.image_tower,
            model_cfg.hidden,
            model_cfg.dropout,
            model_cfg.freeze_image,
            model_cfg.momentum,
        )
    if model_cfg.name == "set":
        return SetPredictionHead(
            text_dim, image_dim, model_cfg.slots, model_cfg.hidden, model_cfg.slot_dropout, model_cfg.aggregation
        )
    return StitchModel(build_translator(model_cfg, text_dim, image_dim), Standardizer(image_dim), text_dim, image_dim)


@torch.no_grad()
def embed_rows(fn, rows: np.ndarray, device: torch.device | str = "cpu", chunk: int = 8192) -> torch.Tensor:
    """Apply a model side (``embed_queries``, ``embed_gallery``, ...) to numpy rows in chunks, as float32."""
    parts = [fn(torch.as_tensor(rows[i : i + chunk], device=device)).float() for i in range(0, len(rows), chunk)]
    return torch.cat(parts)


def output_dim(model: nn.Module) -> int:
    """Dimension of the scoring space (what ``embed_queries`` returns per vector)."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        dim = model.embed_gallery(torch.zeros(2, model.image_dim)).shape[-1]
        model.train(was_training)
    return dim


def initialise(model: StitchModel, model_cfg, captions: np.ndarray, targets: np.ndarray) -> None:
    """Fit what is closed-form: the whole translator, or the linear start of a residual MLP.

    ``targets`` are the caption-aligned image features already in the model's space.
    """
    translator = getattr(model, "translator", None)
    if model_cfg.name == "ridge":
        translator.set(*ridge_solution(captions, targets, model_cfg.ridge_alpha))
    elif model_cfg.name == "procrustes":
        translator.set(*procrustes_solution(captions, targets))
    elif model_cfg.name in ("resmlp", "set"):
        if model_cfg.init == "procrustes":
            weight, bias = procrustes_solution(captions, targets)
        else:
            weight, bias = ridge_solution(captions, targets, model_cfg.ridge_alpha)
        target = translator if model_cfg.name == "resmlp" else model
        target.init_linear(torch.as_tensor(weight), torch.as_tensor(bias))


__all__ = [
    "DualEncoder",
    "SetPredictionHead",
    "output_dim",
    "embed_rows",
    "MLP",
    "LinearMap",
    "ResidualMLP",
    "Standardizer",
    "StitchModel",
    "build_model",
    "build_translator",
    "fit_procrustes",
    "fit_ridge",
    "initialise",
]
