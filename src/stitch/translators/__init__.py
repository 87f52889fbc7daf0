"""Models from caption space to a scoring space, all keeping the :class:`Translator` contract.

Kinds are named in :data:`stitch.registries.MODELS`; ``build_model`` makes one from a config.
"""

from __future__ import annotations

import numpy as np
import torch

from stitch.registries import MODELS
from stitch.translators.base import NonFiniteError, Translator, check_finite, check_target
from stitch.translators.closed_form import LinearMap, fit_procrustes, fit_ridge, procrustes_solution, ridge_solution
from stitch.translators.ensemble import Ensemble, Fusion
from stitch.translators.heads import DualEncoder
from stitch.translators.mapped import MappedTranslator
from stitch.translators.mlp import MLP, ResidualMLP
from stitch.translators.set_head import SetPredictionHead
from stitch.translators.space import Standardizer


def build_model(model_cfg, text_dim: int, image_dim: int) -> Translator:
    """An untrained model of the configured kind (closed-form ones hold zeros until ``initialise``)."""
    return MODELS.get(model_cfg.name, "model.name").from_config(model_cfg, text_dim, image_dim)


@torch.no_grad()
def embed_rows(
    fn, rows: np.ndarray, device: torch.device | str = "cpu", chunk: int = 8192, what: str = ""
) -> torch.Tensor:
    """Apply a model side (``embed_queries``, ``embed_gallery``, ...) to numpy rows in chunks, as float32;
    a NaN/Inf output is an error naming ``what`` (default: the function)."""
    parts = [fn(torch.as_tensor(rows[i : i + chunk], device=device)).float() for i in range(0, len(rows), chunk)]
    out = torch.cat(parts) if parts else torch.empty(0)
    return check_finite(out, what or getattr(fn, "__name__", "model output"))


def image_space_rows(
    model: Translator, rows: np.ndarray, device: torch.device | str = "cpu", target: str = "direction"
) -> torch.Tensor:
    """``model.to_image_space`` over numpy rows in chunks: what a submission of ``rows`` holds (see
    :data:`stitch.registries.IMAGE_TARGETS`); NaN/Inf is an error."""
    check_target(target)

    def translate(captions: torch.Tensor) -> torch.Tensor:
        return model.to_image_space(captions, target)

    return embed_rows(translate, rows, device, what=f"image-space predictions ({target})")


__all__ = [
    "DualEncoder",
    "Ensemble",
    "Fusion",
    "LinearMap",
    "MLP",
    "MappedTranslator",
    "NonFiniteError",
    "ResidualMLP",
    "SetPredictionHead",
    "Standardizer",
    "Translator",
    "build_model",
    "check_finite",
    "embed_rows",
    "fit_procrustes",
    "fit_ridge",
    "image_space_rows",
    "procrustes_solution",
    "ridge_solution",
]
