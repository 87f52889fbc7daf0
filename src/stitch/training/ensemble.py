"""Ensemble runs: several runs (seeds, folds or recipes) combined into one predictor folder.

An ensemble folder holds ``ensemble.json`` (member run folders, weights, how they combine) and opens as an
:class:`EnsembleRun`, which has a run's interface (model, config, bank, scorer, run_id), so it works
wherever a run folder does: evaluate, predict, index, search, serve, report. ``train_ensemble`` trains
the members of ``config.ensemble`` (folds by image, seeds) inside one ``stitch train``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from stitch.data import PairedEmbeddings
from stitch.data.splits import image_folds, train_dev_split
from stitch.io.atomic import atomic_write_text
from stitch.training.config import EnsembleConfig, TrainConfig, config_from_dict, load_config
from stitch.training.device import resolve_device
from stitch.training.distributed import Distributed
from stitch.training.run import CONFIG, SUMMARY, Run, RunError, epoch_rows, run_summary
from stitch.training.trainer import TrainResult, dev_tables, train
from stitch.translators.ensemble import Ensemble, Fusion, check_weights
from stitch.translators.moments import ColumnMoments

ENSEMBLE = "ensemble.json"
MEMBERS = "members"
RECIPE = "ensemble-config.json"  # the recipe an ensemble is trained with (its members' configs differ by seed)
COMBINE = {"average": Ensemble, "score": Fusion}  # how members combine: mean translation | mean score


class EnsembleRun(Run):
    """Members combined (``average``: mean unit translation, one space; ``score``: mean cosine score, any
    spaces); config and bank are the first member's, temperature the members' mean."""

    def __init__(
        self, members: list[Run], weights: list[float] | None, path: Path | None = None, combine: str = "average"
    ) -> None:
        if combine not in COMBINE:
            raise RunError(f"members combine by one of {list(COMBINE)}, got {combine!r}")
        weights = check_weights(weights, len(members))
        model = COMBINE[combine]([m.model for m in members], weights)
        temps = [m.temperature for m in members if m.temperature is not None]
        temperature = sum(temps) / len(temps) if temps else None
        info = members[0].info
        info = type(info)(
            info.config, info.text_dim, info.image_dim, {**info.meta, "ensemble": [str(m.path) for m in members]}
        )
        super().__init__(model.eval(), info, path, members[0].bank, temperature)
        self.members, self.weights, self.combine = members, weights, combine

    @property
    def run_id(self) -> str:
        body = json.dumps([[m.run_id for m in self.members], self.weights, self.combine])
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @property
    def metrics(self) -> list[dict]:
        return []


def open_run(path: str | Path, device: str | torch.device = "cpu", _seen: tuple[Path, ...] = ()) -> Run:
    """A run folder or an ensemble folder, opened as a :class:`Run`; a member cycle is an error."""
    path = Path(path)
    resolved = path.resolve()
    if resolved in _seen:
        raise RunError(f"ensemble cycle: {path} is its own member (through {[str(p) for p in _seen]})")
    if not (path / ENSEMBLE).exists():
        return Run.load(path, device)
    members, weights, combine = read_ensemble(path)
    runs = [open_run(m, device, _seen + (resolved,)) for m in members]
    return EnsembleRun(runs, weights, path, combine)


def read_ensemble(folder: str | Path) -> tuple[list[Path], list[float], str]:
    """Member folders (relative ones are inside ``folder``), weights and how they combine."""
    path = Path(folder) / ENSEMBLE
    try:
        body = json.loads(path.read_text())
        members = [Path(folder) / p if not Path(p).is_absolute() else Path(p) for p in body["members"]]
        return members, [float(w) for w in body["weights"]], str(body.get("combine", "average"))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise RunError(f"{path} is not a valid ensemble file: {err}") from err


def write_ensemble(
    out: str | Path,
    runs: list[str | Path],
    weights: list[float] | None = None,
    force: bool = False,
    combine: str = "average",
) -> Path:
    """Check the members load together, then write the ensemble folder.

    ``out`` must be a new folder or an ensemble folder (replaced only with ``force``): never a trained
    run, and never one of its own members. Members inside ``out`` are recorded relative to it, so the
    folder can move."""
    out = Path(out)
    if (out / CONFIG).exists():
        raise RunError(f"{out} holds a trained run; an ensemble needs a folder of its own")
    if (out / ENSEMBLE).exists() and not force:
        raise FileExistsError(f"{out} already holds an ensemble; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise RunError(f"{out} exists and is not a folder")
    if any(Path(r).resolve() == out.resolve() for r in runs):
        raise RunError(f"{out} cannot be a member of itself")
    weights = check_weights(weights, len(runs))
    members = [open_run(r, _seen=(out.resolve(),)) for r in runs]
    try:
        EnsembleRun(members, weights, combine=combine)  # validates that the members can combine this way
    except ValueError as err:
        hint = " (members from other spaces combine by score: --combine score)" if combine == "average" else ""
        raise RunError(f"{err}{hint}") from err
    out.mkdir(parents=True, exist_ok=True)
    body = {"members": [_member_path(out, r) for r in runs], "weights": weights, "combine": combine}
    atomic_write_text(out / ENSEMBLE, json.dumps(body, indent=2))
    return out


def _member_path(out: Path, run: str | Path) -> str:
    run = Path(run).resolve()
    return str(run.relative_to(out.resolve())) if run.is_relative_to(out.resolve()) else str(run)


def train_ensemble(
    data,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    **kwargs,
) -> TrainResult:
    """The members of ``config.ensemble``, each a full run of the recipe, averaged and evaluated on the dev
    images no member trained on.

    With ``folds`` = K the training images are dealt into K folds (by connected component, see
    :func:`~stitch.data.splits.image_folds`); member k trains on the others, early-stops on fold k and
    reports its out-of-fold metrics; all members z-score with the whole training set's statistics so their
    translations average in one space. ``seeds`` members per fold differ by seed. Members live in
    ``RUN/members/NAME``; ``--resume`` keeps finished members and resumes an interrupted one."""
    out = None if run_dir is None else Path(run_dir)
    device = resolve_device(config.device if config is not None else "auto")
    world = Distributed.from_env(device)  # under torchrun every rank trains every member; rank 0 writes
    if world.is_main or resume:
        config = _prepare_folder(out, config, resume, force)
    world.barrier()
    spec, member_config = config.ensemble, dataclasses.replace(config, ensemble=EnsembleConfig())
    train_part, dev_set, how = _split(data, config)
    folds, moments = None, None
    if spec.folds:
        folds = image_folds(train_part, spec.folds, config.seed)
        moments = ColumnMoments.of_chunks(train_part.shards().image_chunks())
    results, names = [], []
    for fold in range(max(spec.folds, 1)):
        for seed in range(config.seed, config.seed + spec.seeds):
            names.append(f"fold{fold}-seed{seed}" if folds is not None else f"seed{seed}")
            folder = None if out is None else out / MEMBERS / names[-1]
            member_data = data
            if folds is not None:
                member_data = dataclasses.replace(train_part, image_split=np.where(folds == fold, "dev", "train"))
            member = dataclasses.replace(member_config, seed=seed)
            results.append(_member(member_data, member, folder, moments, **kwargs))
    for partner in spec.partners:
        names.append(f"partner-{partner}")
        folder = None if out is None else out / MEMBERS / names[-1]
        results.append(_member(data, _partner_config(config, partner), folder, None, **kwargs))
    ensemble, body = _combine(results, names, spec, out, world.is_main)
    plain, reports, scoring = dev_tables(ensemble, dev_set, world.device(device))
    if out is not None and world.is_main:
        n_folded = 0 if folds is None else len(results) - len(spec.partners)
        summary = _summary(results, names, plain, reports, how, scoring, n_folded)
        atomic_write_text(out / SUMMARY, json.dumps(summary, indent=2))
        atomic_write_text(out / ENSEMBLE, json.dumps(body, indent=2))
    return TrainResult(ensemble, -1, plain, [], how, reports, members=results)


def _partner_config(config: TrainConfig, partner: str) -> TrainConfig:
    """The partner recipe, with the ensemble's seed, device and dev split."""
    from stitch.recipes import recipe_overrides

    own = load_config(None, recipe_overrides(partner))
    keep = ("seed", "device", "amp", "dev_fraction", "max_dev_images", "eval_chunk")
    return dataclasses.replace(own, **{k: getattr(config, k) for k in keep})


