"""Unpaired pools in a learnt recipe's training: pseudo-pairs in its batches at a weight, the neighbourhood
regulariser, the rounds in metrics.csv and the report, resuming, and the curve's ``RECIPE+pools`` methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import write_flickr_like
from stitch import api
from stitch.data import make_synthetic
from stitch.losses import CosineLoss, InfoNCELoss, MSELoss, NeighbourhoodLoss, SigLIPLoss, build_loss
from stitch.training import RunError, load_config, train
from stitch.training.batching import CaptionBatches, PooledBatches, PoolRows
from stitch.training.run import Run, epoch_rows, round_rows_of
from stitch.training.trainer import DevEvaluator

SMALL = ["model.hidden=32", "model.dropout=0.1", "optim.batch_size=32", "loss.queue_size=64", "optim.lr=2e-3"]


def _pairs_and_pool(tmp_path, n_seed_images: int = 40):
    """Synthetic pairs holding a few train images and every dev image; the other train images (captions and
    images, links dropped) as one paired npz, so the pools' true links are known."""
    data = make_synthetic(n_images=500, captions_per_image=3, text_dim=16, image_dim=24, latent_dim=6, seed=2)
    train_rows, dev = np.flatnonzero(data.image_split == "train"), np.flatnonzero(data.image_split == "dev")
    pairs = data.subset_images(np.concatenate([train_rows[:n_seed_images], dev]))
    pool = write_flickr_like(tmp_path / "pool.npz", data.subset_images(train_rows[n_seed_images:]), images__split=None)
    return pairs, pool


def _pooled(pool, *more: str) -> list[str]:
    return [*SMALL, f"semi.unpaired_captions={pool}", f"semi.unpaired_images={pool}", *more]


# -- the regulariser and weighted losses, against independent computations ---------------------------------------


