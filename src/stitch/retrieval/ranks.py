"""Exact ranks of the true match, computed in chunks so memory is O(chunk x gallery).

Ties count against the query (pessimistic ranks): a gallery item scoring exactly the same as the
true match is ranked above it. A constant predictor therefore gets the worst rank, never the best, and
a NaN score never helps: a NaN true score ranks last, a NaN competitor ranks above the true match.

Scores come from ``similarity(queries, gallery)`` (a model's ``score``; a dot product by default),
optionally rewritten by ``adjust(scores)`` (hubness-aware rescoring).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stitch.io.progress import chunk_starts

DEFAULT_CHUNK = 1024


Similarity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_tensor(x: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    tensor = torch.as_tensor(x)
    return tensor.to(device=device or tensor.device, dtype=torch.float32)


def cosine_ready(x: np.ndarray | torch.Tensor, device: torch.device | str | None = None) -> torch.Tensor:
    """L2-normalised float32 rows (or slot sets), so a dot product is a cosine.

    Rows are scaled by their largest entry first, so huge but finite values (1e30) do not overflow the
    norm into zero vectors; NaN/Inf is an error."""
    x = torch.as_tensor(x)
    if x.is_floating_point() and not torch.isfinite(x).all():
        raise ValueError("embeddings hold NaN/Inf: they cannot be scored")
    x = x.to(device=device or x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    peak = x.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    return F.normalize(x / peak, dim=-1).float()


def dot(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Query x gallery dot products (cosines of unit rows): the similarity of single-vector queries."""
    return queries @ gallery.T


def check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive number of rows scored at once, got {chunk!r}")
    return int(chunk)


def _scores(queries, gallery, similarity: Similarity, adjust) -> torch.Tensor:
    scores = similarity(queries, gallery)
    return scores if adjust is None else adjust(scores)


def _ranks_above(scores: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """How many columns score at least ``true`` (NaN columns count; a NaN true ranks last)."""
    at_least = ((scores >= true[:, None]) | scores.isnan()).sum(dim=1)
    return torch.where(true.isnan(), torch.full_like(at_least, scores.shape[1]), at_least)


def text_to_image_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    positives: np.ndarray | torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    similarity: Similarity = dot,
    adjust=None,
) -> np.ndarray:
    """1-based rank of each query's true gallery item (ties pessimistic)."""
    chunk = check_chunk(chunk)
    positives = torch.as_tensor(positives, dtype=torch.long, device=queries.device)
    if len(positives) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(positives)} positives")
    if len(positives) and (positives.min() < 0 or positives.max() >= len(gallery)):
        raise ValueError(f"positive index out of range [0, {len(gallery)})")
    ranks = torch.empty(len(queries), dtype=torch.long)
    for start in chunk_starts(len(queries), chunk, "text->image ranks"):
        scores = _scores(queries[start : start + chunk], gallery, similarity, adjust)
        rows = torch.arange(len(scores), device=scores.device)
        true = scores[rows, positives[start : start + chunk]]
        ranks[start : start + chunk] = _ranks_above(scores, true).cpu()  # includes the true item itself
    return ranks.numpy()


def image_to_text_ranks(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_image: np.ndarray | torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    similarity: Similarity = dot,
) -> np.ndarray:
    """1-based rank of each image's best-ranked caption among all captions (ties pessimistic)."""
    chunk = check_chunk(chunk)
    owner = torch.as_tensor(caption_image, dtype=torch.long, device=captions.device)
    ranks = torch.empty(len(images), dtype=torch.long)
    for start in chunk_starts(len(images), chunk, "image->text ranks"):
        scores = similarity(captions, images[start : start + chunk]).T
        rows = torch.arange(start, start + len(scores), device=scores.device)
        is_pos = owner[None, :] == rows[:, None]
        best_pos = scores.nan_to_num(nan=float("-inf")).masked_fill(~is_pos, float("-inf")).max(dim=1).values
        negatives_above = (((scores >= best_pos[:, None]) | scores.isnan()) & ~is_pos).sum(dim=1)
        ranks[start : start + chunk] = (negatives_above + 1).cpu()
    return ranks.numpy()


