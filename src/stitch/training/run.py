"""A run folder: safetensors weights, the JSON config, per-epoch metrics CSV and a resume checkpoint.

Weights load with ``safetensors`` and checkpoints with ``torch.load(weights_only=True)``: opening a
run never executes code from it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from stitch.io.atomic import atomic_write, atomic_write_text
from stitch.training.config import TrainConfig, config_from_dict
from stitch.translators import StitchModel, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
BANK = "bank.safetensors"


class RunError(ValueError):
    """A run folder is missing or incomplete."""


@dataclass
class RunInfo:
    """What a run folder records besides its weights."""

    config: TrainConfig
    text_dim: int
    image_dim: int
    meta: dict

    def to_json(self) -> str:
        body = {"config": self.config.to_dict(), "text_dim": self.text_dim, "image_dim": self.image_dim, **self.meta}
        return json.dumps(body, indent=2, sort_keys=True, default=str)


def save_weights(model: StitchModel, run_dir: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(run_dir / WEIGHTS, lambda tmp: save_file(state, str(tmp)))


def save_info(info: RunInfo, run_dir: Path) -> None:
    atomic_write_text(run_dir / CONFIG, info.to_json())


def read_info(run_dir: str | Path) -> RunInfo:
    """A run's config and facts; for an ensemble, its first member's (meta lists the members)."""
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        from stitch.training.ensemble import read_ensemble

        members, weights = read_ensemble(run_dir)
        info = read_info(members[0])
        info.meta = {**info.meta, "ensemble": [str(m) for m in members], "weights": weights}
        return info
    path = run_dir / CONFIG
    if not path.exists():
        raise RunError(f"{run_dir} is not a stitch run: {CONFIG} is missing")
    try:
        body = json.loads(path.read_text())
        config = config_from_dict(body.pop("config"))
        return RunInfo(config, int(body.pop("text_dim")), int(body.pop("image_dim")), body)
    except (KeyError, ValueError, TypeError) as err:
        raise RunError(f"{path} is not a valid run config: {err}") from err


def is_ensemble(run_dir: str | Path) -> bool:
    from stitch.training.ensemble import ENSEMBLE

    return (Path(run_dir) / ENSEMBLE).exists()


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[StitchModel, RunInfo]:
    """The trained model of a run (or an ensemble folder), in eval mode, on ``device``."""
    run_dir = Path(run_dir)
    if is_ensemble(run_dir):
        from stitch.training.ensemble import Ensemble, read_ensemble

        members, weights = read_ensemble(run_dir)
        return Ensemble([load_model(m)[0] for m in members], weights).to(device).eval(), read_info(run_dir)
    info = read_info(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.exists():
        raise RunError(f"{run_dir} has no {WEIGHTS}; was training interrupted before the first epoch?")
    model = build_model(info.config.model, info.text_dim, info.image_dim)
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise RunError(f"{weights} cannot be read (truncated or corrupt?): {err}") from err
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RunError(f"{weights} does not match the config: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval(), info


def append_metrics(run_dir: Path, row: dict) -> None:
    """Add one epoch's row to the metrics CSV (rewritten atomically, header from the first row)."""
    path = run_dir / METRICS
    rows = read_metrics(run_dir) if path.exists() else []
    rows.append({k: row[k] for k in row})
    header = list(rows[0].keys())
    for extra in rows[-1]:
        if extra not in header:
            header.append(extra)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    with path.open() as handle:
        return list(csv.DictReader(handle))


def save_checkpoint(run_dir: Path, state: dict) -> None:
    atomic_write(run_dir / CHECKPOINT, lambda tmp: torch.save(state, tmp))


def load_checkpoint(run_dir: Path) -> dict:
    path = run_dir / CHECKPOINT
    if not path.exists():
        raise RunError(f"cannot resume: {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise RunError(f"{path} cannot be loaded safely (truncated or corrupt?): {err}") from err


def save_bank(run_dir: Path, captions, temperature: float | None) -> None:
    """Keep raw training captions as the run's query bank for hubness-aware scoring."""
    state = {"captions": torch.as_tensor(captions, dtype=torch.float32).contiguous()}
    meta = {"temperature": "" if temperature is None else repr(float(temperature))}
    atomic_write(run_dir / BANK, lambda tmp: save_file(state, str(tmp), metadata=meta))


def load_bank(run_dir: str | Path):
    """``(captions, learnt temperature or None)``, or ``(None, None)`` when the run has no bank."""
    from safetensors import safe_open

    if is_ensemble(run_dir):
        from stitch.training.ensemble import read_ensemble

        banks = [load_bank(m) for m in read_ensemble(run_dir)[0]]
        temps = [t for _, t in banks if t is not None]
        kept = next((b for b, _ in banks if b is not None), None)
        return kept, (sum(temps) / len(temps) if temps else None)
    path = Path(run_dir) / BANK
    if not path.exists():
        return None, None
    try:
        with safe_open(str(path), framework="pt") as handle:
            captions = handle.get_tensor("captions").numpy()
            temperature = (handle.metadata() or {}).get("temperature", "")
    except Exception as err:
        raise RunError(f"{path} cannot be read (truncated or corrupt?): {err}") from err
    return captions, float(temperature) if temperature else None
