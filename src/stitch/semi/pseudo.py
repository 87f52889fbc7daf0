"""Pseudo-pairs between a pool of translated queries and a pool of items living in one space.

Two ways of deciding which unpaired query goes with which unpaired item, both chunked over query rows
(``chunk`` rows at a time) so that a 30k x 6k pool never needs a float64 similarity matrix:

* :func:`csls_mutual_pairs` — mutual nearest neighbours under CSLS (Conneau et al. 2018, k=10). Plain
  cosine nearest neighbours are dominated by hubs (a few items close to everything); CSLS subtracts each
  side's mean similarity to its k nearest neighbours, and mutuality keeps only pairs both sides agree on.
  The confidence is the CSLS margin between a query's best and second-best item.
* :func:`sinkhorn_pairs` — an entropic optimal-transport plan (Sinkhorn, log domain) with uniform
  marginals: every item must receive its share of the queries, which is the global counterpart of the
  hubness correction. A query's confidence is the fraction of its mass on its best item.

Both return :class:`PseudoPairs` (query rows, item rows, confidences, best first).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stitch.errors import UsageError

DEFAULT_CHUNK = 4096


@dataclass
class PseudoPairs:
    """Index pairs ``(rows[i], cols[i])`` (query row, item row) with a confidence each, best first."""

    rows: np.ndarray
    cols: np.ndarray
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def empty(cls) -> PseudoPairs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64))

    def kept(self, threshold: float, max_pairs: int | None) -> PseudoPairs:
        """The pairs at or above ``threshold``, best first, at most ``max_pairs`` of them.

        Sorting by confidence (ties broken by query row, so the result never depends on the sort's
        stability) makes the cap keep the surest pairs, which is what self-learning needs early on."""
        keep = self.scores >= threshold
        rows, cols, scores = self.rows[keep], self.cols[keep], self.scores[keep]
        order = np.lexsort((rows, -scores))
        if max_pairs is not None:
            order = order[: max(int(max_pairs), 0)]
        return PseudoPairs(rows[order], cols[order], scores[order])


def check_pool(name: str, x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``x`` as a finite 2-D float array, or a ValueError naming the pool and the first bad row.

    Pools come from files nobody paired by hand; a NaN row would silently become every query's
    nearest neighbour (or poison a Sinkhorn plan), so it is refused with where it sits."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise UsageError(f"{name}: expected a 2-D array (rows x dims), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise UsageError(f"{name}: rows have {x.shape[1]} dims, expected {dim}")
    if not np.issubdtype(x.dtype, np.number):
        raise UsageError(f"{name}: expected numbers, got dtype {x.dtype}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise UsageError(f"{name}: row {row} holds NaN or Inf ({int(bad.sum())} such rows)")
    return x


def _unit(x: np.ndarray) -> torch.Tensor:
    """Rows scaled to unit length (float32 torch: the similarities only rank, float32 suffices)."""
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _as_tensors(queries: np.ndarray, items: np.ndarray, normalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
    queries, items = check_pool("queries", queries), check_pool("items", items)
    if queries.shape[1] != items.shape[1]:
        raise UsageError(f"items: rows have {items.shape[1]} dims, expected {queries.shape[1]} (the queries')")
    if normalized:
        return torch.as_tensor(queries, dtype=torch.float32), torch.as_tensor(items, dtype=torch.float32)
    return _unit(queries), _unit(items)


def _chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


def csls_mutual_pairs(
    queries: np.ndarray,
    items: np.ndarray,
    k: int = 10,
    threshold: float = 0.0,
    max_pairs: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    normalized: bool = False,
) -> PseudoPairs:
    """Mutual nearest neighbours under CSLS, with the CSLS margin as confidence.

    ``CSLS(q, x) = 2 cos(q, x) - r_items(q) - r_queries(x)`` where ``r`` is the mean cosine to the k
    nearest rows of the other pool. A pair is kept when the query's best item has that query as its best
    query, and the margin (best minus second-best CSLS of the query) is at least ``threshold``.
    ``normalized=True`` says the rows' dot products already are the cosines (the caller factorised them).
    Two passes over query chunks: the first gathers both sides' k-NN means (items' by a running top-k),
    the second takes argmaxes; cosine chunks from the first pass are kept (float32) for the second."""
    q, x = _as_tensors(queries, items, normalized)
    n, m = len(q), len(x)
    if n == 0 or m == 0:
        return PseudoPairs.empty()
    kq, kx = min(k, m), min(k, n)
    r_q = torch.empty(n)
    top_x = torch.full((m, kx), -float("inf"))
    cached = []
    for start, stop in _chunks(n, chunk):
        sims = q[start:stop] @ x.T
        r_q[start:stop] = sims.topk(kq, dim=1).values.mean(1)
        top_x = torch.cat([top_x, sims.T.topk(min(kx, stop - start), dim=1).values], 1).topk(kx, dim=1).values
        cached.append(sims)
    r_x = top_x.mean(1)
    best_item = torch.empty(n, dtype=torch.long)
    margin = torch.empty(n, dtype=torch.float64)
    item_best_val = torch.full((m,), -float("inf"))
    item_best_query = torch.zeros(m, dtype=torch.long)
    for (start, stop), sims in zip(_chunks(n, chunk), cached):
        csls = 2 * sims - r_q[start:stop, None] - r_x[None, :]
        if m > 1:
            top = csls.topk(2, dim=1)
            margin[start:stop] = (top.values[:, 0] - top.values[:, 1]).double()
            best_item[start:stop] = top.indices[:, 0]
        else:
            margin[start:stop] = float("inf")
            best_item[start:stop] = 0
        val, idx = csls.max(dim=0)
        better = val > item_best_val
        item_best_val = torch.where(better, val, item_best_val)
        item_best_query = torch.where(better, idx + start, item_best_query)
    del cached
    rows = torch.arange(n)
    mutual = item_best_query[best_item] == rows
    pairs = PseudoPairs(rows[mutual].numpy().astype(np.int64), best_item[mutual].numpy().astype(np.int64),
                        margin[mutual].numpy())
    return pairs.kept(threshold, max_pairs)


def sinkhorn_pairs(
    queries: np.ndarray,
    items: np.ndarray,
    epsilon: float = 0.02,
    iterations: int = 50,
    threshold: float = 0.5,
    max_pairs: int | None = None,
    chunk: int = DEFAULT_CHUNK,
    normalized: bool = False,
) -> PseudoPairs:
    """Each query's best item under an entropic OT plan with uniform marginals, confidence = the share of
    the query's mass on that item (in [0, 1]); kept when at least ``threshold``.

    The plan is ``log P = u_i + v_j + cos_ij / epsilon`` with the potentials found by alternating
    log-sum-exp updates (stable for small ``epsilon``). The item-side update needs a sum over all
    queries; it is accumulated chunk by chunk with ``logaddexp``. Potentials are float64 (they add up
    over tens of thousands of terms) while each chunk's log-sum-exp runs in float32 on the kept float32 logits