def _softmax_rows_without_diagonal(x: np.ndarray, temperature: float) -> np.ndarray:
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    logits = unit @ unit.T / temperature
    np.fill_diagonal(logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def test_the_neighbourhood_regulariser_is_the_mean_kl_of_softmaxed_similarity_rows():
    rng = np.random.default_rng(0)
    before, after = rng.standard_normal((9, 5)), rng.standard_normal((9, 7))
    p, q = _softmax_rows_without_diagonal(before, 0.2), _softmax_rows_without_diagonal(after, 0.2)
    off = ~np.eye(9, dtype=bool)
    want = 0.5 * np.mean(np.sum(np.where(off, p * (np.log(np.where(off, p, 1)) - np.log(np.where(off, q, 1))), 0), 1))
    loss = NeighbourhoodLoss(weight=0.5, temperature=0.2)
    got = loss(torch.tensor(before, dtype=torch.float32), torch.tensor(after, dtype=torch.float32, requires_grad=True))
    assert got.item() == pytest.approx(want, rel=1e-5) and want > 0
    # a map that keeps every cosine (a rotation and a scale) keeps every neighbourhood: nothing to pay
    rotation, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    kept = torch.tensor(3 * before @ rotation, dtype=torch.float32)
    assert loss(torch.tensor(before, dtype=torch.float32), kept).item() == pytest.approx(0, abs=1e-5)
    built = NeighbourhoodLoss.from_config(load_config(None, ["semi.neighbour_weight=2"]).semi)
    assert (built.weight, built.temperature) == (2.0, 0.1)


@pytest.mark.parametrize(
    "loss",
    [
        InfoNCELoss(0.1, symmetric=False),
        SigLIPLoss(0.1, chunk=3),
        MSELoss(),
        CosineLoss(),
        build_loss("infonce", dim=4, symmetric=False, queue_size=8).eval(),  # eval: nothing enqueued between calls
    ],
    ids=["infonce", "siglip", "mse", "cosine", "infonce-in-queue-wrapper"],
)
def test_a_row_weighted_w_counts_as_the_row_repeated_w_times(loss):
    """Whole-number weights against rows repeated that many times: the weighted mean is the plain mean."""
    rng = np.random.default_rng(1)
    queries, images = torch.tensor(rng.standard_normal((6, 4)), dtype=torch.float32), None
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    weights = torch.tensor([1.0, 3.0, 1.0, 2.0, 1.0, 4.0])
    images = torch.tensor(rng.standard_normal((6, 4)), dtype=torch.float32)
    repeat = torch.repeat_interleave(torch.arange(6), weights.long())
    assert loss.supports_weights
    if loss.needs_aligned_targets:
        weighted = loss(queries, labels, None, images, labels, weights=weights)
        repeated = loss(queries[repeat], labels[repeat], None, images[repeat], labels[repeat])
    else:
        weighted = loss(queries, labels, None, images, labels, weights=weights)
        repeated = loss(queries[repeat], labels[repeat], None, images, labels)
    assert weighted.item() == pytest.approx(repeated.item(), rel=1e-5)
    ones = loss(queries, labels, None, images, labels, weights=torch.ones(6))
    assert ones.item() == pytest.approx(loss(queries, labels, None, images, labels).item(), rel=1e-6)


def test_symmetric_infonce_weighs_an_image_row_as_its_captions():
    """The image->text half: image 0's row counts 3 when its only caption does."""
    rng = np.random.default_rng(2)
    q, g = (torch.tensor(rng.standard_normal((4, 5)), dtype=torch.float32) for _ in range(2))
    labels, weights = torch.arange(4), torch.tensor([3.0, 1.0, 1.0, 1.0])
    loss = InfoNCELoss(0.1, learnable=False)
    logits = 10 * torch.nn.functional.normalize(q) @ torch.nn.functional.normalize(g).T
    t2i = -torch.log_softmax(logits, 1).diagonal()
    i2t = -torch.log_softmax(logits.T, 1).diagonal()
    want = ((weights * t2i).sum() / 6 + (weights * i2t).sum() / 6) / 2
    assert loss(q, labels, None, g, labels, weights=weights).item() == pytest.approx(want.item(), rel=1e-5)


# -- pseudo-pairs in the batches ---------------------------------------------------------------------------------


def _pool_rows(n: int = 30, weight: float = 0.25, offset: int = 100) -> PoolRows:
    rng = np.random.default_rng(3)
    captions = rng.standard_normal((n, 24)).astype(np.float32)
    images = rng.standard_normal((n, 40)).astype(np.float32)
    pool = rng.standard_normal((200, 24)).astype(np.float32)
    return PoolRows(captions, images, offset + np.arange(n) * 2, weight, pool, 16)


@pytest.mark.parametrize("aligned", [False, True])
def test_pseudo_pairs_join_every_batch_with_their_weight_and_each_once_an_epoch(small_data, aligned):
    shards = small_data.split("train").shards()
    rows = _pool_rows(offset=shards.n_images)
    batches = PooledBatches(CaptionBatches(shards, 64, passes=None, aligned_targets=aligned, seed=1), rows, seed=5)
    assert batches.per_batch == round(64 * 30 / shards.n_captions)
    seen = []
    for captions, labels, images, ref_labels, weights, pool in batches.epoch():
        k = batches.per_batch
        assert captions.shape[0] == 64 + k and torch.equal(weights, torch.tensor([1.0] * 64 + [0.25] * k))
        ids = labels[-k:]
        picked = (ids.numpy() - shards.n_images) // 2
        assert torch.equal(captions[-k:], torch.as_tensor(rows.captions[picked]))
        assert bool((labels[:64] < shards.n_images).all()) and bool((ids >= shards.n_images).all())
        where = [int(np.flatnonzero(ref_labels.numpy() == i)[0]) for i in ids]
        assert torch.equal(images[where], torch.as_tensor(rows.images[picked]))
        if not aligned:
            assert torch.equal(ref_labels, torch.sort(ref_labels).values)  # ids sorted: searchsorted finds them
        assert pool.shape == (16, 24) and any(np.array_equal(pool[0].numpy(), r) for r in rows.pool_captions)
        seen.extend(picked.tolist())
    per_epoch = len(batches) * batches.per_batch
    assert sorted(seen[:30]) == list(range(30)) and len(seen) == per_epoch  # a permutation, then the next


def test_pooled_batches_resume_where_they_stopped(small_data):
    shards = small_data.split("train").shards()

    def make():
        return PooledBatches(CaptionBatches(shards, 64, seed=1), _pool_rows(offset=shards.n_images), seed=5)

    whole = make()
    epochs = [list(whole.epoch()) for _ in range(3)]
    first = make()
    list(first.epoch())
    state = first.get_state()
    again = make()
    again.set_state(state)
    for a, b in zip([batch for epoch in epochs[1:] for batch in epoch], [b for _ in range(2) for b in again.epoch()]):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="drawn without unpaired pools"):
        make().set_state(CaptionBatches(shards, 64, seed=1).get_state())


