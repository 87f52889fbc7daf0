"""Entropic optimal transport in log space: soft matching between two sets (Sinkhorn-Knopp)."""

from __future__ import annotations

import math

import torch


def sinkhorn(
    scores: torch.Tensor, temperature: float = 0.1, iters: int = 20, stop_gradient: bool = False
) -> torch.Tensor:
    """Transport plan for ``scores`` (..., n, m): rows sum to 1/n, columns to 1/m, times ``n`` so rows
    sum to 1 when n == m. As ``temperature`` -> 0 it tends to the optimal (Hungarian) assignment.
    """
    if stop_gradient:
        scores = scores.detach()
    n, m = scores.shape[-2:]
    log_k = scores / max(temperature, 1e-6)
    log_r = torch.full(scores.shape[:-1], -math.log(n), device=scores.device, dtype=scores.dtype)
    log_c = torch.full(scores.shape[:-2] + (m,), -math.log(m), device=scores.device, dtype=scores.dtype)
    log_u = torch.zeros_like(log_r)
    log_v = torch.zeros_like(log_c)
    for _ in range(iters):
        log_u = log_r - torch.logsumexp(log_k + log_v.unsqueeze(-2), dim=-1)
        log_v = log_c - torch.logsumexp(log_k + log_u.unsqueeze(-1), dim=-2)
    return (log_k + log_u.unsqueeze(-1) + log_v.unsqueeze(-2)).exp() * n


def set_similarity(
    slots: torch.Tensor, targets: torch.Tensor, temperature: float = 0.1, iters: int = 20, stop_gradient: bool = True
) -> torch.Tensor:
    """Matched similarity of slot sets (B, K, D) and target sets (B, M, D): ``<P, S> / K`` with the
    Sinkhorn plan P. With one target per set it is the mean slot similarity."""
    scores = slots @ targets.transpose(-1, -2)
    plan = sinkhorn(scores, temperature, iters, stop_gradient)
    return (plan * scores).sum(dim=(-1, -2)) / slots.shape[-2]