def _combine(results: list[TrainResult], names: list[str], spec: EnsembleConfig, out: Path | None, writes: bool):
    """The trained members as one run, and its ensemble.json body: the recipe's members averaged (their own
    ``members/average`` folder when there are several), then fused by score with the partners if any."""
    n_partners = len(spec.partners)
    own = results[: len(results) - n_partners]
    paths = [f"{MEMBERS}/{n}" for n in names]
    if not n_partners:
        return EnsembleRun([r.run for r in own], None, out), {"members": paths, "weights": [1.0] * len(own)}
    main, main_path = own[0].run, paths[0]
    if len(own) > 1:
        main_path = f"{MEMBERS}/average"
        main = EnsembleRun([r.run for r in own], None, None if out is None else out / main_path)
        if out is not None and writes:
            inner = {"members": [f"../{n}" for n in names[: len(own)]], "weights": main.weights, "combine": "average"}
            (out / main_path).mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / main_path / ENSEMBLE, json.dumps(inner, indent=2))
    weights = [1.0 - n_partners * spec.partner_weight] + [spec.partner_weight] * n_partners
    fused = EnsembleRun([main, *(r.run for r in results[len(own) :])], weights, out, "score")
    return fused, {"members": [main_path, *paths[len(own) :]], "weights": weights, "combine": "score"}


