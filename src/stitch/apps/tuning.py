"""``stitch tune``: Optuna search over the recipe space, on the dev split, with pruning and resumable storage.

A search space is YAML::

    objective: mrr          # any dev text->image metric: mrr, recall@1, recall@5, ndcg@10, ...
    scoring: run            # run: the trial's own scoring (inverted softmax); none: plain cosine;
                            # submitted: what a grader gives the trial's predict vectors (graded)
    sampler: tpe            # tpe | random
    pruner: median          # median | hyperband | none (prunes from per-epoch dev MRR)
    startup_trials: 10      # random trials before TPE models the space
    prune_after: 3          # completed trials before the median pruner starts judging
    baseline: true          # trial 0 = the default recipe (under ``base``), so "beats the default" is measured in-study
    base: [optim.epochs=20] # fixed overrides for every trial
    params:
      optim.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
      model.hidden: {type: int, low: 512, high: 4096, step: 512}
      model.name: {type: categorical, choices: [mlp, resmlp]}

Storage is any SQLAlchemy URL (``sqlite:///tune.db`` by default, so several machines can share one
study); re-running the same command continues the study without repeating finished trials, up to
``--trials`` finished or pruned trials in all.
"""

from __future__ import annotations

import csv
import io
import math
import os
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from stitch.apps.study_options import StudyOptions
from stitch.data import PairedEmbeddings
from stitch.data.splits import train_dev_split
from stitch.io.atomic import atomic_write_text
from stitch.training.callbacks import scored_mrr_key
from stitch.training.config import ConfigError, load_config, nest, parse_overrides, parse_pairs

PARAM_TYPES = ("float", "int", "categorical")


@dataclass
class SearchSpace:
    params: dict[str, dict]
    objective: str = "mrr"
    scoring: str = "run"
    sampler: str = "tpe"
    pruner: str = "median"
    startup_trials: int = 10
    prune_after: int = 3
    baseline: bool = True
    base: list[str] = field(default_factory=list)


SPEC_KEYS = {"float": {"type", "low", "high", "log"}, "int": {"type", "low", "high", "step", "log"}}
SPEC_KEYS["categorical"] = {"type", "choices"}
SCORINGS = ("run", "none", "submitted")  # what a trial's dev objective is measured with
LOWER_IS_BETTER = ("median_rank", "mean_rank")  # a study maximises its objective


def load_space(path: str | Path) -> SearchSpace:
    """A search space from YAML, validated whole (:func:`validate_space`) before any trial runs."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"search space {path} does not exist")
    body = yaml.safe_load(path.read_text())
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: a search space is a mapping of settings, got {type(body).__name__}")
    unknown = set(body) - {f.name for f in fields(SearchSpace)}
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}")
    space = SearchSpace(**{**body, "params": body.get("params") or {}, "base": body.get("base") or []})
    try:
        validate_space(space)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err
    return space


def validate_space(space: SearchSpace) -> None:
    """Every setting and parameter spec checked before any trial: a typo (``logg``), a string where a boolean
    belongs, an empty range or an unknown objective would otherwise surface only inside a trial, or never."""
    _check_settings(space)
    if not isinstance(space.params, dict):
        raise ConfigError(f"params must be a mapping of config key -> spec, got {type(space.params).__name__}")
    if not space.params:
        raise ConfigError("the search space has no params")
    for name, spec in space.params.items():
        _check_spec(name, spec)
    # every key must be a real config key: try the first choice / low of each
    load_config(None, [*space.base, *(f"{k}={_example(v)}" for k, v in space.params.items())])


def _check_settings(space: SearchSpace) -> None:
    """The study-wide settings: real booleans and whole numbers, known choices, a metric to maximise."""
    if space.sampler not in ("tpe", "random") or space.pruner not in ("median", "hyperband", "none"):
        raise ConfigError(
            f"sampler must be tpe|random and pruner median|hyperband|none, got {space.sampler!r}, {space.pruner!r}"
        )
    for key in ("startup_trials", "prune_after"):
        value = getattr(space, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}")
    if space.scoring not in SCORINGS:
        raise ConfigError(f"scoring must be one of {list(SCORINGS)}, got {space.scoring!r}")
    if not isinstance(space.baseline, bool):
        raise ConfigError(f"baseline must be true or false (a YAML boolean, unquoted), got {space.baseline!r}")
    if not isinstance(space.base, list) or not all(isinstance(item, str) for item in space.base):
        raise ConfigError(f"base must be a list of key=value overrides, got {space.base!r}")
    _check_objective(space.objective)


def _check_objective(objective: object) -> None:
    """The objective is a dev metric that grows with quality (the study maximises it)."""
    known = objective_names()
    if objective in LOWER_IS_BETTER:
        raise ConfigError(f"objective {objective!r} is lower-is-better and the study maximises; choose {known}")
    if not isinstance(objective, str) or objective not in known:
        raise ConfigError(f"objective must be one of {known}, got {objective!r}")


def objective_names() -> list[str]:
    """Every dev metric a trial can report (one-to-one and many-to-many data), higher is better."""
    import numpy as np

    from stitch.data.relevance import Relevance
    from stitch.retrieval.metrics import rank_metrics, relevance_metrics

    names = set(rank_metrics(np.ones(1))) | set(relevance_metrics(np.ones(1, int), Relevance.from_lists([[0]], 1)))
    return sorted(names - set(LOWER_IS_BETTER))


def _check_spec(name: object, spec: object) -> None:
    """One parameter's spec: known keys for its type, numbers where numbers go, a non-empty range."""
    if not isinstance(name, str) or not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
        raise ConfigError(f"param {name}: give a mapping with type one of {PARAM_TYPES}")
    kind = spec["type"]
    unknown = sorted(set(spec) - SPEC_KEYS[kind])
    if unknown:
        raise ConfigError(f"param {name}: unknown key(s) {unknown} for type {kind}; allowed: {sorted(SPEC_KEYS[kind])}")
    if kind == "categorical":
        _check_choices(name, spec.get("choices"))
    else:
        _check_range(name, spec)


