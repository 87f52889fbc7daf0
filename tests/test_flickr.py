"""Real data: the Flickr8k benchmark in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import pytest

from stitch import api
from stitch.data import load_pairs


@pytest.fixture(scope="module")
def flickr(request):
    from conftest import FLICKR, need

    return load_pairs(need(FLICKR))


def test_ridge_on_flickr_dev_matches_the_reference(flickr, tmp_path):
    result = api.train(flickr, None, out=tmp_path / "ridge", overrides=["model.name=ridge"], progress=False)
    reports = api.evaluate(tmp_path / "ridge", flickr, split="dev", rerank="none")
    t2i = reports[0]
    assert (t2i.gallery, t2i.queries) == (1000, 5000)
    # reference: closed-form ridge, target standardised: R@1 0.111, MRR 0.224
    assert t2i.metrics["recall@1"] >= 0.105 and t2i.metrics["mrr"] >= 0.22
    assert result.dev_metrics["mrr"] == pytest.approx(t2i.metrics["mrr"], abs=1e-6)
    # the run's default scoring (inverted softmax over its bank of training captions) helps
    rescored = api.evaluate(tmp_path / "ridge", flickr, split="dev")[0]
    assert rescored.protocol == "full+is" and rescored.metrics["mrr"] > t2i.metrics["mrr"] + 0.02


@pytest.mark.slow
def test_default_recipe_reaches_the_issue_target(flickr, default_flickr_run):
    t2i = api.evaluate(default_flickr_run, flickr, split="dev")[0]
    assert t2i.protocol == "full+is" and t2i.gallery == 1000
    # the leaderboard issue's targets (the first issue asked for 0.19 / 0.31); measured 0.247 / 0.383
    assert t2i.metrics["recall@1"] >= 0.24 and t2i.metrics["mrr"] >= 0.36
