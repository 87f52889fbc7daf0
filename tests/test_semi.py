"""stitch.semi: pseudo-pairs, self-learning from 10 seed pairs, zero-pair alignment, precision, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from stitch.semi.pseudo import PseudoPairs, csls_mutual_pairs, pair_precision, sinkhorn_pairs
from stitch.semi.self_learning import self_learn
from stitch.semi.unpaired import align_unpaired

DIM = 32


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return q * np.sign(np.diag(r))


def _spectrum_set(n: int, seed: int = 0, noise: float = 0.01):
    """Anisotropic Gaussian captions (stds 1 -> 0.1), images = captions @ R + noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, DIM)) * np.geomspace(1.0, 0.1, DIM)
    r = _rotation(rng)
    return x, x @ r + noise * rng.standard_normal((n, DIM)), r


def _cluster_set(n: int, seed: int = 0, clusters: int = 48, noise: float = 0.01):
    """A mixture of well-separated clusters (more centres than dims, so their layout pins R down),
    images = captions @ R + noise. An isotropic Gaussian would leave R undetermined without pairs."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    labels = rng.choice(clusters, size=n, p=rng.dirichlet(np.full(clusters, 30.0)))
    x = centres[labels] + 0.15 * rng.standard_normal((n, DIM))
    r = _rotation(rng)
    return x, x @ r + noise * rng.standard_normal((n, DIM)), r


def _shuffled_pools(x, y, rows, seed=1):
    """Caption pool in order, image pool shuffled (links dropped); truth[caption row] = image pool row."""
    perm = np.random.default_rng(seed).permutation(len(rows))
    return x[rows], y[rows][perm], np.argsort(perm)


def _raw_weight(result) -> np.ndarray:
    """The map in raw image units: z = x W + b with z = (y - mean) / std, so y = x (W * std) + ..."""
    return result.weight * result.std[None, :]


def _top1(result, x, y) -> float:
    z = result.translate(x)
    g = (y - result.mean) / result.std
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return float(np.mean((z @ g.T).argmax(1) == np.arange(len(x))))


def test_self_learning_from_ten_pairs_recovers_rotation():
    x, y, r = _spectrum_set(1010)
    pool_x, pool_y, truth = _shuffled_pools(x, y, np.arange(10, 1010))
    seed_only = self_learn(x[:10], y[:10], pool_x, pool_y, rounds=0, alpha=1e-3)
    result = self_learn(x[:10], y[:10], pool_x, pool_y, rounds=6, alpha=1e-3, truth=truth)
    error = np.linalg.norm(_raw_weight(result) - r) / np.linalg.norm(r)
    assert np.linalg.norm(_raw_weight(seed_only) - r) / np.linalg.norm(r) > 0.3  # 10 pairs alone do not
    assert error < 0.05
    assert result.log[-1]["pseudo_pairs"] >= 900 and result.log[-1]["precision"] > 0.99
    assert [entry["round"] for entry in result.log] == list(range(7))


def test_self_learning_with_sinkhorn_pairs():
    x, y, r = _spectrum_set(610, seed=3)
    pool_x, pool_y, truth = _shuffled_pools(x, y, np.arange(10, 610))
    result = self_learn(x[:10], y[:10], pool_x, pool_y, rounds=4, alpha=1e-3, truth=truth, matcher="sinkhorn",
                        threshold=0.5, sinkhorn_iterations=30, chunk=128)
    assert np.linalg.norm(_raw_weight(result) - r) / np.linalg.norm(r) < 0.05
    assert result.log[-1]["precision"] > 0.99


def test_zero_pair_mode_recovers_rotation():
    x, y, r = _cluster_set(2500)
    pool_x, pool_y, truth = _shuffled_pools(x, y, np.arange(2000))
    result = align_unpaired(pool_x, pool_y, clusters=48, rounds=5, method="ridge", alpha=1e-3, truth=truth)
    held = np.arange(2000, 2500)
    assert _top1(result, x[held], y[held]) > 0.9
    assert np.linalg.norm(_raw_weight(result) - r) / np.linalg.norm(r) < 0.05
    assert result.log[-1]["precision"] > 0.95


def test_precision_counts_missing_truth_as_wrong():
    truth = np.array([2, -1, 0, 1, -1, 3])
    pairs = PseudoPairs(np.array([0, 1, 2, 3, 5]), np.array([2, 0, 1, 1, 3]), np.ones(5))
    # row 0 -> 2 right, row 1 has no true image (-1) so wrong, row 2 -> 1 wrong, row 3 -> 1 right, row 5 -> 3 right
    assert pair_precision(pairs, truth) == pytest.approx(3 / 5)
    assert np.isnan(pair_precision(PseudoPairs.empty(), truth))


def test_csls_mutual_pairs_chunked_equals_whole_and_respects_cap():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((300, 16))
    items = q[rng.permutation(300)[:200]] + 0.05 * rng.standard_normal((200, 16))
    whole = csls_mutual_pairs(q, items, chunk=4096)
    chunked = csls_mutual_pairs(q, items, chunk=37)
    np.testing.assert_array_equal(whole.rows, chunked.rows)
    np.testing.assert_array_equal(whole.cols, chunked.cols)
    assert len(whole) >= 190
    capped = csls_mutual_pairs(q, items, max_pairs=50, chunk=37)
    assert len(capped) == 50 and capped.scores.min() >= whole.scores[49] - 1e-9
    assert len(csls_mutual_pairs(q, items, threshold=np.inf)) == 0
    plan = sinkhorn_pairs(q, items, chunk=37)
    assert np.all(plan.scores >= 0.5) and np.all(np.diff(plan.scores) <= 0)


def test_self_learning_is_deterministic_with_a_seed():
    x, y, _ = _spectrum_set(1010, seed=5)
    pool_x, pool_y, truth = _shuffled_pools(x, y, np.arange(10, 1010))
    runs = [self_learn(x[:10], y[:10], pool_x, pool_y, rounds=3, alpha=1e-3, pool_sample=500, seed=s, truth=truth)
            for s in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0].weight, runs[1].weight)
    np.testing.assert_array_equal(runs[0].bias, runs[1].bias)
    assert [e["pseudo_pairs"] for e in runs[0].log] == [e["pseudo_pairs"] for e in runs[1].log]
    assert not np.array_equal(runs[0].weight, runs[2].weight)  # the seed does pick the pool sample


@pytest.mark.parametrize(
    ("which", "message"),
    [("pool_x", "caption pool: row 7 holds NaN"), ("pool_y", "image pool: row 7 holds NaN"),
     ("seed_x", "seed captions: row 7 holds NaN")],
)
def test_non_finite_rows_are_refused_by_pool_and_row(which, message):
    x, y, _ = _spectrum_set(100)
    args = {"seed_x": x[:10].copy(), "seed_y": y[:10], "pool_x": x[10:].copy(), "pool_y": y[10:].copy()}
    args[which][7, 3] = np.inf if which == "pool_y" else np.nan
    with pytest.raises(ValueError, match=message.replace("NaN", "NaN or Inf")):
        self_learn(**args, rounds=1)


def test_wrong_dims_are_refused_naming_the_pool():
    x, y, _ = _spectrum_set(100)
    with pytest.raises(ValueError, match="image pool: rows have 31 dims, expected 32"):
        self_learn(x[:10], y[:10], x[10:], y[10:, :31], rounds=1)
    with pytest.raises(ValueError, match="caption pool: rows have 32 dims, expected 31"):
        self_learn(x[:10, :31], y[:10], x[10:], y[10:], rounds=1)
    with pytest.raises(ValueError, match="image pool: row 4 holds NaN or Inf"):
        align_unpaired(x, np.where(np.arange(100)[:, None] == 4, np.nan, y))
    with pytest.raises(ValueError, match="items: rows have 8 dims, expected 32"):
        csls_mutual_pairs(x, y[:, :8])
