"""Tuning: spaces are validated, studies resume without repeating trials, pruning prunes."""

from __future__ import annotations

import csv

import pytest
import yaml

pytest.importorskip("optuna")

from stitch.apps.tuning import (  # noqa: E402
    Confirmation,
    SearchSpace,
    confirm,
    default_values,
    load_space,
    tune,
    validate_space,
)
from stitch.training import ConfigError, load_config  # noqa: E402

FAST = ["optim.epochs=3", "model.hidden=32", "optim.batch_size=128", "inference.bank_size=200"]


def space(**params):
    return SearchSpace(
        params=params or {"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
        base=FAST,
        pruner="none",
    )


def test_shipped_spaces_are_valid():
    from stitch.packaged import packaged_names, resolve

    assert packaged_names("space") == ["default", "heads"]
    for name in packaged_names("space"):
        assert load_space(resolve(name, "space")).params


def test_bad_spaces_are_refused():
    with pytest.raises(ConfigError, match="unknown config key"):
        validate_space(space(**{"optim.lrate": {"type": "float", "low": 1, "high": 2}}))
    with pytest.raises(ConfigError, match="needs low and high"):
        validate_space(space(**{"optim.lr": {"type": "float"}}))
    with pytest.raises(ConfigError, match="categorical needs choices"):
        validate_space(space(**{"model.name": {"type": "categorical"}}))


def test_interrupted_study_resumes_without_repeating_trials(tmp_path, small_data):
    import optuna

    study = tune(small_data, space(), tmp_path, trials=2, seed=0)
    first = [(t.number, t.params["optim.lr"], t.value) for t in study.trials]
    assert len(first) == 2
    again = tune(small_data, space(), tmp_path, trials=3, seed=0)
    trials = [(t.number, t.params["optim.lr"], t.value) for t in again.trials]
    assert trials[:2] == first and len(trials) == 3  # one new trial, the first two untouched
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in again.trials)
    best = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert load_config(None, best).optim.lr == pytest.approx(again.best_params["optim.lr"])
    with (tmp_path / "trials.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3
    tune(small_data, space(), tmp_path, trials=3, seed=0)  # nothing left to do
    assert len(optuna.load_study(study_name="stitch", storage=f"sqlite:///{tmp_path / 'study.db'}").trials) == 3


def test_pruning_really_prunes(tmp_path, small_data):
    import optuna

    bad_and_good = SearchSpace(
        params={"optim.lr": {"type": "categorical", "choices": [3e-3, 2e-3, 1e-3, 1e-7]}},
        base=[
            "model.name=mlp",
            "optim.epochs=6",
            "patience=9",
            "model.hidden=32",
            "optim.batch_size=128",
            "inference.bank_size=200",
        ],
        pruner="median",
        sampler="random",
    )
    study = tune(small_data, bad_and_good, tmp_path, trials=10, seed=0)  # seeded sampler: deterministic
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    hopeless = [t for t in study.trials[3:] if t.params["optim.lr"] == 1e-7]  # after the 3 startup trials
    assert hopeless and all(t.state == optuna.trial.TrialState.PRUNED for t in hopeless)
    assert all(max(t.intermediate_values) < 5 for t in pruned)  # stopped before the last epoch
    assert any(t.state == optuna.trial.TrialState.COMPLETE and t.params["optim.lr"] == 3e-3 for t in study.trials)


def test_trial_zero_is_the_default_recipe_when_it_lies_in_the_space(tmp_path, small_data):
    inside = space(**{"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": True}})
    assert default_values(inside) == {"optim.lr": load_config(None, {}).optim.lr}
    study = tune(small_data, inside, tmp_path, trials=2, seed=0)
    assert study.trials[0].params == {"optim.lr": load_config(None, {}).optim.lr}
    assert study.trials[0].user_attrs["baseline"] is True and "baseline" not in study.trials[1].user_attrs
    with (tmp_path / "trials.csv").open() as handle:
        assert [row["baseline"] for row in csv.DictReader(handle)] == ["True", "False"]
    assert default_values(space()) is None  # lr 5e-4 lies outside [1e-3, 3e-3]
    no_baseline = SearchSpace(params=inside.params, base=FAST, pruner="none", baseline=False)
    fresh = tune(small_data, no_baseline, tmp_path / "fresh", trials=1, seed=0)
    assert "baseline" not in fresh.trials[0].user_attrs


def test_confirm_retrains_default_and_winner_with_new_seeds(tmp_path, small_data):
    from stitch import api

    study = tune(small_data, space(), tmp_path, trials=2, seed=0)
    result = confirm(small_data, space(), study, tmp_path, seeds=2)
    assert result.winner == f"trial {study.best_trial.number}"
    assert [len(v) for v in result.scores.values()] == [2, 2]
    with (tmp_path / "confirm.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["config"], r["seed"]) for r in rows] == [
        ("default", "1"),
        ("default", "2"),
        (result.winner, "1"),
        (result.winner, "2"),
    ]
    # the default's seed-1 score is what training the default with seed 1 gives
    config = load_config(None, [*FAST, "seed=1"])
    direct = api.evaluate(api.train(small_data, config, progress=False), small_data.split("dev"))[0].metrics["mrr"]
    assert result.scores["default"][0] == pytest.approx(direct)


def test_beating_the_default_needs_every_seed_above_it():
    assert Confirmation("trial 4", {"default": [0.30, 0.31, 0.32], "trial 4": [0.33, 0.34, 0.33]}).beats_default
    close = Confirmation("trial 4", {"default": [0.30, 0.31, 0.33], "trial 4": [0.32, 0.34, 0.35]})
    assert close.gap == pytest.approx(0.0233, abs=1e-4) and not close.beats_default


def test_a_study_can_maximise_what_a_grader_gives_the_submission(tmp_path, small_data):
    """``scoring: submitted``: each trial's objective is its predict vectors graded against the raw dev images."""
    from stitch import api

    graded_space = SearchSpace(
        params={"optim.lr": {"type": "float", "low": 1e-3, "high": 3e-3, "log": True}},
        base=FAST,
        pruner="none",
        scoring="submitted",
        baseline=False,
    )
    study = tune(small_data, graded_space, tmp_path, trials=1, seed=0, keep_runs=True)
    run = tmp_path / "runs" / "trial-0000"
    expected = api.evaluate(run, small_data, split="dev", as_submitted=True)[0].metrics["mrr"]
    own = api.evaluate(run, small_data, split="dev")[0].metrics["mrr"]
    assert study.trials[0].value == pytest.approx(expected, abs=1e-9) and expected != pytest.approx(own, abs=1e-6)
