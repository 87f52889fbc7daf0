"""Retrieval metrics from 1-based ranks of the true match, and what chance would score.

With several relevant items per query the input is the rank of every link (``relevant_ranks``) and the
per-query reductions run over the relation's CSR offsets, so there is no Python loop over queries.
"""

from __future__ import annotations

import numpy as np

from stitch.data.relevance import Relevance
from stitch.errors import UsageError

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
        raise UsageError("no queries to score")
    out = {f"recall@{k}": recall_at(ranks, k) for k in ks}
    out["mrr"] = mean_reciprocal_rank(ranks)
    out["ndcg@10"] = ndcg_single(ranks, 10)
    out["median_rank"] = float(np.median(ranks))
    out["mean_rank"] = float(np.mean(ranks))
    return out


def truncated_metrics(ranks: np.ndarray, ks: tuple[int, ...], cutoff: int) -> dict[str, float]:
    """Recall@K and MRR truncated at ``cutoff`` (a rank past it scores 0), as a leaderboard that ranks only
    the top ``cutoff`` computes them."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if len(ranks) == 0:
        raise UsageError("no queries to score")
    out = {f"recall@{k}": recall_at(ranks, k) for k in ks}
    out[f"mrr@{cutoff}"] = float(np.mean(np.where(ranks <= cutoff, 1.0 / ranks, 0.0)))
    return out


def random_truncated(gallery: int, ks: tuple[int, ...], cutoff: int) -> dict[str, float]:
    """:func:`truncated_metrics` of a uniformly random ranking with one true item among ``gallery``."""
    positions = np.arange(1, min(cutoff, gallery) + 1, dtype=np.float64)
    out = {f"recall@{k}": min(k, gallery) / gallery for k in ks}
    out[f"mrr@{cutoff}"] = float(np.sum(1.0 / positions) / gallery)
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


def _check_links(link_ranks: np.ndarray, relevance: Relevance) -> np.ndarray:
    link_ranks = np.asarray(link_ranks, dtype=np.int64)
    if link_ranks.shape != relevance.items.shape:
        raise UsageError(f"{len(link_ranks)} link ranks for a relation of {len(relevance.items)} links")
    if relevance.n_queries == 0:
        raise UsageError("no queries to score")
    return link_ranks


def first_ranks(link_ranks: np.ndarray, relevance: Relevance) -> np.ndarray:
    """Rank of each query's best-ranked relevant item: what Recall@K (a hit in the top K) looks at."""
    link_ranks = _check_links(link_ranks, relevance)
    return np.minimum.reduceat(link_ranks, relevance.indptr[:-1])


def _per_query(values: np.ndarray, relevance: Relevance) -> np.ndarray:
    return np.add.reduceat(values, relevance.indptr[:-1])


def _within_query(keys: np.ndarray, relevance: Relevance) -> tuple[np.ndarray, np.ndarray]:
    """Links sorted by ``keys`` inside each query, and each sorted link's 0-based place in its query."""
    order = np.lexsort((keys, relevance.link_queries))  # queries stay grouped in CSR order
    return order, relevance.places


def ndcg_at(link_ranks: np.ndarray, relevance: Relevance, k: int = 10) -> float:
    """Mean NDCG@k with linear gains (the grade; 1 when binary) and each query's own ideal ordering."""
    link_ranks = _check_links(link_ranks, relevance)
    if k < 1:
        raise UsageError(f"NDCG needs a cutoff of at least 1, got {k}")
    grades = np.ones(len(link_ranks)) if relevance.grades is None else relevance.grades
    dcg = _per_query(np.where(link_ranks <= k, grades / np.log2(link_ranks + 1.0), 0.0), relevance)
    order, place = _within_query(-grades, relevance)
    ideal_gain = np.where(place < k, grades[order] / np.log2(place + 2.0), 0.0)
    ideal = np.zeros(len(link_ranks))
    ideal[order] = ideal_gain  # back in link order, so the CSR offsets still group it by query
    return float(np.mean(dcg / _per_query(ideal, relevance)))


def _average_precision(link_ranks: np.ndarray, relevance: Relevance, k: int | np.ndarray | None) -> np.ndarray:
    """AP per query: precision at each relevant item's rank (inside the top k — one k, or one per link), over
    all its relevant items."""
    order, place = _within_query(link_ranks, relevance)
    precision = np.zeros(len(link_ranks))
    precision[order] = (place + 1) / link_ranks[order]
    if k is not None:
        precision[link_ranks > k] = 0.0
    return _per_query(precision, relevance) / relevance.counts