def _check_choices(name: str, choices: object) -> None:
    if not choices:
        raise ConfigError(f"param {name}: categorical needs choices")
    if not isinstance(choices, list) or not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        raise ConfigError(f"param {name}: choices must be a list of plain values (numbers, strings), got {choices!r}")


def _bound(name: str, key: str, value: object, kind: str) -> float:
    """A range end as a number: whole for int; for float also a string such as ``1e-4`` (YAML 1.1 reads an
    exponent without a dot as a string), never a boolean, NaN or infinity."""
    if kind == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    number = int if kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
        whole = "whole " if kind == "int" else ""
        raise ConfigError(f"param {name}: {key} must be a finite {whole}number, got {value!r}")
    return value


def _check_range(name: str, spec: dict) -> None:
    """low <= high, whole numbers for int, log scale only above 0, step a whole number >= 1 (int)."""
    kind = spec["type"]
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"param {name}: {kind} needs low and high")
    low, high = (_bound(name, key, spec[key], kind) for key in ("low", "high"))
    log, step = spec.get("log", False), spec.get("step", 1)
    if low > high:
        raise ConfigError(f"param {name}: low {low} is above high {high}")
    if not isinstance(log, bool):
        raise ConfigError(f"param {name}: log must be true or false (a YAML boolean, unquoted), got {log!r}")
    if log and low <= 0:
        raise ConfigError(f"param {name}: a log scale needs low > 0, got {low}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise ConfigError(f"param {name}: step must be a whole number >= 1, got {step!r}")
    if log and step != 1:
        raise ConfigError(f"param {name}: step {step} cannot be combined with a log scale")


def _example(spec: dict):
    return spec["choices"][0] if spec["type"] == "categorical" else spec["low"]


def suggest(trial, space: SearchSpace) -> dict:
    values = {}
    for name, spec in space.params.items():
        if spec["type"] == "float":
            values[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")))
        elif spec["type"] == "int":
            values[name] = trial.suggest_int(
                name, int(spec["low"]), int(spec["high"]), step=int(spec.get("step", 1)), log=bool(spec.get("log"))
            )
        else:
            values[name] = trial.suggest_categorical(name, list(spec["choices"]))
    return values


def default_values(space: SearchSpace) -> dict | None:
    """The default recipe's value of every searched key (under ``base``), or None if one lies outside the space."""
    config = load_config(None, parse_overrides(space.base))
    values = {}
    for name, spec in space.params.items():
        node = config
        for part in name.split("."):
            node = getattr(node, part)
        if spec["type"] == "categorical":
            inside = node in spec["choices"]
        else:
            inside = float(spec["low"]) <= float(node) <= float(spec["high"])
        if not inside:
            return None
        values[name] = node
    return values


def _merge(space: SearchSpace, values: dict) -> dict:
    """The space's base overrides with a trial's values (dotted keys) on top, as nested config sections."""
    return nest({**parse_pairs(space.base), **values})


def _sampler_and_pruner(space: SearchSpace, seed: int):
    import optuna

    if space.sampler == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.startup_trials)
    else:
        sampler = optuna.samplers.RandomSampler(seed)
    if space.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=space.prune_after, n_warmup_steps=1)
    elif space.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1)
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


