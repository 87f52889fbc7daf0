"""Means and centred (co)moments of paired rows, merged chunk by chunk.

Closed-form maps (ridge, Procrustes) and the target z-scoring need only these statistics, so they are
fitted in one pass over the data with memory independent of the number of pairs — the same numbers
whether the pairs sit in RAM or stream from shards on disk. Chunks are combined with Chan et al.'s
pairwise update (centred within each chunk, in float64), which stays accurate where raw sums of
squares would cancel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from stitch.errors import UsageError


def _merged(parts: Iterable, what: str):
    """Every part merged into one (in order)."""
    total = None
    for part in parts:
        total = part if total is None else total.merge(part)
    if total is None:
        raise UsageError(f"no {what} to take moments of")
    return total


@dataclass
class ColumnMoments:
    """Count, mean and centred sum of squares of each column."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def of(cls, y: np.ndarray) -> ColumnMoments:
        y = np.asarray(y, dtype=np.float64)
        return cls(len(y), y.mean(0), ((y - y.mean(0)) ** 2).sum(0))

    @classmethod
    def of_chunks(cls, chunks: Iterable[np.ndarray]) -> ColumnMoments:
        return _merged((cls.of(chunk) for chunk in chunks), "rows")

    def merge(self, other: ColumnMoments) -> ColumnMoments:
        n = self.n + other.n
        delta = other.mean - self.mean
        return ColumnMoments(
            n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta**2 * self.n * other.n / n
        )

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (as ``numpy.std``)."""
        return np.sqrt(self.m2 / self.n)


@dataclass
class PairMoments:
    """Statistics of pairs ``x -> y``: count, means, centred ``x^T x`` and ``x^T y``."""

    n: int
    x_mean: np.ndarray
    y_mean: np.ndarray
    xx: np.ndarray
    xy: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> PairMoments:
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if len(x) != len(y) or len(x) == 0:
            raise UsageError(f"need the same non-zero number of rows on both sides, got {len(x)} and {len(y)}")
        x_mean, y_mean = x.mean(0), y.mean(0)
        xc = x - x_mean
        return cls(len(x), x_mean, y_mean, xc.T @ xc, xc.T @ (y - y_mean))

    @classmethod
    def of_chunks(cls, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> PairMoments:
        return _merged((cls.of(x, y) for x, y in chunks), "pairs")

    def merge(self, other: PairMoments) -> PairMoments:
        n = self.n + other.n
        weight = self.n * other.n / n
        dx, dy = other.x_mean - self.x_mean, other.y_mean - self.y_mean
        return PairMoments(
            n,
            self.x_mean + dx * other.n / n,
            self.y_mean + dy * other.n / n,
            self.xx + other.xx + weight * np.outer(dx, dx),
            self.xy + other.xy + weight * np.outer(dx, dy),
        )

    def ridge(self, alpha: float) -> tuple[np.ndarray, np.ndarray]:
        """Weights and bias minimising ``|xW + b - y|^2 + alpha |W|^2`` (the bias is not penalised)."""
        weight = np.linalg.solve(self.xx + alpha * np.eye(len(self.xx)), self.xy)
        return weight, self.y_mean - self.x_mean @ weight

    def procrustes(self) -> tuple[np.ndarray, np.ndarray]:
        """Semi-orthogonal ``W`` (from the SVD of centred ``x^T y``) times the least-squares global scale,
        which keeps the output on the target's scale: ``scale = tr(W^T C_xy) / tr(W^T C_xx W)``."""
        u, _, vt = np.linalg.svd(self.xy, full_matrices=False)
        rotation = u @ vt
        mapped_energy = float(np.einsum("ij,ij->", rotation, self.xx @ rotation))
        scale = float(np.einsum("ij,ij->", rotation, self.xy)) / max(mapped_energy, 1e-12)
        weight = scale * rotation
        return weight, self.y_mean - self.x_mean @ weight
