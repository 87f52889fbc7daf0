"""Exact ranks of the true match, computed in chunks so memory is O(chunk x gallery).

Ties count against the query (pessimistic ranks): a gallery item scoring exactly the same as the
true match is ranked above it. A constant predictor therefore gets the worst rank, never the best, and
a NaN score never helps: a NaN true score ranks last, a NaN competitor ranks above the true match.

With several relevant items per query (:func:`relevant_ranks`) every link gets its own rank, and ties
among the relevant items are broken against the query too. The rank of relevant item ``i`` is

    1 + #{non-relevant items scoring >= s_i}
      + #{relevant items scoring > s_i}
      + #{relevant items scoring == s_i with a lower grade, or the same grade and a lower item number}

where a NaN non-relevant score counts as +inf (above everything) and a NaN relevant score as -inf (below
every non-relevant item). So in a tie the non-relevant items come first, then the relevant ones from
the lowest grade up: NDCG and AP are never flattered by a tie.

Scores come from ``similarity(queries, gallery)`` (a model's ``score``; a dot product by default),
optionally rewritten by ``adjust(scores)`` (hubness-aware rescoring).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from stitch.data.relevance import Relevance
from stitch.errors import UsageError
from stitch.io.progress import chunk_starts
from stitch.retrieval.metrics import first_ranks, ndcg_at

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
        raise UsageError("embeddings hold NaN/Inf: they cannot be scored")
    x = x.to(device=device or x.device, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    peak = x.abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny)
    return F.normalize(x / peak, dim=-1).float()


def dot(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Query x gallery dot products (cosines of unit rows): the similarity of single-vector queries."""
    return queries @ gallery.T


def check_chunk(chunk: int) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise UsageError(f"chunk must be a positive number of rows scored at once, got {chunk!r}")
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
        raise UsageError(f"{len(queries)} queries but {len(positives)} positives")
    if len(positives) and (positives.min() < 0 or positives.max() >= len(gallery)):
        raise UsageError(f"positive index out of range [0, {len(gallery)})")
    ranks = torch.empty(len(queries), dtype=torch.long)
    for start in chunk_starts(len(queries), chunk, "text->image ranks"):
        scores = _scores(queries[start : start + chunk], gallery, similarity, adjust)
        rows = torch.arange(len(scores), device=scores.device)
        true = scores[rows, positives[start : start + chunk]]
        ranks[start : start + chunk] = _ranks_above(scores, true).cpu()  # includes the true item itself
    return ranks.numpy()


def relevant_ranks(
    queries: torch.Tensor,
    gallery: torch.Tensor,
    relevance: Relevance,
    chunk: int = DEFAULT_CHUNK,
    similarity: Similarity = dot,
    adjust=None,
) -> np.ndarray:
    """1-based pessimistic rank of every relevant link (aligned with ``relevance.items``).

    Queries are scored ``chunk`` at a time and their links compared to the gallery ``chunk`` at a time,
    so memory stays O(chunk x gallery) however many relevant items a query has."""
    chunk = check_chunk(chunk)
    if relevance.n_queries != len(queries):
        raise UsageError(f"{len(queries)} queries but the relevance relation has {relevance.n_queries}")
    if relevance.n_items != len(gallery):
        raise UsageError(f"a gallery of {len(gallery)} items but the relevance relation has {relevance.n_items}")
    link_query = relevance.link_queries
    above = np.empty(len(relevance.items), dtype=np.int64)
    own = np.empty(len(relevance.items), dtype=np.float64)
    for start in chunk_starts(relevance.n_queries, chunk, "relevant ranks"):
        lo, hi = relevance.indptr[start], relevance.indptr[min(start + chunk, relevance.n_queries)]
        scores = _scores(queries[start : start + chunk], gallery, similarity, adjust)
        rows = torch.as_tensor(link_query[lo:hi] - start, device=scores.device)
        cols = torch.as_tensor(relevance.items[lo:hi], device=scores.device)
        true = scores[rows, cols]
        true = true.masked_fill(true.isnan(), float("-inf"))
        rivals = scores.masked_fill(scores.isnan(), float("inf"))
        rivals[rows, cols] = float("-inf")  # relevant columns only count (all of them) when true is -inf
        n_rel = torch.as_tensor(relevance.counts[start : start + chunk], device=scores.device)[rows]
        for a in range(0, hi - lo, chunk):
            part = slice(a, a + chunk)
            at_least = (rivals[rows[part]] >= true[part, None]).sum(dim=1)
            at_least -= torch.where(true[part] == float("-inf"), n_rel[part], torch.zeros_like(n_rel[part]))
            above[lo + a : lo + min(a + chunk, hi - lo)] = at_least.cpu().numpy()
        own[lo:hi] = true.double().cpu().numpy()
    return 1 + above + _relevant_ahead(relevance, own)


def _relevant_ahead(relevance: Relevance, own: np.ndarray) -> np.ndarray:
    """Relevant items of the same query ranked ahead of each link: higher score, then lower grade/item."""
    grades = np.ones(len(own)) if relevance.grades is None else relevance.grades
    order = np.lexsort((relevance.items, grades, -own, relevance.link_queries))  # queries stay grouped
    ahead = np.empty(len(own), dtype=np.int64)
    ahead[order] = relevance.places
    return ahead


def image_to_text_link_ranks(
    images: torch.Tensor, captions: torch.Tensor, relevance: Relevance, chunk: int = DEFAULT_CHUNK, similarity=dot
) -> tuple[np.ndarray, Relevance]:
    """Image->text as a relevance problem: ``relevance`` says which images each caption is relevant to; its
    transpose gives every image its relevant captions. Returns the rank of each image-caption link and that
    transposed relation (every image needs a caption)."""
    by_image = relevance.transpose()
    return relevant_ranks(images, captions, by_image, chunk, lambda a, b: similarity(b, a).T), by_image


def _owner_relevance(caption_image, n_images: int) -> Relevance:
    return Relevance.from_owner(torch.as_tensor(caption_image, dtype=torch.long).cpu().numpy(), n_images)


def image_to_text_ranks(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_image: np.ndarray | torch.Tensor,
    chunk: int = DEFAULT_CHUNK,
    similarity: Similarity = dot,
) -> np.ndarray:
    """1-based rank of each image's best-ranked caption among all captions (ties pessimistic).

    Every image needs at least one caption (an image with none has nothing to retrieve)."""
    relevance = _owner_relevance(caption_image, len(images))
    ranks, by_image = image_to_text_link_ranks(images, captions, relevance, check_chunk(chunk), similarity)
    return first_ranks(ranks, by_image)


def image_to_text_ndcg(
    images: torch.Tensor,
    captions: torch.Tensor,
    caption_image: np.ndarray | torch.Tensor,
    k: int = 10,
    chunk: int = DEFAULT_CHUNK,
    similarity: Similarity = dot,
) -> float:
    """Mean NDCG@k for image->text, where every caption of the image is relevant (ties pessimistic)."""
    relevance = _owner_relevance(caption_image, len(images))
    ranks, by_image = image_to_text_link_ranks(images, captions, relevance, check_chunk(chunk), similarity)
    return ndcg_at(ranks, by_image, k)


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
        raise UsageError(f"the gallery has {n_gallery} items, fewer than the {n_candidates} candidates asked for")
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
