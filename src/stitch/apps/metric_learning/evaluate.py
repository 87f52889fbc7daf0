"""Retrieval-style accuracy of an embedding: precision@1, MAP@R, kNN classification and regression.

Queries are held-out items, references the training items (a query is never its own reference).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stitch.retrieval.index import majority_vote


def _neighbours(queries: np.ndarray, references: np.ndarray, k: int, metric: str = "cosine") -> np.ndarray:
    q, r = torch.as_tensor(queries, dtype=torch.float32), torch.as_tensor(references, dtype=torch.float32)
    if metric == "cosine":
        scores = F.normalize(q, dim=1) @ F.normalize(r, dim=1).T
    else:
        scores = -torch.cdist(q, r)
    return scores.topk(min(k, len(r)), dim=1).indices.numpy()


def precision_at_1(queries, query_labels, references, reference_labels, metric: str = "cosine") -> float:
    nearest = _neighbours(queries, references, 1, metric)[:, 0]
    return float(np.mean(np.asarray(reference_labels)[nearest] == np.asarray(query_labels)))


def map_at_r(queries, query_labels, references, reference_labels, metric: str = "cosine") -> float:
    """Mean over queries of (1/R) sum_{i<=R} P@i * rel(i), R = number of references sharing the label."""
    query_labels, reference_labels = np.asarray(query_labels), np.asarray(reference_labels)
    counts = {label: int((reference_labels == label).sum()) for label in np.unique(query_labels)}
    max_r = max(counts.values())
    order = _neighbours(queries, references, max_r, metric)
    scores = []
    for row, label in zip(order, query_labels):
        r = counts[label]
        if r == 0:
            continue
        relevant = reference_labels[row[:r]] == label
        precision = np.cumsum(relevant) / np.arange(1, r + 1)
        scores.append(float((precision * relevant).sum() / r))
    return float(np.mean(scores))


def knn_accuracy(queries, query_labels, references, reference_labels, k: int = 5, metric: str = "cosine") -> float:
    """Majority vote of the k nearest references (ties: the label of the nearest tied class)."""
    votes = np.asarray(reference_labels)[_neighbours(queries, references, k, metric)]
    return float(np.mean(majority_vote(votes) == np.asarray(query_labels)))


def knn_position_error(
    queries, query_targets, references, reference_targets, k: int = 5, metric: str = "cosine"
) -> float:
    """Mean Euclidean error of the k-nearest-neighbour average position (image-based localisation)."""
    reference_targets = np.asarray(reference_targets, dtype=np.float64)
    predicted = reference_targets[_neighbours(queries, references, k, metric)].mean(axis=1)
    return float(np.linalg.norm(predicted - np.asarray(query_targets, dtype=np.float64), axis=1).mean())
