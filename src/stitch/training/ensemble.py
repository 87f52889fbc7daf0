"""Ensemble runs: several runs (seeds or recipes) averaged into one predictor folder.

An ensemble folder holds ``ensemble.json`` (member run folders, weights) and opens as an
:class:`EnsembleRun`, which has a run's interface (model, config, bank, scorer, run_id), so it works
wherever a run folder does: evaluate, predict, index, search, serve, report.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from stitch.io.atomic import atomic_write_text
from stitch.training.run import CONFIG, Run, RunError
from stitch.translators.ensemble import Ensemble, check_weights

ENSEMBLE = "ensemble.json"


class EnsembleRun(Run):
    """Members' translations averaged; config and bank are the first member's, temperature the mean."""

    def __init__(self, members: list[Run], weights: list[float] | None, path: Path | None = None) -> None:
        weights = check_weights(weights, len(members))
        model = Ensemble([m.model for m in members], weights)
        temps = [m.temperature for m in members if m.temperature is not None]
        temperature = sum(temps) / len(temps) if temps else None
        info = members[0].info
        info = type(info)(
            info.config, info.text_dim, info.image_dim, {**info.meta, "ensemble": [str(m.path) for m in members]}
        )
        super().__init__(model.eval(), info, path, members[0].bank, temperature)
        self.members, self.weights = members, weights

    @property
    def run_id(self) -> str:
        body = json.dumps([[m.run_id for m in self.members], self.weights])
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
    members, weights = read_ensemble(path)
    runs = [open_run(m, device, _seen + (resolved,)) for m in members]
    return EnsembleRun(runs, weights, path)


def read_ensemble(folder: str | Path) -> tuple[list[Path], list[float]]:
    path = Path(folder) / ENSEMBLE
    try:
        body = json.loads(path.read_text())
        return [Path(p) for p in body["members"]], [float(w) for w in body["weights"]]
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise RunError(f"{path} is not a valid ensemble file: {err}") from err


def write_ensemble(
    out: str | Path, runs: list[str | Path], weights: list[float] | None = None, force: bool = False
) -> Path:
    """Check the members load together, then write the ensemble folder.

    ``out`` must be a new folder or an ensemble folder (replaced only with ``force``): never a trained
    run, and never one of its own members."""
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
    EnsembleRun(members, weights)  # validates that the members score in one space
    out.mkdir(parents=True, exist_ok=True)
    body = {"members": [str(Path(r).resolve()) for r in runs], "weights": weights}
    atomic_write_text(out / ENSEMBLE, json.dumps(body, indent=2))
    return out


__all__ = ["ENSEMBLE", "EnsembleRun", "open_run", "read_ensemble", "write_ensemble"]
