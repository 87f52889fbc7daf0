"""The training loop: it learns, stops early, writes a complete run folder, and resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stitch import api
from stitch.training import ConfigError, Run, RunError, load_config, open_run, train
from stitch.training.run import RunInfo
from stitch.training.trainer import DevEvaluator, warmup_cosine

# a scaled-down model: 64 hidden units want less dropout than the default recipe's 0.535 on 3072
FAST = ["model.hidden=64", "model.dropout=0.1", "optim.batch_size=128", "optim.lr=2e-3"]


def test_trained_resmlp_beats_its_ridge_start(small_data):
    ridge = api.train(small_data, None, overrides=["model.name=ridge"], progress=False)
    res = api.train(small_data, None, overrides=[*FAST, "optim.epochs=12", "patience=12"], progress=False)
    assert res.dev_metrics["mrr"] > ridge.dev_metrics["mrr"] + 0.01
    # the loss falls (checked without the memory queue: while the queue fills it adds negatives, so the
    # loss of the first epochs is not comparable with the later ones)
    overrides = [*FAST, "optim.epochs=12", "patience=12", "loss.queue_size=0"]
    losses = [row["train_loss"] for row in api.train(small_data, None, overrides=overrides, progress=False).history]
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("name", ["mlp", "procrustes"])
@pytest.mark.parametrize("loss", ["mse", "cosine"])
def test_other_recipes_beat_chance(small_data, name, loss):
    if name == "procrustes" and loss == "cosine":
        pytest.skip("closed-form: the loss does not apply")
    fast = FAST if name == "mlp" else [o for o in FAST if not o.startswith("model.")]  # procrustes has no layers
    overrides = [*fast, f"model.name={name}", f"loss.name={loss}", "optim.epochs=10", "optim.batch_size=64"]
    result = api.train(small_data, None, overrides=overrides, progress=False)
    n_dev = int((small_data.image_split == "dev").sum())
    assert result.dev_metrics["mrr"] > 4 * (np.log(n_dev) + 0.58) / n_dev  # well above the random MRR


def test_run_folder_is_complete_and_reloads_to_the_same_predictions(tmp_path, small_data):
    run = tmp_path / "run"
    result = api.train(small_data, None, out=run, overrides=[*FAST, "optim.epochs=3"], progress=False)
    for name in ("model.safetensors", "config.json", "metrics.csv", "checkpoint.pt", "summary.json"):
        assert (run / name).exists(), name
    opened = open_run(run)
    model, info = opened.model, opened.info
    assert info.config.model.hidden == 64 and info.meta["split"] == "the file's split column"
    assert RunInfo.read(run).config.model.hidden == 64 and not model.training
    assert result.run.path == run and result.run.config.model.hidden == 64
    x = torch.tensor(small_data.captions[:20])
    with torch.no_grad():
        assert torch.allclose(model.embed_queries(x), result.model.embed_queries(x), atol=1e-6)
    assert len(opened.metrics) == 3 and len(Run.load(run).metrics) == 3
    assert np.array_equal(opened.bank, result.run.bank) and opened.temperature == pytest.approx(result.run.temperature)


def test_refuses_to_overwrite_a_run_unless_forced(tmp_path, small_data):
    run = tmp_path / "run"
    api.train(small_data, None, out=run, overrides=["model.name=ridge"], progress=False)
    with pytest.raises(RunError, match="already holds a run"):
        api.train(small_data, None, out=run, overrides=["model.name=ridge"], progress=False)
    api.train(small_data, None, out=run, overrides=["model.name=ridge"], progress=False, force=True)


def test_resume_continues_exactly_where_it_stopped(tmp_path, small_data):
    full = api.train(
        small_data, None, out=tmp_path / "full", overrides=[*FAST, "optim.epochs=4", "patience=9"], progress=False
    )
    part = tmp_path / "part"
    # same recipe, stopped after 2 epochs by patience=0-like cut: train 4-epoch schedule but stop early
    cfg = load_config(None, [*FAST, "optim.epochs=4", "patience=9"])
    stopped = _train_epochs(small_data, cfg, part, epochs=2)
    assert len(Run.load(part).metrics) == 2 and stopped
    # a differing config is refused (nothing in the folder changes) unless forced
    with pytest.raises(ConfigError, match="optim.epochs"):
        api.train(small_data, None, out=part, overrides=[*FAST, "optim.epochs=5", "patience=9"], resume=True)
    assert len(Run.load(part).metrics) == 2
    # resume continues with the run's own config
    resumed = api.train(small_data, None, out=part, resume=True, progress=False)
    a = [float(r["dev_mrr"]) for r in Run.load(tmp_path / "full").metrics]
    b = [float(r["dev_mrr"]) for r in Run.load(part).metrics]
    assert np.allclose(a, b, atol=1e-6)
    assert resumed.dev_metrics["mrr"] == pytest.approx(full.dev_metrics["mrr"], abs=1e-6)


def _train_epochs(data, cfg, run_dir, epochs):
    """Interrupt training after ``epochs`` epochs, as a crash would."""
    calls = {"n": 0}
    original = DevEvaluator.__call__

    def crashing(self, *args, **kwargs):
        if calls["n"] == epochs:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, *args, **kwargs)

    DevEvaluator.__call__ = crashing
    try:
        train(data, cfg, run_dir=run_dir, progress=False)
    except KeyboardInterrupt:
        return True
    finally:
        DevEvaluator.__call__ = original
    return False


def test_early_stopping_keeps_the_best_epoch(small_data):
    result = api.train(
        small_data, None, overrides=[*FAST, "optim.lr=0.05", "optim.epochs=10", "patience=2"], progress=False
    )
    mrrs = [row["dev_mrr"] for row in result.history]
    assert result.best_epoch == int(np.argmax(mrrs))
    assert result.dev_metrics["mrr"] == pytest.approx(max(mrrs), abs=1e-6)
    assert len(mrrs) <= result.best_epoch + 3


def test_warmup_then_cosine_schedule():
    f = warmup_cosine(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5, abs=0.02) and f(100) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("rerank", ["is", "csls"])
def test_per_epoch_scored_mrr_is_what_evaluate_reports(small_data, rerank):
    overrides = [*FAST, "optim.epochs=3", "patience=9", f"inference.rerank={rerank}", "inference.beta=20"]
    result = api.train(small_data, None, overrides=overrides, progress=False)
    key = f"dev_mrr_{rerank}"
    assert all(key in row for row in result.history)
    best = next(row for row in result.history if row["epoch"] == result.best_epoch)
    dev = small_data.split("dev")
    assert best[key] == pytest.approx(api.evaluate(result, dev)[0].metrics["mrr"], abs=1e-6)
    assert best[key] == pytest.approx(result.dev_reports[0].metrics["mrr"], abs=1e-6)
    assert best["dev_mrr"] == pytest.approx(api.evaluate(result, dev, rerank="none")[0].metrics["mrr"], abs=1e-6)
    assert best["dev_mrr"] == pytest.approx(result.dev_metrics["mrr"], abs=1e-6)
    plain = api.train(small_data, None, overrides=[*FAST, "optim.epochs=1", "inference.rerank=none"], progress=False)
    assert not any(k.startswith("dev_mrr_") for k in plain.history[0])


def test_a_run_that_never_beats_its_closed_form_start_says_so(small_data, monkeypatch, caplog):
    """The start (the closed-form map the residual network begins as) is scored before training; when no
    epoch beats it the run says so, instead of keeping a worse epoch in silence."""
    real, calls = DevEvaluator.scores, []

    def start_scores_high(self, model, temperature):
        out = real(self, model, temperature)
        calls.append(out["mrr"])
        return {**out, "mrr": 0.999} if len(calls) == 1 else out  # as if the closed form ranked nearly perfectly

    monkeypatch.setattr(DevEvaluator, "scores", start_scores_high)
    result = api.train(small_data, None, overrides=[*FAST, "optim.epochs=2"], progress=False)
    assert len(calls) == 3  # the start, then one evaluation an epoch
    assert "no epoch beat the closed-form start: dev MRR (cosine) 0.9990 before training" in caplog.text
    assert f"the run keeps epoch {result.best_epoch}" in caplog.text


def test_scoring_the_start_leaves_training_unchanged(small_data, monkeypatch):
    import stitch.training.trainer as trainer

    runs = []
    for scored in (True, False):
        monkeypatch.setattr(trainer, "_has_closed_form_start", lambda config, scored=scored: scored)
        torch.manual_seed(0)
        runs.append(api.train(small_data, None, overrides=[*FAST, "optim.epochs=2"], progress=False))
    one, two = (r.run.model.state_dict() for r in runs)
    assert all(torch.equal(one[k], two[k]) for k in one)
    untimed = [[{k: v for k, v in row.items() if k != "seconds"} for row in r.history] for r in runs]
    assert untimed[0] == untimed[1]  # every figure of every epoch; only the wall time may differ
