"""Self-learning alignment: a linear map fitted on a few seed pairs, refitted on pseudo-pairs drawn
among unpaired pools of captions and images (Artetxe et al. 2017; MUSE's refinement).

Each round translates the caption pool into the z-scored image space, pairs it with the image pool
(:mod:`stitch.semi.pseudo`), and refits the map on the seed pairs plus the pseudo-pairs at a weight.
Closed forms only: every refit is one pass of moments (:class:`PairMoments`), so a round costs a
similarity pass over the pools, not a training run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from stitch.errors import UsageError
from stitch.semi.pseudo import DEFAULT_CHUNK, PseudoPairs, check_pool, csls_mutual_pairs, pair_precision, sinkhorn_pairs
from stitch.translators.moments import ColumnMoments, PairMoments

METHODS = ("ridge", "procrustes")
MATCHERS = ("csls", "sinkhorn")


@dataclass
class SelfLearningResult:
    """The final map ``z = x @ weight + bias`` into the z-scored image space ``(y - mean) / std``, one dict
    per round (``round``, ``pseudo_pairs``, ``precision`` (NaN without a truth), ...) and the last round's
    pseudo-pairs (caption pool row, image pool row), which the final map was refitted on."""

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    log: list[dict] = field(default_factory=list)
    pairs: PseudoPairs = field(default_factory=PseudoPairs.empty)

    def translate(self, x: np.ndarray) -> np.ndarray:
        """Predictions in the z-scored image space (score them by cosine against z-scored images)."""
        return np.asarray(x, dtype=np.float64) @ self.weight + self.bias

    def direction(self, x: np.ndarray) -> np.ndarray:
        """The raw-space direction ``unit(z) / std``: a raw image's dot product with it ranks images as the
        z-scored cosine does up to the per-image norm (what a grader scoring raw images sees)."""
        z = self.translate(x)
        return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12) / self.std


def weighted_moments(x: np.ndarray, y: np.ndarray, weight: float) -> PairMoments:
    """Moments of pairs each counted ``weight`` times: scaling the count and the centred products is
    exactly a weighted least-squares fit once merged with other moments (Chan's update takes real counts)."""
    m = PairMoments.of(x, y)
    return PairMoments(m.n * weight, m.x_mean, m.y_mean, m.xx * weight, m.xy * weight)


def fit_linear(moments: PairMoments, method: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(weight, bias)`` of ridge (``alpha``) or scaled orthogonal Procrustes on the given moments."""
    if method == "ridge":
        return moments.ridge(alpha)
    if method == "procrustes":
        return moments.procrustes()
    raise UsageError(f"method must be one of {METHODS}, got {method!r}")


def zscore_stats(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (floored at 1e-6, as :class:`Standardizer`) over all given image rows: loose images
    are as good as paired ones for the statistics of the image space, and there are many more."""
    moments = ColumnMoments.of_chunks([np.asarray(y, dtype=np.float64) for y in images if len(y)])
    return moments.mean, np.maximum(moments.std, 1e-6)


def factorised_cosines(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, items: np.ndarray):
    """Rows ``(a, b)`` whose dot products ``a_i . b_j`` are ``cos(x_i W + bias, items_j)``.

    The translated queries span at most ``d_x + 1`` dims of the image space, so ``q . y = [x, 1] . ([W; b] y)``:
    when ``d_x + 1 < d_y`` (384 -> 1024 here) the similarity passes run in the smaller space, ~2.7x
    cheaper, with the norms still taken in the full space."""
    x = np.asarray(x, dtype=np.float64)
    w_aug = np.vstack([weight, bias[None, :]])
    norms_x = np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", x, weight @ weight.T, x) + 2 * x @ (weight @ bias)
                                 + bias @ bias, 1e-24))
    norms_y = np.maximum(np.linalg.norm(items, axis=1), 1e-12)
    if w_aug.shape[0] >= w_aug.shape[1]:
        q = x @ weight + bias
        return q / norms_x[:, None], items / norms_y[:, None]
    x_aug = np.hstack([x, np.ones((len(x), 1))])
    return x_aug / norms_x[:, None], (items @ w_aug.T) / norms_y[:, None]


def draw_pairs(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray, items: np.ndarray, matcher: str, **options
) -> PseudoPairs:
    """Pseudo-pairs between the captions ``x`` translated by ``(weight, bias)`` and the (z-scored) ``items``."""
    a, b = factorised_cosines(x, weight, bias, items)
    if matcher == "csls":
        return csls_mutual_pairs(a, b, normalized=True, **options)
    if matcher == "sinkhorn":
        return sinkhorn_pairs(a, b, normalized=True, **options)
    raise UsageError(f"matcher must be one of {MATCHERS}, got {matcher!r}")


def _check_inputs(seed_x, seed_y, pool_x, pool_y, truth):
    """Every array finite and 2-D, dims checked against the seed pairs when there are any (the pairs are
    the trusted side), else against each other's pool; errors name the array and the row."""
    if seed_x is None or len(seed_x) == 0:
        pool_x = check_pool("caption pool", pool_x)
        pool_y = check_pool("image pool", pool_y)
        seed_x, seed_y = np.zeros((0, pool_x.shape[1])), np.zeros((0, pool_y.shape[1]))
    else:
        seed_x = check_pool("seed captions", seed_x)
        seed_y = check_pool("seed images", seed_y)
        pool_x = check_pool("caption pool", pool_x, seed_x.shape[1])
        pool_y = check_pool("image pool", pool_y, seed_y.shape[1])
    if len(seed_x) != len(seed_y):
        raise UsageError(f"seed pairs: {len(seed_x)} captions but {len(seed_y)} images")
    if truth is not None:
        truth = np.asarray(truth)
        if truth.shape != (len(pool_x),):
            raise UsageError(f"truth: expected one entry per caption pool row ({len(pool_x)}), got shape {truth.shape}")
        if truth.max(initial=-1) >= len(pool_y) or truth.min(initial=-1) < -1:
            raise UsageError(f"truth: entries must be image pool rows (0..{len(pool_y) - 1}) or -1")
    return seed_x, seed_y, pool_x, pool_y, truth


