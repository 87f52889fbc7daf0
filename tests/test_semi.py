"""stitch.semi: pseudo-pairs, self-learning from 10 seed pairs, zero-pair alignment, precision, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_flickr_like
from stitch import api
from stitch.apps.cli import main
from stitch.data import DataError, load_pairs, make_synthetic
from stitch.semi.pseudo import PseudoPairs, csls_mutual_pairs, pair_precision, sinkhorn_pairs
from stitch.semi.refine import raw_map
from stitch.semi.self_learning import SelfLearning, self_learn
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
    seed_only = self_learn(x[:10], y[:10], pool_x, pool_y, SelfLearning(rounds=0, alpha=1e-3))
    result = self_learn(x[:10], y[:10], pool_x, pool_y, SelfLearning(rounds=6, alpha=1e-3), truth)
    error = np.linalg.norm(_raw_weight(result) - r) / np.linalg.norm(r)
    assert np.linalg.norm(_raw_weight(seed_only) - r) / np.linalg.norm(r) > 0.3  # 10 pairs alone do not
    assert error < 0.05
    assert result.log[-1]["pseudo_pairs"] >= 900 and result.log[-1]["precision"] > 0.99
    assert [entry["round"] for entry in result.log] == list(range(7))


def test_self_learning_with_sinkhorn_pairs():
    x, y, r = _spectrum_set(610, seed=3)
    pool_x, pool_y, truth = _shuffled_pools(x, y, np.arange(10, 610))
    result = self_learn(x[:10], y[:10], pool_x, pool_y, SelfLearning(
        rounds=4, alpha=1e-3, matcher="sinkhorn", threshold=0.5, sinkhorn_iterations=30, chunk=128), truth)
    assert np.linalg.norm(_raw_weight(result) - r) / np.linalg.norm(r) < 0.05
    assert result.log[-1]["precision"] > 0.99


def test_zero_pair_mode_recovers_rotation():
    x, y, r = _cluster_set(2500)
    pool_x, pool_y, truth = _shuffled_pools(x, y, np.arange(2000))
    result = align_unpaired(pool_x, pool_y, SelfLearning(rounds=5, method="ridge", alpha=1e-3), 48, truth)
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
    settings = [SelfLearning(rounds=3, alpha=1e-3, pool_sample=500, seed=s) for s in (7, 7, 8)]
    runs = [self_learn(x[:10], y[:10], pool_x, pool_y, s, truth) for s in settings]
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
        self_learn(**args, settings=SelfLearning(rounds=1))


def test_wrong_dims_are_refused_naming_the_pool():
    x, y, _ = _spectrum_set(100)
    with pytest.raises(ValueError, match="image pool: rows have 31 dims, expected 32"):
        self_learn(x[:10], y[:10], x[10:], y[10:, :31], SelfLearning(rounds=1))
    with pytest.raises(ValueError, match="caption pool: rows have 32 dims, expected 31"):
        self_learn(x[:10, :31], y[:10], x[10:], y[10:], SelfLearning(rounds=1))
    with pytest.raises(ValueError, match="image pool: row 4 holds NaN or Inf"):
        align_unpaired(x, np.where(np.arange(100)[:, None] == 4, np.nan, y))
    with pytest.raises(ValueError, match="items: rows have 8 dims, expected 32"):
        csls_mutual_pairs(x, y[:, :8])


# -- inside training: pools read from files, the map set into the run, the rounds logged --------------------


def _pairs_and_pool(tmp_path, n_seed_images: int = 40):
    """Synthetic pairs holding a few train images and every dev image; the other train images (their captions
    and images, links dropped) as one paired npz the pools are read from."""
    data = make_synthetic(n_images=500, captions_per_image=3, text_dim=16, image_dim=24, latent_dim=6, seed=2)
    train, dev = np.flatnonzero(data.image_split == "train"), np.flatnonzero(data.image_split == "dev")
    pairs = data.subset_images(np.concatenate([train[:n_seed_images], dev]))
    pool = write_flickr_like(tmp_path / "pool.npz", data.subset_images(train[n_seed_images:]), images__split=None)
    return data, pairs, pool


def test_a_self_learning_run_holds_the_map_self_learning_fitted(tmp_path):
    """The run's raw-space prediction is the library's self-learning map, computed here independently from the
    same seed pairs and pools; the rounds (with precision, the pools' links being known) are in the run."""
    _, pairs, pool = _pairs_and_pool(tmp_path)
    overrides = ["model.name=self-learning", "model.init=ridge", "semi.rounds=2"]
    overrides += [f"semi.unpaired_captions={pool}", f"semi.unpaired_images={pool}"]
    result = api.train(pairs, None, out=tmp_path / "run", overrides=overrides, progress=False)
    train = pairs.split("train")
    pooled = load_pairs(pool)
    expected = self_learn(
        train.captions, train.images[train.caption_image], pooled.captions, pooled.images,
        SelfLearning(rounds=2, method="ridge", alpha=1.0, seed=0), pooled.caption_image,
    )  # fmt: skip
    weight, bias = raw_map(expected)
    probe = pairs.split("dev").captions[:7]
    want = probe.astype(np.float64) @ weight + bias
    got = api.predict(result.run, probe, target="point")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    rounds = api.open(tmp_path / "run").info.meta["self_learning"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["pseudo_pairs"] > 0 and 0 <= r["precision"] <= 1 for r in rounds[1:])
    assert [r["precision"] for r in rounds[1:]] == [r["precision"] for r in expected.log[1:]]


def test_a_pool_image_equal_to_a_dev_image_is_refused(tmp_path):
    data, pairs, _ = _pairs_and_pool(tmp_path)
    dev = pairs.split("dev")
    leaky = data.subset_images(np.flatnonzero(data.image_split == "train")[100:160])
    images = leaky.images.copy()
    images[5] = dev.images[3]
    pool = write_flickr_like(tmp_path / "leaky.npz", leaky, images__embeddings=images, images__split=None)
    overrides = ["model.name=self-learning", f"semi.unpaired_captions={pool}", f"semi.unpaired_images={pool}"]
    with pytest.raises(DataError, match=r"leaky\.npz: unpaired images: 1 row\(s\): 5 equal rows of the dev images"):
        api.train(pairs, None, overrides=overrides, progress=False)


def test_pool_captions_equal_to_dev_captions_are_left_out_and_said(tmp_path, caplog):
    """The same text on another picture gives the same caption embedding (Flickr8k has 47 such train captions
    among its dev captions): left out of the pool, whatever precision the copy was stored in, and logged."""
    from stitch.semi.pools import read_pools

    data, pairs, _ = _pairs_and_pool(tmp_path)
    dev = pairs.split("dev")
    leaky = data.subset_images(np.flatnonzero(data.image_split == "train")[100:160])
    captions = leaky.captions.copy()
    captions[[5, 9]] = dev.captions[[3, 4]].astype(np.float16).astype(np.float32)  # half-precision copies
    dev = dev.__class__(**{**dev.__dict__, "captions": dev.captions.astype(np.float16).astype(np.float32)})
    pool = write_flickr_like(tmp_path / "copies.npz", leaky, captions__embeddings=captions, images__split=None)
    pools = read_pools(str(pool), str(pool), data.text_dim, data.image_dim, dev)
    assert len(pools.captions) == leaky.n_captions - 2
    assert np.array_equal(pools.truth, np.delete(leaky.caption_image, [5, 9]))  # the links follow their rows
    assert "left out 2 row(s) equal to dev captions" in caplog.text
    everything = write_flickr_like(tmp_path / "dev.npz", dev, images__split=None)
    with pytest.raises(DataError, match="every row equals a dev caption"):
        read_pools(str(everything), str(pool), data.text_dim, data.image_dim, dev)


def test_the_cli_trains_the_self_learning_recipe_from_pool_files_and_records_them(tmp_path):
    _, pairs, pool = _pairs_and_pool(tmp_path)
    data = write_flickr_like(tmp_path / "pairs.npz", pairs)
    run = tmp_path / "run"
    train = ["train", "--data", str(data), "--recipe", "self-learning", "--out", str(run), "--quiet"]
    assert main([*train, "--unpaired-captions", str(pool), "--unpaired-images", str(pool)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["semi"]["unpaired_captions"] == str(pool)
    assert len(config["self_learning"]["rounds"]) == 4 and "unpaired captions" in config["self_learning"]["pools"]
    assert main(["train", "--data", str(data), "--recipe", "self-learning", "--out", str(tmp_path / "r2"), "-q"]) != 0


def test_self_learning_runs_are_reproducible(tmp_path):
    """A closed-form run has no checkpoint to resume: it is reproduced by running it again, bit for bit."""

    _, pairs, pool = _pairs_and_pool(tmp_path)
    overrides = ["model.name=self-learning", f"semi.unpaired_captions={pool}", f"semi.unpaired_images={pool}"]
    one = api.train(pairs, None, overrides=overrides, progress=False).run.model.state_dict()
    two = api.train(pairs, None, overrides=overrides, progress=False).run.model.state_dict()
    assert all(np.array_equal(one[k].numpy(), two[k].numpy()) for k in one)



def test_a_pool_file_with_a_nan_row_or_other_dims_is_refused_naming_the_file(tmp_path):
    from stitch.semi.pools import read_side

    rows = np.ones((6, 4), np.float32)
    np.save(tmp_path / "fine.npy", rows)
    rows[4, 1] = np.nan
    np.save(tmp_path / "captions.npy", rows)
    with pytest.raises(DataError, match=r"captions\.npy: unpaired captions has NaN/Inf values in 1 row\(s\): 4"):
        read_side(tmp_path / "captions.npy", "captions", 4)
    with pytest.raises(DataError, match=r"fine\.npy: unpaired images have 4 dims, the pairs' images have 5"):
        read_side(tmp_path / "fine.npy", "images", 5)
