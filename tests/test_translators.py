"""Closed-form translators against independent solutions; the residual MLP starts at ridge."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import ortho_group
from sklearn.linear_model import Ridge

from stitch.training.config import ModelConfig
from stitch.translators import ResidualMLP, Translator, build_model, fit_procrustes, fit_ridge
from stitch.translators.mapped import ResidualTranslator
from stitch.translators.moments import ColumnMoments, PairMoments


def test_ridge_matches_scikit_learn():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((200, 12)), rng.standard_normal((200, 7))
    ours = fit_ridge(x, y, alpha=3.0)
    ref = Ridge(alpha=3.0).fit(x, y)
    pred = ours(torch.tensor(x, dtype=torch.float32)).numpy()
    assert np.allclose(pred, ref.predict(x), atol=1e-4)


@pytest.mark.parametrize("dims", [(8, 8), (6, 10)])
def test_procrustes_recovers_an_orthogonal_map_across_dimensions(dims):
    d_in, d_out = dims
    rng = np.random.default_rng(1)
    rotation = ortho_group.rvs(d_out, random_state=2)[:d_in]  # d_in x d_out with orthonormal rows
    x = rng.standard_normal((500, d_in))
    y = 2.5 * x @ rotation + np.arange(d_out)
    fitted = fit_procrustes(x, y)
    assert np.allclose(fitted.weight.numpy(), 2.5 * rotation, atol=1e-4)
    assert np.allclose(fitted(torch.tensor(x, dtype=torch.float32)).numpy(), y, atol=1e-3)
    w = fitted.weight.numpy() / 2.5
    assert np.allclose(w @ w.T, np.eye(d_in), atol=1e-4)


def test_residual_mlp_starts_exactly_at_the_ridge_solution():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((100, 5)).astype(np.float32), rng.standard_normal((100, 9)).astype(np.float32)
    cfg = ModelConfig(name="resmlp", hidden=16, ridge_alpha=0.5, init="ridge")
    model = build_model(cfg, 5, 9)
    model.initialise(PairMoments.of(x, y), cfg)
    ridge = fit_ridge(x, y, alpha=0.5)
    with torch.no_grad():
        assert torch.allclose(model.embed_queries(torch.tensor(x)), ridge(torch.tensor(x)), atol=1e-5)
    assert isinstance(model, ResidualTranslator) and isinstance(model, Translator)
    assert isinstance(model.translator, ResidualMLP)
    procrustes_cfg = ModelConfig(name="resmlp", hidden=16, init="procrustes")
    started = build_model(procrustes_cfg, 5, 9)
    started.initialise(PairMoments.of(x, y), procrustes_cfg)
    with torch.no_grad():
        expected = fit_procrustes(x, y)(torch.tensor(x))
        assert torch.allclose(started.embed_queries(torch.tensor(x)), expected, atol=1e-5)


def test_standardised_space_round_trips():
    rng = np.random.default_rng(0)
    y = rng.gamma(2.0, size=(50, 6)).astype(np.float32)
    model = build_model(ModelConfig(name="ridge"), 3, 6)
    model.space.fit(y)
    z = model.embed_gallery(torch.tensor(y))
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(model.space.inverse(z), torch.tensor(y), atol=1e-5)


def test_moments_merged_chunk_by_chunk_equal_the_one_pass_fits():
    """Shards on disk are fitted chunk by chunk: ridge, Procrustes and z-scoring must not depend on the chunking."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 6)) * 3 + 50  # offset far from zero: raw sums of squares would cancel
    y = x @ rng.standard_normal((6, 4)) + rng.standard_normal((1000, 4)) + 7
    whole = PairMoments.of(x, y)
    cuts = [0, 1, 7, 300, 301, 999, 1000]
    merged = PairMoments.of_chunks((x[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:]))
    for (w1, b1), (w2, b2) in [(whole.ridge(0.3), merged.ridge(0.3)), (whole.procrustes(), merged.procrustes())]:
        assert np.allclose(w1, w2, atol=1e-9) and np.allclose(b1, b2, atol=1e-7)
    sk = Ridge(alpha=0.3).fit(x, y)  # independent oracle
    assert np.allclose(merged.ridge(0.3)[0], sk.coef_.T, atol=1e-8)
    assert np.allclose(merged.ridge(0.3)[1], sk.intercept_, atol=1e-6)
    columns = ColumnMoments.of_chunks(y[a:b] for a, b in zip(cuts[:-1], cuts[1:]))
    assert np.allclose(columns.mean, y.mean(0)) and np.allclose(columns.std, y.std(0), rtol=1e-12)
