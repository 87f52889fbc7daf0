"""Real data: the Flickr8k benchmark in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import numpy as np
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


@pytest.mark.slow
def test_fused_recipe_beats_the_default_in_both_scorings(flickr, fused_flickr_run, default_flickr_run):
    """Issue 14: the fused recipe (default + reverse + shared heads, fused by score) measured 0.2708 / 0.4054
    rescored and 0.2388 / 0.3732 plain on seed 0 (0.2667 / 0.4025 over 3 seeds) against the default's
    0.2468 / 0.3826 and 0.2102 / 0.3458."""
    fused = api.evaluate(fused_flickr_run, flickr, split="dev")[0]
    fused_plain = api.evaluate(fused_flickr_run, flickr, split="dev", rerank="none")[0]
    default = api.evaluate(default_flickr_run, flickr, split="dev")[0]
    default_plain = api.evaluate(default_flickr_run, flickr, split="dev", rerank="none")[0]
    assert (fused.gallery, fused.queries) == (1000, 5000)
    assert fused.metrics["recall@1"] >= 0.26 and fused.metrics["mrr"] >= 0.398
    assert fused_plain.metrics["recall@1"] >= 0.23 and fused_plain.metrics["mrr"] >= 0.365
    assert fused.metrics["mrr"] >= default.metrics["mrr"] + 0.012
    assert fused_plain.metrics["mrr"] >= default_plain.metrics["mrr"] + 0.015


@pytest.mark.slow
def test_default_submission_is_graded_close_to_its_own_cosine(flickr, default_flickr_run):
    """A grader ranks the submitted vector by cosine with the raw image. The default run's submission used
    to be the de-standardised point (graded R@1 0.029 against its own cosine 0.210); the direction it
    submits now is graded 0.196 (measured), within 0.015 of its own cosine figure."""
    own = api.evaluate(default_flickr_run, flickr, split="dev", rerank="none")[0].metrics
    graded = api.evaluate(default_flickr_run, flickr, split="dev", as_submitted=True)[0]
    assert (graded.gallery, graded.queries) == (1000, 5000) and graded.scoring == "as submitted"
    assert abs(graded.metrics["recall@1"] - own["recall@1"]) <= 0.015
    dev = flickr.select("dev")
    point = api.predict(default_flickr_run, dev.captions, target="point")
    unit_point = point / np.linalg.norm(point, axis=1, keepdims=True)
    unit_images = dev.images / np.linalg.norm(dev.images, axis=1, keepdims=True)
    scores = unit_point @ unit_images.T
    true = scores[np.arange(len(scores)), dev.caption_image]
    point_r1 = float(np.mean((scores >= true[:, None]).sum(1) == 1))
    assert point_r1 < graded.metrics["recall@1"] - 0.1  # why the point is not what a submission holds