def image_to_text_ndcg(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_image: np.ndarray | torch.Tensor,
    k: int = 10,
    chunk: int = DEFAULT_CHUNK,
    similarity: Similarity = dot,
) -> float:
    """Mean NDCG@k for image->text, where every caption of the image is relevant (ties pessimistic)."""
    chunk = check_chunk(chunk)
    owner = torch.as_tensor(caption_image, dtype=torch.long, device=captions.device)
    n_rel = torch.bincount(owner, minlength=len(images))
    width = int(n_rel.max())
    # relevant caption rows of each image, padded with -1
    order = torch.argsort(owner, stable=True)
    slot = torch.arange(len(owner), device=owner.device) - torch.cumsum(n_rel, 0)[owner[order]] + n_rel[owner[order]]
    relevant = torch.full((len(images), width), -1, dtype=torch.long, device=owner.device)
    relevant[owner[order], slot] = order
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64, device=owner.device))
    ideal = torch.cumsum(discounts, 0)
    total = 0.0
    for start in chunk_starts(len(images), chunk, "image->text NDCG"):
        scores = similarity(captions, images[start : start + chunk]).T
        rows = torch.arange(start, start + len(scores), device=scores.device)
        is_pos = owner[None, :] == rows[:, None]
        rel = relevant[start : start + len(scores)]
        valid = rel >= 0
        rel_scores = scores.gather(1, rel.clamp(min=0))
        gain = torch.zeros(len(scores), dtype=torch.float64, device=scores.device)
        for r in range(width):
            s = rel_scores[:, r : r + 1]
            above = (scores > s).sum(1) + ((scores == s) & ~is_pos).sum(1)
            tied_before = ((rel_scores[:, :r] == s) & valid[:, :r]).sum(1)
            position = above + tied_before  # 0-based
            hit = valid[:, r] & (position < k)
            gain += torch.where(hit, discounts[position.clamp(max=k - 1)], torch.zeros_like(gain))
        best = ideal[(n_rel[start : start + len(scores)].clamp(max=k) - 1)]
        total += float((gain / best).sum())
    return total / len(images)


def sampled_candidate_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    positives: np.ndarray,
    n_candidates: int = 100,
    seed: int = 0,
    chunk: int = DEFAULT_CHUNK,
    similarity: Similarity = dot,
    adjust=None,
) -> np.ndarray:
    """Rank of the true item among itself plus ``n_candidates - 1`` seeded random other items.

    This is the Kaggle protocol of the AML competition (100 candidates per query). Scores are
    computed against the whole gallery in chunks so that ``scorer`` sees full rows, as in
    :func:`text_to_image_ranks`.
    """
    chunk = check_chunk(chunk)
    n_gallery = len(gallery)
    if n_gallery < n_candidates:
        raise ValueError(f"the gallery has {n_gallery} items, fewer than the {n_candidates} candidates asked for")
    rng = np.random.default_rng(seed)
    positives = np.asarray(positives, dtype=np.int64)
    # draw from the gallery without the true item: sample in [0, n-1) and shift past it
    others = np.zeros((len(positives), n_candidates - 1), dtype=np.int64)
    for i in range(len(positives)):
        others[i] = rng.choice(n_gallery - 1, size=n_candidates - 1, replace=False)
    others = others + (others >= positives[:, None])
    candidates = torch.as_tensor(np.concatenate([positives[:, None], others], axis=1), device=queries.device)
    ranks = torch.empty(len(queries), dtype=torch.long)
    for start in chunk_starts(len(queries), chunk, "kaggle100 ranks"):
        scores = _scores(queries[start : start + chunk], gallery, similarity, adjust)
        picked = scores.gather(1, candidates[start : start + chunk])
        ranks[start : start + chunk] = _ranks_above(picked, picked[:, 0]).cpu()
    return ranks.numpy()
