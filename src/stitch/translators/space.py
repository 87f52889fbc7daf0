"""The image space a translator predicts into: raw features, or z-scored with train statistics."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from stitch.translators.moments import ColumnMoments


class Standardizer(nn.Module):
    """``(y - mean) / std`` per feature, and its inverse; identity when not fitted."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, y: np.ndarray) -> Standardizer:
        return self.fit_moments(ColumnMoments.of_chunks([y]))

    def fit_moments(self, moments: ColumnMoments) -> Standardizer:
        """Fit from column statistics gathered in one pass (over shards on disk as well as arrays)."""
        self.mean.copy_(torch.as_tensor(moments.mean, dtype=torch.float32))
        self.std.copy_(torch.as_tensor(np.maximum(moments.std, 1e-6), dtype=torch.float32))
        return self

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean
