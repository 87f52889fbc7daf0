"""Ensembles rank like the mean of their members' cosine scores, and refuse incompatible members."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stitch import api
from stitch.cli import main
from stitch.training import RunError, open_run
from stitch.training.ensemble import ENSEMBLE, EnsembleRun, read_ensemble, write_ensemble
from stitch.translators.ensemble import Ensemble

FAST = ["model.hidden=32", "optim.epochs=3", "optim.batch_size=128"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_data):
    root = tmp_path_factory.mktemp("ens")
    api.train(small_data, None, out=root / "a", overrides=[*FAST, "seed=1"], progress=False)
    api.train(small_data, None, out=root / "b", overrides=["model.name=ridge", "model.ridge_alpha=10"], progress=False)
    return root


def test_ensemble_scores_are_the_mean_of_member_scores(runs, small_data):
    assert main(["ensemble", str(runs / "a"), str(runs / "b"), "--out", str(runs / "ens"), "--weights", "1", "3"]) == 0
    ens_run = open_run(runs / "ens")
    assert isinstance(ens_run, EnsembleRun) and isinstance(ens_run.model, Ensemble)
    ens, a, b = ens_run.model, open_run(runs / "a").model, open_run(runs / "b").model
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


def test_write_ensemble_refuses_run_folders_members_and_bad_weights(runs, tmp_path):
    weights_before = (runs / "a" / "model.safetensors").read_bytes()
    with pytest.raises(RunError, match="holds a trained run"):
        write_ensemble(runs / "a", [runs / "a", runs / "b"])
    assert not (runs / "a" / ENSEMBLE).exists()
    assert (runs / "a" / "model.safetensors").read_bytes() == weights_before
    ens = write_ensemble(tmp_path / "ens", [runs / "a", runs / "b"])
    with pytest.raises(RunError, match="member of itself"):
        write_ensemble(ens, [ens, runs / "a"], force=True)
    assert read_ensemble(ens) == ([(runs / "a").resolve(), (runs / "b").resolve()], [1.0, 1.0])
    for bad in ([-1.0, 2.0], [0.0, 0.0], [float("nan"), 1.0], [float("inf"), 1.0]):
        with pytest.raises(ValueError, match="finite, non-negative and not all zero"):
            write_ensemble(tmp_path / "bad", [runs / "a", runs / "b"], bad)
    assert not (tmp_path / "bad" / ENSEMBLE).exists()
    assert (
        main(["ensemble", str(runs / "a"), str(runs / "b"), "--out", str(tmp_path / "bad"), "--weights", "0", "0"]) == 2
    )
    assert not (tmp_path / "bad" / ENSEMBLE).exists()