def test_a_step_adds_the_regulariser_on_the_pool_sample(small_data):
    from stitch.training.tasks import Task
    from stitch.translators import build_model

    config = load_config(None, ["model.hidden=16", "loss.queue_size=0", "semi.neighbour_weight=0.7"])
    model = build_model(config.model, small_data.text_dim, small_data.image_dim)
    task = Task.for_config(model, config).eval()  # eval: no dropout, the two steps see the same network
    captions, labels, images, ref_labels = next(CaptionBatches(small_data.shards(), 32, seed=0).epoch())
    pool = torch.as_tensor(small_data.captions[100:140])
    with torch.no_grad():
        plain = task.training_step(captions, labels, images, ref_labels)
        regularised = task.training_step(captions, labels, images, ref_labels, torch.ones(32), pool)
        term = NeighbourhoodLoss(0.7, 0.1)(pool, model.training_queries(pool))
    assert term.item() > 0 and regularised.item() == pytest.approx(plain.item() + term.item(), rel=1e-5)


# -- training with pools: the rounds logged, resumed, refused where they cannot apply ---------------------------


def _independent_round_one(pairs, pool_path, alpha: float = 1.0, k: int = 10):
    """Round 1 of the pseudo-pairs in numpy: ridge on the training pairs into the image space z-scored with the
    training and pool images, the pool captions translated, CSLS mutual nearest neighbours among the pools."""
    train = pairs.split("train")
    pool = np.load(pool_path)
    pool_x, pool_y = pool["captions/embeddings"].astype(np.float64), pool["images/embeddings"].astype(np.float64)
    truth = pool["captions/image_index"]
    seed_x, seed_y = train.captions.astype(np.float64), train.images[train.caption_image].astype(np.float64)
    everything = np.concatenate([seed_y, pool_y])
    mean, std = everything.mean(0), np.maximum(everything.std(0), 1e-6)
    z = (seed_y - mean) / std
    xc, zc = seed_x - seed_x.mean(0), z - z.mean(0)
    weight = np.linalg.solve(xc.T @ xc + alpha * np.eye(xc.shape[1]), xc.T @ zc)
    bias = z.mean(0) - seed_x.mean(0) @ weight
    q = pool_x @ weight + bias
    items = (pool_y - mean) / std
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (items / np.linalg.norm(items, axis=1, keepdims=True)).T
    r_q = np.sort(cos, axis=1)[:, -k:].mean(1)
    r_x = np.sort(cos, axis=0)[-k:, :].mean(0)
    csls = 2 * cos - r_q[:, None] - r_x[None, :]
    best = csls.argmax(1)
    mutual = csls.argmax(0)[best] == np.arange(len(q))
    return int(mutual.sum()), float(np.mean(truth[mutual] == best[mutual]))


