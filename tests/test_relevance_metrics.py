"""Ranks and metrics of several relevant items per query, against ranx and against brute-force sorting."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from stitch.data.relevance import Relevance
from stitch.retrieval.metrics import (
    random_baseline,
    random_baseline_relevance,
    rank_metrics,
    relevance_metrics,
)
from stitch.retrieval.ranks import (
    image_to_text_ndcg,
    image_to_text_ranks,
    relevant_ranks,
    text_to_image_ranks,
)

KS = (1, 5, 10, 50)


def lookup(scores: np.ndarray):
    """Query/gallery stand-ins (row numbers) and a similarity that reads a fixed score matrix."""
    table = torch.as_tensor(scores, dtype=torch.float32)

    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return table[a[:, 0].long()][:, b[:, 0].long()]

    rows = torch.arange(scores.shape[0], dtype=torch.float32)[:, None]
    cols = torch.arange(scores.shape[1], dtype=torch.float32)[:, None]
    return rows, cols, similarity


def random_relation(seed: int, n_queries: int = 60, n_items: int = 40, graded: bool = False) -> Relevance:
    rng = np.random.default_rng(seed)
    lists = [rng.choice(n_items, size=rng.integers(1, 7), replace=False) for _ in range(n_queries)]
    grades = [rng.integers(1, 4, size=len(row)).astype(float) for row in lists] if graded else None
    return Relevance.from_lists(lists, n_items, grades)


def metrics_of(scores: np.ndarray, relevance: Relevance, chunk: int = 7) -> dict[str, float]:
    q, g, similarity = lookup(scores)
    return relevance_metrics(relevant_ranks(q, g, relevance, chunk=chunk, similarity=similarity), relevance)


def link_grades(relevance: Relevance) -> np.ndarray:
    return np.ones(len(relevance.items)) if relevance.grades is None else relevance.grades


def brute_ranks(scores: np.ndarray, relevance: Relevance) -> np.ndarray:
    """Sort each row by (-score, relevant last, grade ascending, item); NaN: +inf if non-relevant, -inf if relevant."""
    grades = link_grades(relevance)
    out = np.zeros(len(relevance.items), dtype=np.int64)
    for q in range(relevance.n_queries):
        links = dict(zip(relevance.row(q), range(relevance.indptr[q], relevance.indptr[q + 1])))

        def key(j, q=q, links=links):
            s = float(scores[q, j])
            if math.isnan(s):
                s = -math.inf if j in links else math.inf
            return (-s, j in links, grades[links[j]] if j in links else 0.0, j)

        for position, j in enumerate(sorted(range(scores.shape[1]), key=key)):
            if j in links:
                out[links[j]] = position + 1
    return out


def tied_scores(seed: int, shape: tuple[int, int], nan_share: float = 0.08) -> np.ndarray:
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(shape), 1).astype(np.float32)  # 11 distinct values: heavy ties
    scores[rng.random(shape) < nan_share] = np.nan
    return scores


# --- the oracle: ranx on tie-free data --------------------------------------------------------------------------

RANX_KEYS = {"hit": "hit_rate@{k}", "recall": "recall@{k}"}


def ranx_metrics(relevance: Relevance, run_scores: np.ndarray) -> dict[str, float]:
    """Our key -> ranx's value, with ranx reading the relation and the scores as plain dicts."""
    ranx = pytest.importorskip("ranx", reason="ranx (the test extra) is the independent oracle for these metrics")
    grades = link_grades(relevance)
    qrels = ranx.Qrels(
        {
            f"q{q}": {
                f"d{j}": int(grades[link])
                for link, j in enumerate(relevance.items)
                if relevance.link_queries[link] == q
            }
            for q in range(relevance.n_queries)
        }
    )
    run = ranx.Run(
        {
            f"q{q}": {f"d{j}": float(run_scores[q, j]) for j in range(run_scores.shape[1])}
            for q in range(len(run_scores))
        }
    )
    ours = {f"{name}@{k}": theirs.format(k=k) for k in KS for name, theirs in RANX_KEYS.items()}
    ours |= {"mrr": "mrr", "ndcg@10": "ndcg@10", "map@10": "map@10", "map": "map", "r_precision": "r-precision"}
    values = ranx.evaluate(qrels, run, list(ours.values()), make_comparable=True)
    return {key: float(values[name]) for key, name in ours.items()}


