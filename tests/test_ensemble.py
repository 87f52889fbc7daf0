"""Ensembles rank like the mean of their members' cosine scores, and refuse incompatible members."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stitch import api
from stitch.cli import main
from stitch.training import load_model

FAST = ["model.hidden=32", "optim.epochs=3", "optim.batch_size=128"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_data):
    root = tmp_path_factory.mktemp("ens")
    api.train(small_data, None, out=root / "a", overrides=[*FAST, "seed=1"], progress=False)
    api.train(small_data, None, out=root / "b", overrides=["model.name=ridge", "model.ridge_alpha=10"], progress=False)
    return root


def test_ensemble_scores_are_the_mean_of_member_scores(runs, small_data):
    assert main(["ensemble", str(runs / "a"), str(runs / "b"), "--out", str(runs / "ens"), "--weights", "1", "3"]) == 0
    ens, _ = load_model(runs / "ens")
    a, _ = load_model(runs / "a")
    b, _ = load_model(runs / "b")
    dev = small_data.split("dev")
    x, y = torch.as_tensor(dev.captions), torch.as_tensor(dev.images)
    with torch.no_grad():
        g = F.normalize(a.embed_gallery(y), dim=1)
        mean_scores = (
            0.25 * F.normalize(a.embed_queries(x), dim=1) @ g.T + 0.75 * F.normalize(b.embed_queries(x), dim=1) @ g.T
        )
        ens_scores = ens.embed_queries(x) @ g.T
    assert torch.allclose(ens_scores, mean_scores, atol=1e-5)
    owner = dev.caption_image
    expected_mrr = np.mean([1 / (mean_scores[i] >= mean_scores[i, owner[i]]).sum().item() for i in range(len(owner))])
    report = api.evaluate(runs / "ens", small_data, split="dev", rerank="none")[0]
    assert report.metrics["mrr"] == pytest.approx(expected_mrr, abs=1e-6)
    pred = api.predict(runs / "ens", dev.captions[:4])
    assert np.allclose(
        pred,
        0.25 * api.predict(runs / "a", dev.captions[:4]) + 0.75 * api.predict(runs / "b", dev.captions[:4]),
        atol=1e-4,
    )


def test_ensemble_refuses_members_from_other_spaces(runs, small_data, tmp_path):
    api.train(
        small_data,
        None,
        out=tmp_path / "dual",
        overrides=["model.name=dual", "model.shared_dim=16", "optim.epochs=1"],
        progress=False,
    )
    assert main(["ensemble", str(runs / "a"), str(tmp_path / "dual"), "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad" / "ensemble.json").exists()
