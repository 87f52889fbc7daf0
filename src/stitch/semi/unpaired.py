"""Zero-pair alignment: anchors from the two pools' similarity structures, then iterated refits on
pseudo-pairs (the mini-vec2vec recipe: anchor matching, then iterated Procrustes).

With no pairs at all, the only signal is that the two spaces arrange the same kind of content alike.
Each pool is centred and scaled to unit RMS norm (so inner products are comparable across spaces of
different scales and dims) and clustered with k-means; the k x k Gram matrices of the two sets of
centroids are then matched (sorted-Gram-row descriptors, Hungarian, then ICP-style Procrustes/Hungarian
refinement) — a permutation under which centroid *i* of one space relates to the others as its
partner does in the other space. Procrustes on the matched centroids
gives the starting map; :func:`stitch.semi.self_learning.self_learn` refines it on pseudo-pairs.

This needs structure that pins the rotation down (clusters of uneven placement); on a distribution
with symmetries (an isotropic Gaussian) nothing can recover the map, and between two unrelated encoders
the structures only roughly agree, so expect weak results on real data.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from stitch.errors import UsageError
from stitch.semi.pseudo import DEFAULT_CHUNK, check_pool
from stitch.semi.self_learning import SelfLearning, SelfLearningResult, self_learn, zscore_stats
from stitch.translators.moments import PairMoments


def normalised_pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(x - mean) / scale`` with ``scale`` the RMS row norm of the centred pool, and mean and scale:
    a rotation-and-scale-free frame in which two spaces' Gram matrices can be compared."""
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(0)
    centred = x - mean
    scale = float(np.sqrt(np.mean(np.sum(centred**2, axis=1)))) or 1.0
    return centred / scale, mean, scale


def _sq_distances(x: np.ndarray, centres: np.ndarray, chunk: int) -> np.ndarray:
    out = np.empty((len(x), len(centres)))
    c2 = np.sum(centres**2, axis=1)
    for start in range(0, len(x), chunk):
        block = x[start : start + chunk]
        out[start : start + chunk] = np.sum(block**2, axis=1)[:, None] - 2 * block @ centres.T + c2[None, :]
    return np.maximum(out, 0)


def kmeans(
    x: np.ndarray, k: int, seed: int = 0, restarts: int = 4, iterations: int = 100, chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Centroids and labels of the best of ``restarts`` k-means++ runs (lowest inertia), seeded.

    Restarts matter here more than usual: the two spaces must land on the *same* partition for their
    centroids to correspond, and a local optimum in one space breaks that."""
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= len(x):
        raise UsageError(f"k-means: need 1 <= k <= rows ({len(x)}), got k={k}")
    rng = np.random.default_rng(seed)
    best = (np.inf, None, None)
    for _ in range(restarts):
        centres = [x[rng.integers(len(x))]]
        d2 = _sq_distances(x, np.array(centres), chunk)[:, 0]
        for _ in range(1, k):
            total = d2.sum()
            pick = rng.integers(len(x)) if total <= 0 else rng.choice(len(x), p=d2 / total)
            centres.append(x[pick])
            d2 = np.minimum(d2, _sq_distances(x, x[pick][None, :], chunk)[:, 0])
        centres = np.array(centres)
        labels = np.full(len(x), -1)
        for _ in range(iterations):
            dist = _sq_distances(x, centres, chunk)
            new = dist.argmin(1)
            if np.array_equal(new, labels):
                break
            labels = new
            counts = np.bincount(labels, minlength=k)
            sums = np.zeros_like(centres)
            np.add.at(sums, labels, x)
            empty = counts == 0
            centres = np.where(empty[:, None], centres, sums / np.maximum(counts, 1)[:, None])
        inertia = float(_sq_distances(x, centres, chunk)[np.arange(len(x)), labels].sum())
        if inertia < best[0]:
            best = (inertia, centres, labels)
    return best[1], best[2]


def match_structures(a: np.ndarray, b: np.ndarray, refinements: int = 20) -> np.ndarray:
    """``perm`` with ``b[perm[i]]`` the partner of ``a[i]`` (same row counts on both sides).

    Start: each row's descriptor is its Gram row sorted (its inner products with every row of its own
    set, largest first), which a rotation and a relabelling leave unchanged; the descriptors are matched
    by the Hungarian algorithm. Then, as in ICP, alternate a Procrustes rotation of ``a`` onto its
    partners with a Hungarian re-matching of the rotated rows, until the matching stops changing.
    (A quadratic-assignment solver (FAQ) on the Gram matrices stalled after two steps in trials.)"""
    from scipy.optimize import linear_sum_assignment  # only the zero-pair mode needs scipy

    if len(a) != len(b):
        raise UsageError(f"structures to match need the same number of rows, got {len(a)} and {len(b)}")
    da, db = (-np.sort(-(m @ m.T), axis=1) for m in (a, b))
    _, perm = linear_sum_assignment(_sq_distances(da, db, DEFAULT_CHUNK))
    for _ in range(refinements):
        rotation, _ = PairMoments.of(a, b[perm]).procrustes()
        _, new = linear_sum_assignment(_sq_distances(a @ rotation, b, DEFAULT_CHUNK))
        if np.array_equal(new, perm):
            break
        perm = new
    return np.asarray(perm)


def anchor_map(
    pool_x: np.ndarray, pool_y: np.ndarray, clusters: int = 32, seed: int = 0, restarts: int = 8
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A starting map ``y ~ x @ W + b`` in the raw spaces from matched k-means centroids, and what it used.

    The fit is Procrustes in the normalised frames (a rotation is all the structure can justify),
    carried back to raw coordinates: ``y = my + sy * ((x - mx) / sx) W'``."""
    nx, mx, sx = normalised_pool(pool_x)
    ny, my, sy = normalised_pool(pool_y)
    cx, _ = kmeans(nx, clusters, seed=seed, restarts=restarts)
    cy, _ = kmeans(ny, clusters, seed=seed + 1, restarts=restarts)
    perm = match_structures(cx, cy)
    w_norm, _ = PairMoments.of(cx, cy[perm]).procrustes()
    weight = w_norm * (sy / sx)
    bias = my - mx @ weight
    return weight, bias, {"clusters": clusters, "perm": perm}


ZERO_PAIR = SelfLearning(rounds=10, method="procrustes")  # a rotation cannot overfit wrong early pseudo-pairs


def align_unpaired(
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    settings: SelfLearning = ZERO_PAIR,
    clusters: int = 32,
    truth: np.ndarray | None = None,
) -> SelfLearningResult:
    """Zero-pair mode: :func:`anchor_map`, moved into the z-scored image space of the image pool, then
    ``settings.rounds`` of self-learning on pseudo-pairs between the pools (Procrustes by default, which cannot
    overfit wrong early pseudo-pairs the way an unconstrained ridge can)."""
    pool_x = check_pool("caption pool", pool_x)
    pool_y = check_pool("image pool", pool_y)
    weight, bias, _ = anchor_map(pool_x, pool_y, clusters=clusters, seed=settings.seed)
    mean, std = zscore_stats([pool_y])
    w_z = weight / std[None, :]
    b_z = (bias - mean) / std
    pooled = replace(settings, zscore_with_pool=True)  # the start map lives in the image pool's z-space
    return self_learn(None, None, pool_x, pool_y, pooled, truth=truth, init=(w_z, b_z))
