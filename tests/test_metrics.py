"""Every retrieval metric against a brute-force loop on small random data, ties included."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stitch.retrieval.evaluate import evaluate_embeddings, summary_json
from stitch.retrieval.metrics import random_baseline, rank_metrics
from stitch.retrieval.ranks import (
    image_to_text_ndcg,
    image_to_text_ranks,
    sampled_candidate_ranks,
    text_to_image_ranks,
)


def tied_data(seed: int, n_images: int = 23, per_image: int = 3, dim: int = 4):
    """Integer-valued vectors: many exactly equal scores, so tie handling is exercised."""
    rng = np.random.default_rng(seed)
    gallery = rng.integers(-1, 2, size=(n_images, dim)).astype(np.float32)
    owner = np.repeat(np.arange(n_images), per_image)
    rng.shuffle(owner)
    queries = rng.integers(-1, 2, size=(len(owner), dim)).astype(np.float32)
    return torch.tensor(queries), torch.tensor(gallery), owner


def brute_t2i(q, g, owner):
    scores = (q @ g.T).numpy()
    ranks = []
    for i, true in enumerate(owner):
        # pessimistic: every other item scoring >= the true one is ahead of it
        ahead = sum(1 for j in range(len(g)) if j != true and scores[i, j] >= scores[i, true])
        ranks.append(ahead + 1)
    return np.array(ranks)


def brute_i2t(g, q, owner):
    scores = (g @ q.T).numpy()
    ranks = []
    for img in range(len(g)):
        pos = [c for c in range(len(q)) if owner[c] == img]
        best = max(scores[img, c] for c in pos)
        ahead = sum(1 for c in range(len(q)) if owner[c] != img and scores[img, c] >= best)
        ranks.append(ahead + 1)
    return np.array(ranks)


def brute_i2t_ndcg(g, q, owner, k=10):
    scores = (g @ q.T).numpy()
    total = 0.0
    for img in range(len(g)):
        rel = {c for c in range(len(q)) if owner[c] == img}
        # sort descending by score; among equal scores non-relevant first (pessimistic)
        order = sorted(range(len(q)), key=lambda c: (-scores[img, c], c in rel))
        dcg = sum(1 / math.log2(p + 2) for p, c in enumerate(order[:k]) if c in rel)
        idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(rel))))
        total += dcg / idcg
    return total / len(g)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_text_to_image_ranks_match_brute_force(seed, chunk):
    q, g, owner = tied_data(seed)
    assert np.array_equal(text_to_image_ranks(q, g, owner, chunk=chunk), brute_t2i(q, g, owner))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 5, 1000])
def test_image_to_text_ranks_match_brute_force(seed, chunk):
    q, g, owner = tied_data(seed)
    assert np.array_equal(image_to_text_ranks(g, q, owner, chunk=chunk), brute_i2t(g, q, owner))


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("chunk", [2, 1000])
def test_image_to_text_ndcg_matches_brute_force(seed, chunk):
    q, g, owner = tied_data(seed)
    assert image_to_text_ndcg(g, q, owner, k=10, chunk=chunk) == pytest.approx(brute_i2t_ndcg(g, q, owner), abs=1e-9)


def test_constant_predictor_gets_the_worst_rank_not_the_best():
    g = torch.randn(10, 3)
    q = torch.zeros(4, 3)  # all scores 0: everything ties
    ranks = text_to_image_ranks(q, g, np.array([0, 3, 5, 9]))
    assert (ranks == 10).all()


def test_rank_metrics_against_direct_formulas():
    rng = np.random.default_rng(0)
    ranks = rng.integers(1, 60, size=500)
    m = rank_metrics(ranks)
    for k in (1, 5, 10, 50):
        assert m[f"recall@{k}"] == pytest.approx(sum(r <= k for r in ranks) / len(ranks))
    assert m["mrr"] == pytest.approx(sum(1 / r for r in ranks) / len(ranks))
    assert m["ndcg@10"] == pytest.approx(sum(1 / math.log2(r + 1) for r in ranks if r <= 10) / len(ranks))
    assert m["median_rank"] == np.median(ranks)
    assert m["mean_rank"] == pytest.approx(ranks.mean())


def test_random_baseline_matches_simulation():
    rng = np.random.default_rng(0)
    gallery = 50
    sims = rank_metrics(rng.integers(1, gallery + 1, size=200_000))
    base = random_baseline(gallery)
    for key in ("recall@1", "recall@10", "mrr", "ndcg@10", "mean_rank"):
        assert base[key] == pytest.approx(sims[key], rel=0.03)


def brute_kaggle(q, g, owner, n_candidates, seed):
    """Reproduce the candidate draw independently, then rank by loops."""
    rng = np.random.default_rng(seed)
    ranks = []
    scores = (q @ g.T).numpy()
    for i, true in enumerate(owner):
        drawn = rng.choice(len(g) - 1, size=n_candidates - 1, replace=False)
        others = [d + 1 if d >= true else d for d in drawn]
        assert true not in others and len(set(others)) == n_candidates - 1
        ranks.append(1 + sum(scores[i, o] >= scores[i, true] for o in others))
    return np.array(ranks)


@pytest.mark.parametrize("seed", [0, 4])
def test_kaggle_protocol_matches_brute_force(seed):
    q, g, owner = tied_data(seed, n_images=30)
    got = sampled_candidate_ranks(q, g, owner, n_candidates=12, seed=seed, chunk=5)
    assert np.array_equal(got, brute_kaggle(q, g, owner, 12, seed))


def test_kaggle_protocol_needs_a_large_enough_gallery():
    q, g, owner = tied_data(0, n_images=30)
    with pytest.raises(ValueError, match="fewer than the 100"):
        sampled_candidate_ranks(q, g, owner, n_candidates=100)


def test_evaluate_reports_label_protocol_gallery_and_queries():
    q, g, owner = tied_data(0, n_images=120, per_image=2)
    reports = evaluate_embeddings(q, g, owner, protocol="full", chunk=16)
    assert [r.direction for r in reports] == ["text->image", "image->text"]
    assert reports[0].gallery == 120 and reports[0].queries == 240
    assert reports[1].gallery == 240 and reports[1].queries == 120
    summary = summary_json(reports)
    for key in ("recall@1", "recall@5", "recall@10", "mrr", "ndcg@10", "median_rank", "gallery", "queries", "protocol"):
        assert key in summary
    assert "full gallery of 120" in summary["protocol"]
    # cosine: evaluation normalises, so brute force on normalised vectors must agree
    qn, gn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(g, dim=1)
    ranks = brute_t2i(qn, gn, owner)
    assert summary["mrr"] == pytest.approx(np.mean(1 / ranks), abs=1e-6)
    kaggle = evaluate_embeddings(q, g, owner, protocol="kaggle100")
    assert len(kaggle) == 1 and kaggle[0].gallery == 100


def test_i2t_random_baseline_matches_simulation():
    from stitch.retrieval.metrics import random_baseline_relevance

    owner = np.repeat(np.arange(40), 3)
    rng = np.random.default_rng(0)
    sims = []
    for _ in range(4000):
        order = rng.permutation(len(owner))
        pos = np.where(owner[order] == 0)[0]
        sims.append(pos.min() + 1)
    exact = random_baseline_relevance(np.bincount(owner), len(owner))
    sim = rank_metrics(np.array(sims))
    assert exact["hit@1"] == pytest.approx(3 / 120)
    assert exact["mrr"] == pytest.approx(sim["mrr"], rel=0.05)
    assert exact["mean_rank"] == pytest.approx(sim["mean_rank"], rel=0.05)


def test_a_table_showing_hit_and_recall_says_which_is_which():
    from stitch.data.relevance import Relevance
    from stitch.retrieval.evaluate import RECALL_LEGEND, format_reports

    rng = np.random.default_rng(0)
    images, captions = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(12, 4)).astype(np.float32)
    relevant = Relevance.from_owner(np.repeat(np.arange(6), 2), 6)
    reports = evaluate_embeddings(torch.from_numpy(captions), torch.from_numpy(images), relevant, "full")
    text = format_reports(reports)
    image_to_text = text[text.index("image->text") :]
    assert image_to_text.index("hit@1") < image_to_text.index("recall@1")  # the familiar figure first
    assert RECALL_LEGEND in image_to_text and RECALL_LEGEND not in text[: text.index("image->text")]