def relevance_metrics(
    link_ranks: np.ndarray, relevance: Relevance, ks: tuple[int, ...] = RECALL_KS, ndcg_k: int = 10
) -> dict[str, float]:
    """Metrics of several relevant items per query, from the rank of every link.

    ``hit@K``: some relevant item in the top K (what retrieval papers call Recall@K); ``recall@K``: the
    fraction of the query's relevant items in the top K; ``mrr``, ``median_rank`` and ``mean_rank`` look
    at the first relevant item. ``ndcg@k`` uses linear gains (the grade). ``map@k`` and ``map`` are
    average precision normalised by the query's number of relevant items (as trec_eval and ranx do,
    not by min(k, relevant)). ``r_precision`` is the fraction of the relevant items in the top R
    (R = the query's number of relevant items) and ``map@r`` average precision inside the top R (metric
    learning's MAP@R); ``mean_recall`` is the mean of hit@1, hit@5 and hit@10.
    With one relevant item per query, hit@K == recall@K and the shared keys equal :func:`rank_metrics`.
    """
    link_ranks = _check_links(link_ranks, relevance)
    first = first_ranks(link_ranks, relevance).astype(np.float64)
    counts = relevance.counts
    out = {}
    for k in sorted(set(ks) | {1, 5, 10}):
        out[f"hit@{k}"] = recall_at(first, k)
        out[f"recall@{k}"] = float(np.mean(_per_query(link_ranks <= k, relevance) / counts))
    out["mean_recall"] = float(np.mean([out["hit@1"], out["hit@5"], out["hit@10"]]))
    out = {key: value for key, value in out.items() if key == "mean_recall" or int(key.split("@")[1]) in ks}
    out["mrr"] = mean_reciprocal_rank(first)
    out[f"ndcg@{ndcg_k}"] = ndcg_at(link_ranks, relevance, ndcg_k)
    out[f"map@{ndcg_k}"] = float(np.mean(_average_precision(link_ranks, relevance, ndcg_k)))
    out["map"] = float(np.mean(_average_precision(link_ranks, relevance, None)))
    top_r = np.repeat(counts, counts)  # each link's query's number of relevant items
    out["map@r"] = float(np.mean(_average_precision(link_ranks, relevance, top_r)))
    in_top_r = link_ranks <= top_r
    out["r_precision"] = float(np.mean(_per_query(in_top_r, relevance) / counts))
    out["median_rank"] = float(np.median(first))
    out["mean_rank"] = float(np.mean(first))
    return out


def _first_rank_pmf(counts: np.ndarray, gallery: int) -> np.ndarray:
    """P(first relevant item at rank k), k = 0..gallery, of a random order, mixed over the queries.

    With r relevant among N, P(first > j) = prod_{i<j} (N-r-i)/(N-i): the top j are all non-relevant."""
    pmf = np.zeros(gallery + 1)
    for r, n_queries in zip(*np.unique(counts, return_counts=True)):
        j = np.arange(gallery - r + 1)
        survival = np.concatenate([[1.0], np.cumprod((gallery - r - j) / (gallery - j))])
        pmf[1 : gallery - r + 2] += n_queries * (survival[:-1] - survival[1:])
    return pmf / len(counts)


def random_baseline_relevance(counts: np.ndarray, gallery: int, ks: tuple[int, ...] = RECALL_KS) -> dict[str, float]:
    """Exact expected metrics of a uniformly random order when query q has ``counts[q]`` relevant items.

    ``hit@K``, ``mrr``, ``mean_rank`` and ``mean_recall`` are expectations over queries and orders;
    ``recall@K`` = K / gallery; ``median_rank`` is the median of the first relevant rank's distribution
    (mixed over the queries; halfway to the next rank where the CDF is exactly 1/2, like ``np.median``),
    so one relevant item gives the values of :func:`random_baseline`."""
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) == 0:
        raise UsageError("no queries to score")
    if counts.min() < 1 or counts.max() > gallery:
        raise UsageError(f"relevant counts must lie in [1, {gallery}], got {counts.min()}..{counts.max()}")
    pmf = _first_rank_pmf(counts, gallery)
    cdf = np.cumsum(pmf)
    ranks = np.arange(gallery + 1)
    out = {}
    for k in ks:
        out[f"hit@{k}"] = float(cdf[min(k, gallery)])
        out[f"recall@{k}"] = min(k, gallery) / gallery
    out["mean_recall"] = float(np.mean([cdf[min(k, gallery)] for k in (1, 5, 10)]))
    out["mrr"] = float((pmf[1:] / ranks[1:]).sum())
    half = int(np.searchsorted(cdf, 0.5 - 1e-12))
    out["median_rank"] = half + 0.5 if abs(cdf[half] - 0.5) < 1e-12 else float(half)
    out["mean_rank"] = float((pmf * ranks).sum())
    return out
