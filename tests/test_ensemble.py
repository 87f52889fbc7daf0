"""Ensembles rank like the mean of their members' cosine scores, and refuse incompatible members."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stitch import api
from stitch.apps.cli import main
from stitch.data.splits import image_folds
from stitch.training import RunError, open_run
from stitch.training.ensemble import ENSEMBLE, EnsembleRun, read_ensemble, write_ensemble
from stitch.translators.ensemble import Ensemble, Fusion

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
    points = {name: api.predict(runs / name, dev.captions[:4], target="point") for name in ("ens", "a", "b")}
    assert np.allclose(points["ens"], 0.25 * points["a"] + 0.75 * points["b"], atol=1e-4)

    # the direction of the ensemble's own query (the weighted mean of the members' unit queries); the
    # members share the image std, so it is the weighted mean of the members' directions unit(z) / std
    directions = {name: api.predict(runs / name, dev.captions[:4]) for name in ("ens", "a", "b")}
    assert np.allclose(
        directions["ens"],
        0.25 * directions["a"] + 0.75 * directions["b"],
        atol=1e-5,
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
    assert read_ensemble(ens) == ([(runs / "a").resolve(), (runs / "b").resolve()], [1.0, 1.0], "average")
    for bad in ([-1.0, 2.0], [0.0, 0.0], [float("nan"), 1.0], [float("inf"), 1.0]):
        with pytest.raises(ValueError, match="finite, non-negative and not all zero"):
            write_ensemble(tmp_path / "bad", [runs / "a", runs / "b"], bad)
    assert not (tmp_path / "bad" / ENSEMBLE).exists()
    assert (
        main(["ensemble", str(runs / "a"), str(runs / "b"), "--out", str(tmp_path / "bad"), "--weights", "0", "0"]) == 2
    )
    assert not (tmp_path / "bad" / ENSEMBLE).exists()


def test_score_fusion_is_the_weighted_mean_of_cosine_scores_across_spaces(runs, small_data, tmp_path):
    api.train(
        small_data,
        None,
        out=tmp_path / "dual",
        overrides=["model.name=dual", "model.shared_dim=16", "optim.epochs=2", "optim.batch_size=128"],
        progress=False,
    )
    out = tmp_path / "fused"
    assert (
        main(
            [
                "ensemble",
                str(runs / "a"),
                str(tmp_path / "dual"),
                "--out",
                str(out),
                "--combine",
                "score",
                "--weights",
                "3",
                "1",
            ]
        )
        == 0
    )
    fused = open_run(out)
    assert isinstance(fused.model, Fusion) and fused.combine == "score"
    a, dual = open_run(runs / "a").model, open_run(tmp_path / "dual").model
    dev = small_data.split("dev")
    x, y = torch.as_tensor(dev.captions), torch.as_tensor(dev.images)
    with torch.no_grad():

        def cosines(m):
            return F.normalize(m.embed_queries(x), dim=1) @ F.normalize(m.embed_gallery(y), dim=1).T

        expected = 0.75 * cosines(a) + 0.25 * cosines(dual)
        got = F.normalize(fused.model.embed_queries(x), dim=1) @ F.normalize(fused.model.embed_gallery(y), dim=1).T
    assert torch.allclose(got, expected, atol=1e-5)
    owner = dev.caption_image
    expected_mrr = np.mean([1 / (expected[i] >= expected[i, owner[i]]).sum().item() for i in range(len(owner))])
    report = api.evaluate(out, small_data, split="dev", rerank="none")[0]
    assert report.metrics["mrr"] == pytest.approx(expected_mrr, abs=1e-6)
    with pytest.raises(ValueError, match="no image-space predictions"):
        api.predict(out, dev.captions[:2])


def test_kfold_ensemble_trains_one_member_per_fold_in_one_space(small_data, tmp_path):
    out = tmp_path / "kfold"
    result = api.train(small_data, None, out=out, overrides=[*FAST, "ensemble.folds=3", "seed=4"], progress=False)
    names = sorted(p.name for p in (out / "members").iterdir())
    assert names == ["fold0-seed4", "fold1-seed4", "fold2-seed4"]
    train = small_data.split("train")
    folds = image_folds(train, 3, seed=4)
    sizes = np.bincount(folds)
    assert sizes.sum() == train.n_images and sizes.max() - sizes.min() <= 1  # every image once, dealt evenly
    for k, name in enumerate(names):
        info = json.loads((out / "members" / name / "config.json").read_text())
        assert info["train_images"] == int((folds != k).sum()) and info["dev_images"] == int((folds == k).sum())
    members = [open_run(out / "members" / n) for n in names]
    full = train.images
    for m in members:  # every member z-scores with the whole training set's statistics
        assert torch.allclose(m.model.space.mean, torch.as_tensor(full.mean(0)), atol=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["out_of_fold"]) == {"what", "is", "cosine"}
    oof = np.mean([m["is"]["mrr"] for m in summary["members"]])
    assert summary["out_of_fold"]["is"]["mrr"] == pytest.approx(oof)
    report = api.evaluate(out, small_data, split="dev")[0]  # the folder evaluates as the training said
    assert report.metrics["mrr"] == pytest.approx(result.dev_reports[0].metrics["mrr"], abs=1e-6)
    assert summary["dev"]["mrr"] == pytest.approx(report.metrics["mrr"], abs=1e-6)
    pred = api.predict(out, small_data.captions[:3], target="point")
    mean = sum(api.predict(out / "members" / n, small_data.captions[:3], target="point") for n in names) / 3
    assert np.allclose(pred, mean, atol=1e-4)


def test_an_interrupted_ensemble_resumes_without_retraining_finished_members(small_data, tmp_path):
    out = tmp_path / "seeds"
    api.train(small_data, None, out=out, overrides=[*FAST, "ensemble.seeds=2"], progress=False)
    first = (out / "members" / "seed0" / "model.safetensors").read_bytes()
    finished = (out / "members" / "seed1" / "model.safetensors").read_bytes()
    for name in ("ensemble.json", "summary.json"):
        (out / name).unlink()
    (out / "members" / "seed1" / "summary.json").unlink()  # seed1 stopped before its end
    with pytest.raises(RunError, match="already holds a run"):
        api.train(small_data, None, out=out, overrides=[*FAST, "ensemble.seeds=2"], progress=False)
    result = api.train(small_data, None, out=out, resume=True, progress=False)
    assert (out / "members" / "seed0" / "model.safetensors").read_bytes() == first  # kept, not retrained
    assert (out / "members" / "seed1" / "model.safetensors").read_bytes() == finished  # resumed from its end
    assert [m.run.config.seed for m in result.members] == [0, 1]
    assert read_ensemble(out)[0] == [out / "members" / "seed0", out / "members" / "seed1"]
    with pytest.raises(RunError, match="another recipe"):
        api.train(small_data, None, out=out, resume=True, overrides=["ensemble.seeds=3"], progress=False)


def test_an_ensemble_config_is_checked():
    from stitch.training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="ensemble.folds must be 0"):
        load_config(None, ["ensemble.folds=1"])
    with pytest.raises(ConfigError, match="ensemble.seeds"):
        load_config(None, ["ensemble.seeds=0"])
    assert load_config(None, ["ensemble.folds=5", "ensemble.seeds=2"]).ensemble.size == 10


def test_a_partner_recipe_is_trained_in_the_same_command_and_fused_by_score(small_data, tmp_path):
    out = tmp_path / "fused"
    overrides = [*FAST, "ensemble.seeds=2", "ensemble.partner=reverse", "ensemble.partner_weight=0.3"]
    result = api.train(small_data, None, out=out, overrides=overrides, progress=False)
    members, weights, combine = read_ensemble(out)
    assert combine == "score" and weights == [0.7, 0.3]
    assert [m.name for m in members] == ["average", "partner-reverse"]
    assert read_ensemble(out / "members" / "average")[2] == "average"
    partner = open_run(out / "members" / "partner-reverse")
    assert partner.config.model.name == "dual" and partner.config.model.text_tower == "identity"
    assert partner.model.space_dim == small_data.text_dim  # images mapped into the caption space
    fused = open_run(out)
    assert isinstance(fused.model, Fusion) and isinstance(fused.model.members[0], Ensemble)
    report = api.evaluate(out, small_data, split="dev")[0]
    assert report.metrics["mrr"] == pytest.approx(result.dev_reports[0].metrics["mrr"], abs=1e-6)
    by_hand = write_ensemble(tmp_path / "by-hand", [members[0], members[1]], [0.7, 0.3], combine="score")
    again = api.evaluate(by_hand, small_data, split="dev")[0]
    assert again.metrics["mrr"] == pytest.approx(report.metrics["mrr"], abs=1e-6)
    assert [m["name"] for m in json.loads((out / "summary.json").read_text())["members"]] == [
        "seed0",
        "seed1",
        "partner-reverse",
    ]


def test_partners_are_named_single_run_recipes_that_leave_the_members_a_share():
    from stitch.training.config import ConfigError, load_config

    fused = load_config(None, ["ensemble.partner=reverse, shared-heads", "ensemble.partner_weight=0.15"])
    assert fused.ensemble.partners == ["reverse", "shared-heads"] and fused.ensemble.active
    with pytest.raises(ConfigError, match="not a named recipe"):
        load_config(None, ["ensemble.partner=reverse,nope"])
    with pytest.raises(ConfigError, match="itself an ensemble"):
        load_config(None, ["ensemble.partner=fused"])
    with pytest.raises(ConfigError, match="no share"):
        load_config(None, ["ensemble.partner=reverse,shared-heads", "ensemble.partner_weight=0.5"])
