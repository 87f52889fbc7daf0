"""Retrieval metrics from 1-based ranks of the true match, and what chance would score."""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10, 50)


def recall_at(ranks: np.ndarray, k: int) -> float:
    return float(np.mean(ranks <= k))


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    return float(np.mean(1.0 / ranks))


def ndcg_single(ranks: np.ndarray, k: int = 10) -> float:
    """NDCG@k with one relevant item per query: 1/log2(rank + 1) inside the top k."""
    gains = np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)
    return float(np.mean(gains))


def rank_metrics(ranks: np.ndarray, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """Recall@K, MRR, NDCG@10, median and mean rank for one direction."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        raise ValueError("no queries to score")
    out = {f"recall@{k}": recall_at(ranks, k) for k in ks}
    out["mrr"] = mean_reciprocal_rank(ranks)
    out["ndcg@10"] = ndcg_single(ranks, 10)
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out


def random_baseline(gallery: int, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """Expected metrics of a uniformly random ranking with one true item among ``gallery``."""
    positions = np.arange(1, gallery + 1, dtype=np.float64)
    out = {f"recall@{k}": min(k, gallery) / gallery for k in ks}
    out["mrr"] = float(np.mean(1.0 / positions))
    out["ndcg@10"] = float(np.sum(1.0 / np.log2(positions[:10] + 1.0)) / gallery)
    out["median_rank"] = float(np.median(positions))
    out["mean_rank"] = float(np.mean(positions))
    return out