@pytest.mark.filterwarnings("ignore::Warning")  # numba's type-safety chatter inside ranx
@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_ranx_on_random_many_to_many_data(seed, graded):
    relevance = random_relation(seed, graded=graded)
    scores = np.random.default_rng(seed + 100).random((60, 40)).astype(np.float32)
    assert all(len(np.unique(row)) == len(row) for row in scores)  # no ties: any tie rule gives the same order
    q, g, similarity = lookup(scores)
    ours = relevance_metrics(relevant_ranks(q, g, relevance, chunk=7, similarity=similarity), relevance)
    theirs = ranx_metrics(relevance, scores)
    diffs = {key: abs(ours[key] - theirs[key]) for key in theirs}
    assert max(diffs.values()) < 1e-9, diffs
    assert ours["hit@1"] != ours["recall@1"] or ours["hit@5"] != ours["recall@5"]  # many-to-many really differs


@pytest.mark.filterwarnings("ignore::Warning")
@pytest.mark.parametrize("graded", [False, True])
def test_metrics_match_ranx_under_the_pessimistic_order_of_ties(graded):
    """With ties, ranx reads the brute-force pessimistic order as strict scores; our ranks must agree."""
    relevance = random_relation(5, graded=graded)
    scores = tied_scores(5, (60, 40))
    ranks = brute_ranks(scores, relevance)
    strict = np.zeros(scores.shape)  # every link's own place; non-relevant items fill the remaining places
    for q in range(relevance.n_queries):
        places = set(ranks[relevance.indptr[q] : relevance.indptr[q + 1]])
        free = iter(p for p in range(1, 41) if p not in places)
        row = relevance.row(q)
        for j in range(40):
            hit = np.where(row == j)[0]
            strict[q, j] = -(ranks[relevance.indptr[q] + hit[0]] if len(hit) else next(free))
    q, g, similarity = lookup(scores)
    ours = relevance_metrics(relevant_ranks(q, g, relevance, chunk=9, similarity=similarity), relevance)
    theirs = ranx_metrics(relevance, strict)
    assert max(abs(ours[key] - theirs[key]) for key in theirs) < 1e-9


# --- ties and NaN against brute force ---------------------------------------------------------------------------