(its terms are within ``2 / epsilon`` of each other, far inside float32's range), which is 2-3x faster."""
    q, x = _as_tensors(queries, items, normalized)
    n, m = len(q), len(x)
    if n == 0 or m == 0:
        return PseudoPairs.empty()
    if epsilon <= 0:
        raise UsageError(f"epsilon must be positive, got {epsilon}")
    logits = [(q[start:stop] @ x.T) / epsilon for start, stop in _chunks(n, chunk)]
    log_a, log_b = -np.log(n), -np.log(m)
    u = torch.zeros(n, dtype=torch.float64)
    v = torch.zeros(m, dtype=torch.float64)
    spans = list(_chunks(n, chunk))
    for _ in range(iterations):
        v32 = v.float()
        for (start, stop), block in zip(spans, logits):
            u[start:stop] = log_a - torch.logsumexp(block + v32[None, :], dim=1).double()
        acc = torch.full((m,), -float("inf"), dtype=torch.float64)
        for (start, stop), block in zip(spans, logits):
            acc = torch.logaddexp(acc, torch.logsumexp(block + u[start:stop, None].float(), dim=0).double())
        v = log_b - acc
    best_item = torch.empty(n, dtype=torch.long)
    share = torch.empty(n, dtype=torch.float64)
    for (start, stop), block in zip(spans, logits):
        log_plan = block.double() + u[start:stop, None] + v[None, :]
        top, idx = log_plan.max(dim=1)
        share[start:stop] = torch.exp(top - torch.logsumexp(log_plan, dim=1))
        best_item[start:stop] = idx
    pairs = PseudoPairs(np.arange(n, dtype=np.int64), best_item.numpy().astype(np.int64), share.numpy())
    return pairs.kept(threshold, max_pairs)


def pair_precision(pairs: PseudoPairs, truth: np.ndarray) -> float:
    """Share of pseudo-pairs whose item is the query's true item (NaN when there are none).

    ``truth[query row]`` is the true item row, or -1 when the true item is not in the pool: such a
    query's pseudo-pair is always wrong (it had no right answer to find), so it counts against."""
    truth = np.asarray(truth)
    if len(pairs) == 0:
        return float("nan")
    if pairs.rows.max() >= len(truth):
        raise UsageError(f"truth: has {len(truth)} rows, but a pseudo-pair names query row {int(pairs.rows.max())}")
    return float(np.mean(truth[pairs.rows] == pairs.cols))