def test_metrics_csv_holds_each_rounds_pseudo_pairs_and_their_precision(tmp_path):
    pairs, pool = _pairs_and_pool(tmp_path)
    overrides = _pooled(pool, "model.init=ridge", "semi.rounds=1", "optim.epochs=2")
    api.train(pairs, None, out=tmp_path / "run", overrides=overrides, progress=False)
    rows = api.open(tmp_path / "run").metrics
    rounds = round_rows_of(rows)
    count, precision = _independent_round_one(pairs, pool)
    assert len(rounds) == 1 and rounds[0]["round"] == 1 and rounds[0]["pseudo_pairs"] == count
    assert rounds[0]["pseudo_precision"] == pytest.approx(precision, abs=1e-12) and 0 < precision < 1
    assert [r["epoch"] for r in epoch_rows(rows)] == [0, 1] and rows[0]["epoch"] is None
    record = api.open(tmp_path / "run").info.meta["self_learning"]
    assert record["in_batches"] == {"pseudo_pairs": count, "weight": 1.0}
    assert (
        f"The last round's {count} pseudo-pairs joined the training batches" in (tmp_path / "run/README.md").read_text()
    )


def test_pools_with_unknown_links_log_no_precision(tmp_path):
    pairs, pool = _pairs_and_pool(tmp_path)
    loaded = np.load(pool)
    np.save(tmp_path / "captions.npy", loaded["captions/embeddings"])
    np.save(tmp_path / "images.npy", loaded["images/embeddings"])
    overrides = [*SMALL, "semi.rounds=2", "optim.epochs=1", f"semi.unpaired_captions={tmp_path / 'captions.npy'}",
                 f"semi.unpaired_images={tmp_path / 'images.npy'}"]  # fmt: skip
    api.train(pairs, None, out=tmp_path / "run", overrides=overrides, progress=False)
    rounds = round_rows_of(api.open(tmp_path / "run").metrics)
    assert [r["round"] for r in rounds] == [1, 2] and all(r["pseudo_precision"] is None for r in rounds)
    assert all(isinstance(r["pseudo_pairs"], int) and r["pseudo_pairs"] > 0 for r in rounds)


def test_a_run_with_pools_resumes_exactly(tmp_path):
    pairs, pool = _pairs_and_pool(tmp_path)
    overrides = _pooled(pool, "semi.rounds=1", "semi.neighbour_weight=0.5", "optim.epochs=4", "patience=9")
    api.train(pairs, None, out=tmp_path / "full", overrides=overrides, progress=False)
    config = load_config(None, overrides)
    calls = {"n": 0}
    original = DevEvaluator.__call__

    def crashing(self, *args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args, **kwargs)

    DevEvaluator.__call__ = crashing
    try:
        with pytest.raises(KeyboardInterrupt):
            train(pairs, config, run_dir=tmp_path / "part", progress=False)
    finally:
        DevEvaluator.__call__ = original
    assert len(epoch_rows(Run.load(tmp_path / "part").metrics)) == 2
    api.train(pairs, None, out=tmp_path / "part", resume=True, progress=False)

    def figures(run):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in Run.load(tmp_path / run).metrics]

    assert figures("part") == figures("full")  # the rounds once, then every epoch's figures, bit for bit


def test_a_loss_that_cannot_weigh_rows_is_refused_with_pools(tmp_path):
    pairs, pool = _pairs_and_pool(tmp_path)
    with pytest.raises(RunError, match=r"loss.name=triplet cannot weigh its rows.*'infonce'"):
        api.train(pairs, None, overrides=_pooled(pool, "loss.name=triplet", "loss.queue_size=0"), progress=False)
    with pytest.raises(RunError, match="optim.mixup_alpha"):
        api.train(pairs, None, overrides=_pooled(pool, "optim.mixup_alpha=0.4"), progress=False)