def _start_map(init, seed_moments: PairMoments | None, method: str, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The map round 1 translates with: ``init`` when given, else the fit on the seed pairs."""
    if init is not None:
        weight, bias = (np.asarray(p, dtype=np.float64) for p in init)
        return weight, bias
    if seed_moments is None:
        raise UsageError("self-learning needs seed pairs or an initial map (init)")
    return fit_linear(seed_moments, method, alpha)


def _round_log(r: int, pairs: PseudoPairs, truth: np.ndarray | None, started: float) -> dict:
    """One round's line of the log: how many pseudo-pairs, how precise (when the truth is known)."""
    return {
        "round": r,
        "pseudo_pairs": len(pairs),
        "precision": pair_precision(pairs, truth) if truth is not None else float("nan"),
        "mean_score": float(pairs.scores.mean()) if len(pairs) else float("nan"),
        "seconds": time.perf_counter() - started,
    }


@dataclass(frozen=True)
class SelfLearning:
    """How self-learning runs: ``rounds`` refits of ``method`` (ridge with ``alpha``, or procrustes) on the seed
    pairs plus pseudo-pairs drawn by ``matcher`` (CSLS mutual neighbours with ``k``, or a Sinkhorn plan with
    ``epsilon`` and ``sinkhorn_iterations``), kept above ``threshold`` (at most ``max_pairs``) and weighted
    ``pseudo_weight``; ``pool_sample`` caption pool rows a round (seeded by ``seed``), None for all."""

    rounds: int = 5
    method: str = "ridge"
    alpha: float = 1.0
    matcher: str = "csls"
    pseudo_weight: float = 1.0
    threshold: float = 0.0
    max_pairs: int | None = None
    k: int = 10
    epsilon: float = 0.02
    sinkhorn_iterations: int = 50
    pool_sample: int | None = None
    zscore_with_pool: bool = True
    seed: int = 0
    chunk: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise UsageError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.matcher not in MATCHERS:
            raise UsageError(f"matcher must be one of {MATCHERS}, got {self.matcher!r}")
        if self.pseudo_weight <= 0:
            raise UsageError(f"pseudo_weight must be positive, got {self.pseudo_weight}")


def self_learn(
    seed_x: np.ndarray | None,
    seed_y: np.ndarray | None,
    pool_x: np.ndarray,
    pool_y: np.ndarray,
    settings: SelfLearning | None = None,
    truth: np.ndarray | None = None,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> SelfLearningResult:
    """Fit on the seed pairs, then ``settings.rounds`` times: draw pseudo-pairs, refit on seed + pseudo-pairs.

    Captions are used as given; images are z-scored with statistics of the seed images and (with
    ``zscore_with_pool``) the image pool. ``init`` (a map in that z-scored space) replaces the seed fit,
    which is how the zero-pair mode starts; without seed pairs and without ``init`` there is nothing to
    start from. ``truth[caption pool row]`` is its image pool row or -1; with it each round logs the
    pseudo-pairs' precision. The log's round 0 is the start map (no pseudo-pairs)."""
    s = settings or SelfLearning()
    seed_x, seed_y, pool_x, pool_y, truth = _check_inputs(seed_x, seed_y, pool_x, pool_y, truth)
    rng = np.random.default_rng(s.seed)
    mean, std = zscore_stats([seed_y, pool_y] if s.zscore_with_pool else [seed_y])
    seed_z = (np.asarray(seed_y, dtype=np.float64) - mean) / std
    pool_z = (np.asarray(pool_y, dtype=np.float64) - mean) / std
    seed_moments = PairMoments.of(seed_x, seed_z) if len(seed_x) else None
    weight, bias = _start_map(init, seed_moments, s.method, s.alpha)
    log = [{"round": 0, "pseudo_pairs": 0, "precision": float("nan"), "mean_score": float("nan"), "seconds": 0.0}]
    options = {"max_pairs": s.max_pairs, "threshold": s.threshold, "chunk": s.chunk}
    options.update({"k": s.k} if s.matcher == "csls" else {"epsilon": s.epsilon, "iterations": s.sinkhorn_iterations})
    pairs = PseudoPairs.empty()
    for r in range(1, s.rounds + 1):
        started = time.perf_counter()
        rows = np.arange(len(pool_x))
        if s.pool_sample is not None and s.pool_sample < len(pool_x):
            rows = np.sort(rng.choice(len(pool_x), size=s.pool_sample, replace=False))
        pairs = draw_pairs(pool_x[rows], weight, bias, pool_z, s.matcher, **options)
        pairs = PseudoPairs(rows[pairs.rows], pairs.cols, pairs.scores)
        if len(pairs):
            pseudo = weighted_moments(pool_x[pairs.rows], pool_z[pairs.cols], s.pseudo_weight)
            moments = pseudo if seed_moments is None else seed_moments.merge(pseudo)
            weight, bias = fit_linear(moments, s.method, s.alpha)
        log.append(_round_log(r, pairs, truth, started))
    return SelfLearningResult(weight, bias, mean, std, log, pairs)
