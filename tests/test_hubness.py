"""Hubness-aware scoring against direct formulas, and a planted hub that each method demotes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stitch.retrieval.evaluate import evaluate_embeddings
from stitch.retrieval.hubness import build_rescorer
from stitch.retrieval.scorer import Scorer
from stitch.translators.mapped import IdentityTranslator


def unit(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)


@pytest.fixture
def banks():
    g = torch.Generator().manual_seed(0)
    return (
        unit(torch.randn(40, 6, generator=g)),
        unit(torch.randn(12, 6, generator=g)),
        unit(torch.randn(9, 6, generator=g)),
    )


def test_csls_penalty_is_mean_of_k_nearest_bank_similarities(banks):
    bank, gallery, q = banks
    r = build_rescorer("csls", k=3).fit(bank, gallery)
    sims = (bank @ gallery.T).numpy()
    expected = np.sort(sims, axis=0)[-3:].mean(0)
    assert np.allclose(r.offset.numpy(), expected, atol=1e-6)
    s = q @ gallery.T
    assert torch.allclose(r.adjust(s), 2 * s - torch.tensor(expected), atol=1e-5)


def test_inverted_softmax_matches_its_definition(banks):
    bank, gallery, q = banks
    beta = 7.0
    r = build_rescorer("is", beta=beta).fit(bank, gallery)
    s = (q @ gallery.T).double().numpy()
    bank_s = (bank @ gallery.T).double().numpy()
    probs = np.exp(beta * s) / np.exp(beta * bank_s).sum(0)  # the inverted softmax itself
    ours = r.adjust(q @ gallery.T).double().numpy()
    assert np.array_equal(
        np.argsort(-ours, axis=1, kind="stable")[:, :5], np.argsort(-probs, axis=1, kind="stable")[:, :5]
    )
    assert np.allclose(np.exp(ours), probs, rtol=1e-4)


def test_qbnorm_only_touches_queries_whose_top1_is_a_hub(banks):
    bank, gallery, q = banks
    r = build_rescorer("qbnorm", beta=5.0).fit(bank, gallery)
    hubs = set((bank @ gallery.T).argmax(1).tolist())
    assert set(np.flatnonzero(r.activation.numpy()).tolist()) == hubs
    s = q @ gallery.T
    out = r.adjust(s)
    for i in range(len(q)):
        if int(s[i].argmax()) in hubs:
            assert torch.allclose(out[i], 5.0 * s[i] - r.log_norm, atol=1e-5)
        else:
            assert torch.allclose(out[i], 5.0 * s[i], atol=1e-6)


def test_dbnorm_adds_the_gallery_bank_normaliser(banks):
    bank, gallery, q = banks
    r = build_rescorer("dbnorm", beta=4.0, gallery_weight=0.5).fit(bank, gallery, gallery)
    expected_g = torch.logsumexp(4.0 * (gallery @ gallery.T), dim=0)
    s = q @ gallery.T
    assert torch.allclose(r.adjust(s), 4.0 * s - r.log_norm - 0.5 * expected_g, atol=1e-5)


def test_whitening_makes_the_bank_isotropic(banks):
    bank, gallery, _ = banks
    r = build_rescorer("whiten", eps=1e-6).fit(bank, gallery)
    w = (bank - r.query_mean) @ r.whitener
    cov = (w.T @ w / (len(w) - 1)).numpy()
    assert np.allclose(cov, np.eye(6), atol=1e-2)


@pytest.mark.parametrize("method", ["csls", "is", "qbnorm", "dbnorm"])
def test_a_planted_hub_is_demoted(method):
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((50, 16))
    hub_direction = rng.standard_normal(16)
    gallery[0] = hub_direction  # item 0: close to every query
    owner = rng.integers(1, 50, size=300)
    queries = gallery[owner] + 0.9 * rng.standard_normal((300, 16)) + 1.2 * hub_direction
    bank = gallery[rng.integers(1, 50, size=600)] + 0.9 * rng.standard_normal((600, 16)) + 1.2 * hub_direction
    plain = evaluate_embeddings(queries, gallery, owner)[0].metrics["mrr"]
    scorer = Scorer(IdentityTranslator(16), build_rescorer(method), bank=bank)
    fixed = evaluate_embeddings(queries, gallery, owner, scorer=scorer)[0]
    assert fixed.metrics["mrr"] > plain + 0.02
    assert fixed.protocol == f"full+{method}"


def test_rescoring_needs_a_bank():
    with pytest.raises(ValueError, match="query bank"):
        Scorer(IdentityTranslator(3), build_rescorer("is"))
    with pytest.raises(ValueError, match="rerank must be one of"):
        build_rescorer("magic")


@pytest.mark.parametrize("method", ["csls", "is", "qbnorm", "dbnorm"])
def test_candidate_rescoring_equals_full_row_rescoring(banks, method):
    bank, gallery, q = banks
    r = build_rescorer(method).fit(bank, gallery, gallery)
    full = r.adjust(q @ gallery.T)
    ids = torch.argsort(q @ gallery.T, dim=1, descending=True)[:, :5]  # top-5 candidates incl. the top-1
    partial = r.adjust((q @ gallery.T).gather(1, ids), ids)
    assert torch.allclose(partial, full.gather(1, ids), atol=1e-5)


def test_dbnorm_with_the_gallery_as_its_own_bank_leaves_self_similarity_out(banks):
    bank, gallery, _ = banks
    r = build_rescorer("dbnorm", beta=4.0, gallery_weight=1.0).fit(bank, gallery)
    sims = 4.0 * (gallery @ gallery.T)
    sims.fill_diagonal_(float("-inf"))
    assert torch.allclose(r.log_norm_gallery, torch.logsumexp(sims, dim=0), atol=1e-5)