@pytest.mark.parametrize("graded", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_relevant_ranks_match_brute_force_with_ties_and_nan(seed, chunk, graded):
    relevance = random_relation(seed, n_queries=25, n_items=17, graded=graded)
    scores = tied_scores(seed, (25, 17))
    q, g, similarity = lookup(scores)
    got = relevant_ranks(q, g, relevance, chunk=chunk, similarity=similarity)
    assert got.dtype == np.int64 and got.shape == relevance.items.shape
    assert np.array_equal(got, brute_ranks(scores, relevance))


def test_a_query_with_almost_every_item_relevant_and_a_tiny_chunk():
    scores = tied_scores(3, (3, 12), nan_share=0.2)
    relevance = Relevance.from_lists([list(range(11)), [4], list(range(1, 12))], 12, None)
    q, g, similarity = lookup(scores)
    got = relevant_ranks(q, g, relevance, chunk=2, similarity=similarity)
    assert np.array_equal(got, brute_ranks(scores, relevance))


def test_adjust_rewrites_the_scores_before_ranking():
    scores = tied_scores(4, (10, 9), nan_share=0.0)
    relevance = random_relation(4, n_queries=10, n_items=9)
    q, g, similarity = lookup(scores)
    got = relevant_ranks(q, g, relevance, chunk=3, similarity=similarity, adjust=lambda s: -s)
    assert np.array_equal(got, brute_ranks(-scores, relevance))


@pytest.mark.parametrize("fill", [0.0, np.nan])
@pytest.mark.parametrize("graded", [False, True])
def test_constant_scores_get_the_worst_metrics_not_the_best(fill, graded):
    relevance = random_relation(7, n_queries=30, n_items=20, graded=graded)
    constant = metrics_of(np.full((30, 20), fill), relevance)
    # the worst order: every non-relevant item first, then the relevant ones from the lowest grade up
    grades = link_grades(relevance)
    worst_scores, best_scores = np.zeros((30, 20)), np.zeros((30, 20))
    worst_scores[relevance.link_queries, relevance.items] = -grades - 10
    best_scores[relevance.link_queries, relevance.items] = grades + 10
    worst, best = metrics_of(worst_scores, relevance), metrics_of(best_scores, relevance)
    assert constant == pytest.approx(worst, abs=1e-12)
    assert constant["mrr"] < 0.2 and best["mrr"] == 1.0 and best["ndcg@10"] == pytest.approx(1.0)
    assert constant["median_rank"] >= 15 and best["median_rank"] == 1.0


# --- one relevant item per query: the existing fast path --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("chunk", [1, 8, 1000])
def test_one_relevant_item_reproduces_text_to_image_ranks_and_rank_metrics(seed, chunk):
    rng = np.random.default_rng(seed)
    queries = torch.as_tensor(rng.integers(-1, 2, size=(70, 4)), dtype=torch.float32)  # integer dots: many ties
    gallery = torch.as_tensor(rng.integers(-1, 2, size=(23, 4)), dtype=torch.float32)
    owner = rng.integers(0, 23, size=70)
    relevance = Relevance.from_owner(owner, 23)
    ranks = relevant_ranks(queries, gallery, relevance, chunk=chunk)
    assert np.array_equal(ranks, text_to_image_ranks(queries, gallery, owner, chunk=chunk))
    ours, theirs = relevance_metrics(ranks, relevance), rank_metrics(ranks)
    for key in [f"recall@{k}" for k in KS] + ["mrr", "ndcg@10", "median_rank", "mean_rank"]:
        assert ours[key] == theirs[key], key  # exactly, not approximately
    for k in KS:
        assert ours[f"hit@{k}"] == ours[f"recall@{k}"]
    assert ours["map"] == ours["mrr"]  # one relevant item: AP is its reciprocal rank


# --- image->text goes through the generic code ------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 4, 1000])
def test_image_to_text_with_nan_matches_brute_force(chunk):
    rng = np.random.default_rng(11)
    owner = rng.permutation(np.repeat(np.arange(9), 3))[:25]
    owner[:9] = np.arange(9)  # every image keeps a caption
    caption_scores = tied_scores(11, (25, 9), nan_share=0.15)  # captions x images
    captions, images, similarity = lookup(caption_scores)
    relevance = Relevance.from_owner(owner, 9).transpose()
    link_ranks = brute_ranks(caption_scores.T, relevance)
    first = np.minimum.reduceat(link_ranks, relevance.indptr[:-1])
    assert np.array_equal(image_to_text_ranks(images, captions, owner, chunk=chunk, similarity=similarity), first)
    ndcg = 0.0
    for i in range(9):
        r = link_ranks[relevance.indptr[i] : relevance.indptr[i + 1]]
        dcg = sum(1 / math.log2(x + 1) for x in r if x <= 10)
        ndcg += dcg / sum(1 / math.log2(p + 2) for p in range(min(10, len(r))))
    got = image_to_text_ndcg(images, captions, owner, k=10, chunk=chunk, similarity=similarity)
    assert got == pytest.approx(ndcg / 9, abs=1e-12)


def test_a_nan_relevant_caption_does_not_count_as_retrieved_first():
    captions, images, similarity = lookup(np.array([[np.nan, 0.1], [0.5, 0.2]]))  # captions x images
    owner = np.array([0, 1])
    ranks = image_to_text_ranks(images, captions, owner, similarity=similarity)
    assert ranks.tolist() == [2, 1]  # image 0's own caption scores NaN: the other caption ranks above it
    ndcg = image_to_text_ndcg(images, captions, owner, k=10, similarity=similarity)
    assert ndcg == pytest.approx((1 / math.log2(3) + 1.0) / 2)


# --- chance level ------------------------------------------------------------------------------------------------


def test_random_baseline_relevance_matches_enumeration_of_every_order():
    gallery, counts = 6, np.array([1, 2, 2, 3, 6])
    firsts, recalls = [], {k: [] for k in (1, 2, 5)}
    for r in counts:
        per_query = []
        for order in itertools.permutations(range(gallery)):
            places = [order.index(j) + 1 for j in range(r)]  # items 0..r-1 are the relevant ones
            per_query.append(min(places))
            for k in recalls:
                recalls[k].append(sum(p <= k for p in places) / r)
        firsts.append(per_query)
    firsts = np.array(firsts, dtype=np.float64)
    exact = random_baseline_relevance(counts, gallery, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert exact[f"hit@{k}"] == pytest.approx(np.mean(firsts <= k), abs=1e-12)
        assert exact[f"recall@{k}"] == pytest.approx(np.mean(recalls[k]), abs=1e-12)
    assert exact["mrr"] == pytest.approx(np.mean(1 / firsts), abs=1e-12)
    assert exact["mean_rank"] == pytest.approx(firsts.mean(), abs=1e-12)
    assert exact["median_rank"] == np.median(firsts)
    assert exact["mean_recall"] == pytest.approx(np.mean([np.mean(firsts <= k) for k in (1, 5, 10)]), abs=1e-12)


@pytest.mark.parametrize("gallery", [7, 50])
def test_random_baseline_relevance_with_one_relevant_item_is_random_baseline(gallery):
    ours, theirs = random_baseline_relevance(np.ones(13, dtype=int), gallery), random_baseline(gallery)
    for key in [f"recall@{k}" for k in KS] + ["mrr", "median_rank", "mean_rank"]:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    assert ours["hit@5"] == pytest.approx(ours["recall@5"], abs=1e-12)


def test_random_baseline_relevance_matches_simulation_of_mixed_counts():
    rng = np.random.default_rng(0)
    gallery, counts = 30, np.array([1, 4, 4, 9])
    firsts = [np.argsort(rng.random(gallery))[:r].min() + 1 for _ in range(5000) for r in counts]
    # (argsort of uniform keys is a random permutation; items 0..r-1 relevant, first place = min position)
    sim = np.array(firsts, dtype=np.float64)
    exact = random_baseline_relevance(counts, gallery)
    assert exact["hit@1"] == pytest.approx(np.mean(sim <= 1), abs=0.01)
    assert exact["mean_rank"] == pytest.approx(sim.mean(), rel=0.03)


# --- bad input ---------------------------------------------------------------------------------------------------


def test_mismatched_counts_are_value_errors():
    relevance = random_relation(0, n_queries=6, n_items=8)
    q, g, similarity = lookup(np.zeros((6, 8)))
    with pytest.raises(ValueError, match="5 queries but the relevance relation has 6"):
        relevant_ranks(q[:5], g, relevance, similarity=similarity)
    with pytest.raises(ValueError, match="gallery of 7 items but the relevance relation has 8"):
        relevant_ranks(q, g[:7], relevance, similarity=similarity)
    with pytest.raises(ValueError, match="chunk"):
        relevant_ranks(q, g, relevance, chunk=0, similarity=similarity)
    with pytest.raises(ValueError, match="link ranks"):
        relevance_metrics(np.ones(len(relevance.items) + 1), relevance)
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        random_baseline_relevance(np.array([1, 9]), 8)
