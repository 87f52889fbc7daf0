"""Distances and the index tuples shared by pair and triplet losses and miners.

Index tuples follow pytorch-metric-learning: ``(a1, p, a2, n)`` for pairs and ``(a, p, n)`` for
triplets, with anchors indexing ``embeddings`` and positives/negatives indexing ``ref_emb``. Without
``ref_emb`` the embeddings are their own reference and an item is never its own positive.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stitch.errors import UsageError


def distance_matrix(x: torch.Tensor, y: torch.Tensor, kind: str = "euclidean") -> torch.Tensor:
    """``euclidean``: L2 distance of L2-normalised rows; ``cosine``: 1 - cosine similarity."""
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    if kind == "cosine":
        return 1 - x @ y.T
    if kind == "euclidean":
        sq = (2 - 2 * (x @ y.T)).clamp(min=0)
        return torch.where(sq > 0, sq, torch.zeros_like(sq)).sqrt()  # no NaN gradient at 0
    raise UsageError(f"unknown distance {kind!r}; choose euclidean or cosine")


def resolve_ref(embeddings, labels, ref_emb, ref_labels):
    """Return ``(ref_emb, ref_labels, self_mask)``; ``self_mask`` marks i == j when there is no ref."""
    if labels is None:
        raise UsageError("this loss needs labels")
    if ref_emb is None:
        eye = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
        return embeddings, labels, eye
    if ref_labels is None:
        raise UsageError("ref_labels are required with ref_emb")
    none = torch.zeros(len(embeddings), len(ref_emb), dtype=torch.bool, device=embeddings.device)
    return ref_emb, ref_labels, none


def same_label(labels: torch.Tensor, ref_labels: torch.Tensor) -> torch.Tensor:
    """``[i, j]``: row ``i`` matches reference ``j``. A label is one id per row, or — for a caption relevant to
    several images — a row of ids padded with -1, matching any of them, so an image relevant to a caption is
    never its negative."""
    rows = labels.reshape(len(labels), -1)
    return (rows[:, :, None] == ref_labels[None, None, :]).any(dim=1)


def label_masks(labels, ref_labels, self_mask):
    same = same_label(labels, ref_labels)
    return same & ~self_mask, ~same


def all_pairs(labels, ref_labels, self_mask):
    pos, neg = label_masks(labels, ref_labels, self_mask)
    a1, p = pos.nonzero(as_tuple=True)
    a2, n = neg.nonzero(as_tuple=True)
    return a1, p, a2, n


def all_triplets(labels, ref_labels, self_mask):
    pos, neg = label_masks(labels, ref_labels, self_mask)
    valid = pos[:, :, None] & neg[:, None, :]
    return valid.nonzero(as_tuple=True)


def triplets_to_pairs(indices: tuple) -> tuple:
    if len(indices) == 4:
        return indices
    a, p, n = indices
    return a, p, a, n


def pairs_to_triplets(indices: tuple, labels, ref_labels, self_mask) -> tuple:
    """Every (anchor, positive, negative) combination consistent with the given pairs."""
    if len(indices) == 3:
        return indices
    a1, p, a2, n = indices
    rows = len(labels)
    pos = torch.zeros(rows, len(ref_labels), dtype=torch.bool, device=labels.device)
    neg = torch.zeros_like(pos)
    pos[a1, p] = True
    neg[a2, n] = True
    return (pos[:, :, None] & neg[:, None, :]).nonzero(as_tuple=True)


def mean_nonzero(losses: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean over strictly positive entries (zero when none): pytorch-metric-learning's AvgNonZeroReducer."""
    positive = losses > 0
    if not positive.any():
        return anchor.sum() * 0
    return losses[positive].mean()