def _storage(url: str):
    """SQL storage with heartbeats: trials of a killed process are marked failed and retried once."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", FutureWarning)  # the callback was renamed in optuna 4.9
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry is not None:  # optuna >= 4.9
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=30, grace_period=90, heartbeat_stale_trial_callback=retry(max_retry=1)
            )
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=30,
            grace_period=90,
            failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=1),
        )


def _create_or_load(url: str, study_name: str, sampler, pruner, attempts: int = 5):
    """The study in ``url``, made if new. Workers started together race to create the schema and the study in
    a fresh database; the loser's error is retried (it then finds what the winner made)."""
    import optuna
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.create_study(
                study_name=study_name,
                storage=_storage(url),
                direction="maximize",
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, optuna.exceptions.DuplicatedStudyError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def tune(
    data: PairedEmbeddings,
    space: SearchSpace,
    out_dir: str | Path,
    options: StudyOptions | None = None,
    **settings: Any,
):
    """Run (or continue) the study; write ``best.yaml`` (train-ready) and ``trials.csv`` to ``out_dir``.
    ``settings`` are :class:`StudyOptions`' fields by name (``trials=50``), applied over ``options``."""
    import optuna

    options = replace(options or StudyOptions(), **settings)
    storage, seed, trials = options.storage, options.seed, options.trials
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"
    # workers sharing a study must not draw the same points: a given storage mixes the process id into the seed
    sampler, pruner = _sampler_and_pruner(space, seed if storage is None else hash((seed, os.getpid())) % 2**31)
    study = _create_or_load(url, options.study_name, sampler, pruner)
    if space.baseline and not study.trials:
        baseline = default_values(space)
        if baseline is not None:
            study.enqueue_trial(baseline, user_attrs={"baseline": True})

    def objective(trial) -> float:
        overrides = _merge(space, suggest(trial, space))
        config = load_config(None, overrides)

        def report(epoch: int, row: dict) -> None:
            # prune on the scoring the objective uses: the run's own (e.g. dev_mrr_is) or plain cosine
            scored = scored_mrr_key(row) if space.scoring == "run" else None
            value = float(row[scored or "dev_mrr"])
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch} (dev MRR {value:.4f})")

        run_dir = out_dir / "runs" / f"trial-{trial.number:04d}" if options.keep_runs else None
        metrics = _train_and_score(data, config, space, run_dir, report)
        trial.set_user_attr("dev_metrics", metrics)
        return float(metrics[space.objective])

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    remaining = max(0, trials - len(study.get_trials(deepcopy=False, states=finished)))
    if remaining:
        # ``trials`` is the study's total: workers sharing one storage stop when together they reach it
        stop = optuna.study.MaxTrialsCallback(trials, states=finished)
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=options.timeout,
            n_jobs=options.n_jobs,
            gc_after_trial=True,
            show_progress_bar=False,
            callbacks=[stop],
        )
    write_results(study, space, out_dir)
    return study


def _train_and_score(data: PairedEmbeddings, config, space: SearchSpace, run_dir=None, epoch_callback=None) -> dict:
    """Train one config and score it on the dev images it early-stopped on, under its own scoring or plain
    cosine as the space says (the training images are never scored)."""
    from stitch import api

    result = api.train(data, config, out=run_dir, force=True, progress=False, epoch_callback=epoch_callback)
    metrics = result.dev_reports[0].metrics if space.scoring == "run" else result.dev_metrics
    if space.scoring == "submitted":  # graded on the very dev images the trial early-stopped on
        _, dev, _ = train_dev_split(data, config.dev_fraction, config.seed, config.max_dev_images)
        metrics = api.evaluate(result, dev, as_submitted=True)[0].metrics
    if space.objective not in metrics:
        raise ConfigError(f"objective {space.objective!r} is not a metric; choose from {sorted(metrics)}")
    return metrics