def _prepare_folder(out: Path | None, config: TrainConfig | None, resume: bool, force: bool) -> TrainConfig:
    """A new (or, with ``force``, emptied) ensemble folder holding its recipe; or the recipe to resume."""
    if out is not None and resume:
        return _resume_config(out, config)
    if out is not None:
        Run.create(out, force)
        (out / ENSEMBLE).unlink(missing_ok=True)
        if (out / MEMBERS).exists():  # --force: the old members go too
            shutil.rmtree(out / MEMBERS)
        atomic_write_text(out / RECIPE, config.to_json())
    return config


def _summary(results, names, plain, reports, how: str, scoring: str, n_folded: int) -> dict:
    """summary.json of an ensemble: its dev metrics, each member's, and the out-of-fold mean of the first
    ``n_folded`` members (K-fold members; their dev set is their held-out fold)."""
    summary = run_summary(-1, reports[0].metrics, how, scoring)
    summary["plain"] = plain
    summary["members"] = [
        {
            "name": n,
            "best_epoch": r.best_epoch,
            "split": r.split,
            scoring: _headline(r.dev_reports[0].metrics),
            "cosine": _headline(r.dev_metrics),
        }
        for n, r in zip(names, results)
    ]
    if n_folded:
        folded = results[:n_folded]
        summary["out_of_fold"] = {
            "what": "each member on the training images of its held-out fold (its early-stopping set), averaged",
            scoring: _mean([r.dev_reports[0].metrics for r in folded]),
            "cosine": _mean([r.dev_metrics for r in folded]),
        }
    return summary


def _headline(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("recall@1", "recall@10", "mrr") if k in metrics}


def _mean(rows: list[dict]) -> dict:
    return {k: float(np.mean([r[k] for r in rows])) for k in _headline(rows[0])}


def is_ensemble_folder(path: str | Path | None) -> bool:
    """Whether ``path`` holds an ensemble (finished, or being trained by ``train_ensemble``)."""
    return path is not None and ((Path(path) / ENSEMBLE).exists() or (Path(path) / RECIPE).exists())


def _resume_config(out: Path, config: TrainConfig | None) -> TrainConfig:
    """The ensemble's own recipe; a different one given to ``--resume`` is refused."""
    if not (out / RECIPE).exists():
        raise RunError(f"{out} holds no ensemble being trained ({RECIPE} is missing); nothing to resume")
    own = config_from_dict(json.loads((out / RECIPE).read_text()))
    if config is not None and config.to_dict() != own.to_dict():
        raise RunError(f"{out} was started with another recipe; resume it without a config or overrides")
    return own


def _split(data, config: TrainConfig) -> tuple[PairedEmbeddings | None, PairedEmbeddings, str]:
    """The training pairs (in memory, for folds) and the dev pairs every member is evaluated on together."""
    if not config.ensemble.folds:
        _, dev_set, how = data.holdout(config.dev_fraction, config.seed, config.max_dev_images)
        return None, dev_set, how
    if not data.in_memory:
        raise RunError(
            "a K-fold ensemble deals training images into folds in memory: load the pairs into memory "
            "(ShardedPairs.to_memory()) or train seed members only (ensemble.folds=0)"
        )
    return train_dev_split(data, config.dev_fraction, config.seed, config.max_dev_images)


def _member(data, config: TrainConfig, folder: Path | None, moments, **kwargs) -> TrainResult:
    """One member: re-opened (and re-evaluated) when its folder is finished, resumed when interrupted, else
    trained afresh."""
    if folder is not None and (folder / SUMMARY).exists():
        run = Run.load(folder)
        _, dev_set, how = data.holdout(config.dev_fraction, config.seed, config.max_dev_images)
        plain, reports, _ = dev_tables(run, dev_set, resolve_device(config.device))
        best = json.loads((folder / SUMMARY).read_text())["best_epoch"]
        return TrainResult(run, int(best), plain, epoch_rows(run.metrics), how, reports)  # as a fresh run gives it
    resuming = folder is not None and (folder / "checkpoint.pt").exists()
    return train(data, None if resuming else config, folder, resume=resuming, image_moments=moments, **kwargs)


__all__ = [
    "ENSEMBLE",
    "EnsembleRun",
    "is_ensemble_folder",
    "open_run",
    "read_ensemble",
    "train_ensemble",
    "write_ensemble",
]
