"""Closed-form translators: ridge regression and orthogonal Procrustes, fitted in float64."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stitch.translators.moments import PairMoments


class LinearMap(nn.Module):
    """``y = x @ weight + bias``; the weights come from a closed-form fit, stored as buffers."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(in_dim, out_dim))
        self.register_buffer("bias", torch.zeros(out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight + self.bias

    def set(self, weight: np.ndarray, bias: np.ndarray) -> LinearMap:
        self.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        self.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
        return self


def ridge_solution(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and bias minimising ``|xW + b - y|^2 + alpha |W|^2`` (the bias is not penalised)."""
    return PairMoments.of(x, y).ridge(alpha)


def procrustes_solution(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Semi-orthogonal ``W`` (orthonormal rows or columns) best mapping centred, scaled x onto y.

    With different dimensions ``W`` is ``d_x x d_y`` from the SVD of ``x^T y``; a global scale
    fitted by least squares keeps the output on the target's scale.
    """
    return PairMoments.of(x, y).procrustes()


def closed_form_solution(moments: PairMoments, model_cfg) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, bias)`` of the configured closed-form fit (``model.init``: procrustes or ridge)."""
    if model_cfg.init == "procrustes":
        return moments.procrustes()
    return moments.ridge(model_cfg.ridge_alpha)


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 1.0) -> LinearMap:
    weight, bias = ridge_solution(x, y, alpha)
    return LinearMap(x.shape[1], y.shape[1]).set(weight, bias)


def fit_procrustes(x: np.ndarray, y: np.ndarray) -> LinearMap:
    weight, bias = procrustes_solution(x, y)
    return LinearMap(x.shape[1], y.shape[1]).set(weight, bias)