@dataclass
class Confirmation:
    """Dev scores of the default and the best trial over fresh seeds."""

    winner: str
    scores: dict[str, list[float]]

    def mean(self, name: str) -> float:
        return sum(self.scores[name]) / len(self.scores[name])

    @property
    def gap(self) -> float:
        return self.mean(self.winner) - self.mean("default")

    @property
    def beats_default(self) -> bool:
        """Every seed of the winner above every seed of the default (exact rank test, p = 0.05 at 3 vs 3)."""
        return min(self.scores[self.winner]) > max(self.scores["default"])


def confirm(data: PairedEmbeddings, space: SearchSpace, study, out_dir: str | Path, seeds: int = 3) -> Confirmation:
    """Retrain the best trial and the default recipe (both under ``base``) with ``seeds`` fresh seeds.

    A study's best value is a maximum over noisy trials, so it flatters the winner; only a gain larger
    than the seed-to-seed spread is worth adopting. Writes ``confirm.csv``."""
    best = study.best_trial
    winner = f"trial {best.number}"
    candidates = {"default": _merge(space, {}), winner: _merge(space, best.params)}
    scores: dict[str, list[float]] = {}
    lines = [f"config,seed,{space.objective}"]
    for name, overrides in candidates.items():
        for seed in range(1, seeds + 1):
            config = load_config(None, {**overrides, "seed": seed})
            value = float(_train_and_score(data, config, space)[space.objective])
            scores.setdefault(name, []).append(value)
            lines.append(f"{name},{seed},{value:.6f}")
    atomic_write_text(Path(out_dir) / "confirm.csv", "\n".join(lines) + "\n")
    return Confirmation(winner, scores)


def write_results(study, space: SearchSpace, out_dir: Path) -> None:
    import optuna

    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        config = load_config(None, _merge(space, best.params))
        header = (
            f"# best of {len(complete)} completed trials: dev {space.objective} {best.value:.4f} "
            f"(trial {best.number}, scoring: {space.scoring})\n"
        )
        atomic_write_text(out_dir / "best.yaml", header + yaml.safe_dump(config.to_dict(), sort_keys=False))
    buffer = io.StringIO()
    names = sorted({k for t in study.trials for k in t.params})
    writer = csv.writer(buffer)
    writer.writerow(["number", "state", "value", *names, "last_epoch", "baseline"])
    for t in study.trials:
        last = max(t.intermediate_values) if t.intermediate_values else ""
        writer.writerow(
            [
                t.number,
                t.state.name,
                "" if t.value is None else t.value,
                *(t.params.get(n, "") for n in names),
                last,
                bool(t.user_attrs.get("baseline")),
            ]
        )
    atomic_write_text(out_dir / "trials.csv", buffer.getvalue())


def space_yaml(space: SearchSpace) -> str:
    """The resolved search space as YAML (``stitch tune --print-space``)."""
    import dataclasses

    return yaml.safe_dump(dataclasses.asdict(space), sort_keys=False)


def completed(study) -> int:
    """How many of the study's trials finished."""
    return sum(t.state.name == "COMPLETE" for t in study.trials)


def study_lines(study, name: str, out_dir: str | Path) -> list[str]:
    """What a finished study says: its trials by state, and the best one with where its config is."""
    states = [t.state.name for t in study.trials]
    lines = [
        f"study {name}: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, "
        f"{states.count('FAIL')} failed"
    ]
    if states.count("COMPLETE"):
        lines.append(f"best dev value {study.best_value:.4f}: {study.best_params}")
        lines.append(f"train-ready config: {Path(out_dir) / 'best.yaml'}; trial table: {Path(out_dir) / 'trials.csv'}")
    return lines


def confirm_lines(result: Confirmation, space: SearchSpace, out_dir: str | Path) -> list[str]:
    """The confirmation's scores per seed and its verdict."""
    lines = [
        f"  {name:<12} dev {space.objective} " + " ".join(f"{v:.4f}" for v in values)
        for name, values in result.scores.items()
    ]
    verdict = "beats the default on every seed" if result.beats_default else "does not clearly beat the default"
    lines.append(f"  {result.winner} {verdict} (mean Δ {result.gap:+.4f}); {Path(out_dir) / 'confirm.csv'}")
    return lines