def test_the_report_shows_pseudo_pairs_and_precision_per_round(tmp_path):
    from stitch.apps.report import build_report

    pairs, pool = _pairs_and_pool(tmp_path)
    data = write_flickr_like(tmp_path / "pairs.npz", pairs)
    api.train(
        pairs, None, out=tmp_path / "run", overrides=_pooled(pool, "semi.rounds=2", "optim.epochs=1"), progress=False
    )
    page = build_report(tmp_path / "run", data, tmp_path / "report.html", projection="pca").read_text()
    assert ">Pseudo-pairs per self-learning round<" in page
    for row in round_rows_of(api.open(tmp_path / "run").metrics):
        cells = f"<tr><td>{row['round']}</td><td>{row['pseudo_pairs']}</td><td>{row['pseudo_precision']:.4f}</td></tr>"
        assert cells in page
    assert "alt='pseudo-pairs and precision per round'" in page and ">Training curves<" in page


def test_the_curve_trains_a_learnt_recipe_with_pools_beside_it_without(tmp_path):
    from stitch.apps.curve import CurveSettings, learning_curve

    data = make_synthetic(n_images=500, captions_per_image=4, text_dim=16, image_dim=24, latent_dim=6)
    settings = CurveSettings(sizes=(40,), overrides=(*SMALL, "optim.epochs=2", "semi.rounds=1"))
    points = learning_curve(data, ["default", "default+pools"], tmp_path, settings)
    assert [p.method for p in points] == ["default", "default+pools (same pools)"]
    assert points[0].pairs == points[1].pairs and 0 < points[1].mrr <= 1
    with pytest.raises(ValueError, match="unknown recipe"):
        learning_curve(data, ["nothing+pools"], tmp_path / "x", settings)


def test_pool_captions_already_paired_are_left_out_and_a_pool_of_the_pairs_changes_nothing(tmp_path, caplog):
    """A pool of "all my captions" holds the paired ones: their image is known, so they are left out (said), and
    a pool holding only the training pairs leaves the self-learning recipe exactly where ridge is."""
    from stitch.semi.pools import read_pools, without_paired_captions

    pairs, pool = _pairs_and_pool(tmp_path)
    train = pairs.split("train")
    own = write_flickr_like(tmp_path / "own.npz", train, images__split=None)
    overrides = ["model.init=ridge", f"semi.unpaired_captions={own}", f"semi.unpaired_images={own}"]
    learnt = api.train(pairs, None, overrides=["model.name=self-learning", *overrides], progress=False)
    ridge = api.train(pairs, None, overrides=["model.name=ridge"], progress=False)
    probe = pairs.split("dev").captions[:9]
    np.testing.assert_allclose(api.predict(learnt.run, probe), api.predict(ridge.run, probe), rtol=1e-4, atol=1e-5)
    assert "left out 120 of 120 row(s) equal to training captions (already paired); none is left" in caplog.text
    assert all(r["pseudo_pairs"] == 0 for r in learnt.run.info.meta["self_learning"]["rounds"])
    pooled = [*SMALL, "optim.epochs=2", "semi.neighbour_weight=1", *overrides[1:]]
    with_pool = api.train(pairs, None, overrides=pooled, progress=False).history
    without = api.train(pairs, None, overrides=[*SMALL, "optim.epochs=2"], progress=False).history
    assert [r["dev_mrr"] for r in with_pool] == pytest.approx([r["dev_mrr"] for r in without], abs=1e-5)
    # a pool overlapping the pairs in part keeps its other captions, and their links
    rest = api.load(pool)
    both = tmp_path / "both.npz"
    np.savez(
        both,
        **{
            "captions/embeddings": np.concatenate([train.captions, rest.captions]),
            "captions/image_index": np.concatenate([train.caption_image, rest.caption_image + train.n_images]),
            "images/embeddings": np.concatenate([train.images, rest.images]),
        },
    )
    pools = read_pools(str(both), str(both), pairs.text_dim, pairs.image_dim, pairs.split("dev"))
    kept = without_paired_captions(pools, [train.captions])
    assert len(kept.captions) == len(pools.captions) - train.n_captions
    np.testing.assert_array_equal(kept.captions, pools.captions[train.n_captions :])
    np.testing.assert_array_equal(kept.truth, pools.truth[train.n_captions :])
