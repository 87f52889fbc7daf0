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
        """The raw image feature a z-scored prediction stands for (the regression point)."""
        return z * self.std + self.mean

    def direction(self, z: torch.Tensor) -> torch.Tensor:
        """The raw-space direction that ranks raw images as ``z`` ranks z-scored ones.

        ``(z / std) . x = z . (x - mean) / std + z . mean / std``: the second term is the same for every
        image, so a grader's dot product with raw images orders them as the model's dot product with
        z-scored ones. Only the per-image norms differ (a grader divides by ``|x|``, the model by
        ``|(x - mean) / std|``), which is why it is exact when the space is not fitted and close otherwise."""
        return z / self.std

    @property
    def is_identity(self) -> bool:
        """Whether the space is the raw image space (a run trained with ``standardize_target=false``)."""
        return bool(torch.all(self.mean == 0) and torch.all(self.std == 1))
