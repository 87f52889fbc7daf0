"""A run: its model, config, query bank and the folder that holds them (as a model is a
``SentenceTransformer``).

The folder holds ``model.safetensors`` (best epoch), ``config.json`` (the config, dimensions, split,
data), ``metrics.csv`` (one row per epoch, after one per self-learning round of a run with unpaired pools),
``checkpoint.pt`` (resume state), ``bank.safetensors`` (training captions for hubness-aware scoring, and the
learnt temperature) and ``summary.json``.

``metrics.csv`` columns. An epoch's row: ``epoch``, ``train_loss``, ``dev_mrr`` and ``dev_recall@1`` (plain
cosine), ``dev_mrr_<scoring>`` (the run's own scoring), ``lr``, ``seconds`` and the loss's logged scalars
(``temperature``). A self-learning round's row (runs trained with unpaired pools), its ``epoch`` empty:
``round`` (1, 2, ...), ``pseudo_pairs`` (how many the round drew), ``pseudo_precision`` (the share whose image is
the caption's own, known only when both pools come from one paired file; empty otherwise, and never used to
fit), ``pseudo_score`` (their mean confidence) and ``seconds``. A learnt recipe trains on the last round's
pseudo-pairs.
Weights load with ``safetensors`` and checkpoints with ``torch.load(weights_only=True)``: opening a run
never executes code from it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from stitch.errors import StitchError
from stitch.io.atomic import atomic_write, atomic_write_text
from stitch.retrieval.scorer import Scorer
from stitch.training.config import ConfigError, TrainConfig, config_from_dict
from stitch.translators import Translator, build_model

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.csv"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
BANK = "bank.safetensors"
CARD = "README.md"  # the model card (stitch.training.card)
RUN_FILES = (WEIGHTS, CONFIG, METRICS, CHECKPOINT, SUMMARY, BANK, CARD)


class RunError(StitchError, ValueError):
    """A run folder is missing, incomplete, or does not fit what was asked of it."""


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

    @classmethod
    def read(cls, run_dir: Path) -> RunInfo:
        path = run_dir / CONFIG
        if not path.exists():
            raise RunError(f"{run_dir} is not a stitch run: {CONFIG} is missing")
        try:
            body = json.loads(path.read_text())
            config = config_from_dict(body.pop("config"))
            return cls(config, int(body.pop("text_dim")), int(body.pop("image_dim")), body)
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise RunError(f"{path} is not a valid run config: {err}") from err


@dataclass
class Checkpoint:
    """Everything ``--resume`` needs to continue exactly where an epoch ended."""

    model: dict
    loss: dict
    optimizer: dict
    scheduler: dict
    sampler: torch.Tensor
    torch_rng: torch.Tensor
    epoch: int
    best: float
    best_epoch: int
    stale: int
    best_model: dict | None

    def state(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_state(cls, state: dict, path: Path) -> Checkpoint:
        missing = [f.name for f in fields(cls) if f.name not in state]
        if missing:
            raise RunError(f"{path} is not a stitch checkpoint of this version: missing {missing}")
        return cls(**{f.name: state[f.name] for f in fields(cls)})


class Run:
    """A model with its config, query bank and learnt temperature; ``path`` is its folder (None in memory)."""

    def __init__(
        self,
        model: Translator,
        info: RunInfo,
        path: str | Path | None = None,
        bank: np.ndarray | None = None,
        temperature: float | None = None,
    ) -> None:
        self.model, self.info, self.bank, self.temperature = model, info, bank, temperature
        self.path = None if path is None else Path(path)

    @property
    def config(self) -> TrainConfig:
        return self.info.config

    @property
    def name(self) -> str:
        return self.path.name if self.path is not None else "in-memory run"

    # -- opening and creating --------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> Run:
        """The trained run in ``path`` (model in eval mode on ``device``)."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path} is not a run folder")
        info = RunInfo.read(path)
        model = build_model(info.config.model, info.text_dim, info.image_dim)
        model.load_state_dict(_read_weights(path, model))
        bank, temperature = _read_bank(path)
        return cls(model.to(device).eval(), info, path, bank, temperature)

    @staticmethod
    def create(path: str | Path, force: bool = False) -> Path:
        """An empty folder for a new run; an existing run is replaced only with ``force``."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} exists and is not a folder")
        if path.exists() and any(path.iterdir()) and not force and not is_unfinished(path):
            if (path / CHECKPOINT).exists():
                raise RunError(f"{path} already holds a run; pass --resume to continue it or --force to replace it")
            state = "a run" if (path / CARD).exists() else f"a run that did not finish (no {CARD})"
            raise RunError(f"{path} already holds {state}, with no {CHECKPOINT} to resume; pass --force to replace it")
        for name in RUN_FILES:
            (path / name).unlink(missing_ok=True)
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- what a run is used for ------------------------------------------------------------------
    def scorer(
        self,
        rerank: str | None = None,
        params: dict | None = None,
        bank: np.ndarray | None = None,
        device: str | torch.device = "cpu",
    ) -> Scorer:
        """The run's scoring (its ``inference.rerank`` unless ``rerank`` names another), unfitted.

        ``bank`` (raw caption embeddings) replaces the run's kept training captions; it must not hold
        the queries being evaluated."""
        name = rerank if rerank is not None else self.config.inference.rerank
        captions = bank if bank is not None else self.bank
        return Scorer.configured(self.model, name, params, self.config.inference, self.temperature, captions, device)

    @property
    def metrics(self) -> list[dict]:
        """The rows of ``metrics.csv`` as numbers (``pandas.DataFrame(run.metrics)`` plots them): one per
        self-learning round (``epoch`` None, ``round`` set), then one per epoch (see the module's column list);
        empty in memory or before anything was written; a blank cell is None."""
        if self.path is None or not (self.path / METRICS).exists():
            return []
        with (self.path / METRICS).open() as handle:
            return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]

    def _repr_html_(self) -> str:
        """A notebook shows the run: what it is, and its last epoch's figures."""
        import html

        last = self.metrics[-1] if self.metrics else {}
        figures = ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k.startswith("dev_") and isinstance(v, float))
        return f"<p><b>{html.escape(repr(self))}</b></p><p>last epoch: {html.escape(figures or 'none recorded')}</p>"

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "in memory"
        kind, dims = self.config.model.name, f"{self.info.text_dim}->{self.info.image_dim}"
        return f"Run({where!r}, model {kind} {dims}, scoring {self.config.inference.rerank})"

    @property
    def run_id(self) -> str:
        """A content hash of the weights and config: indexes record it and refuse other runs."""
        digest = hashlib.sha256(self.info.to_json().encode())
        for key, value in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    # -- writing (training only) -----------------------------------------------------------------
    def save_info(self) -> None:
        atomic_write_text(self.path / CONFIG, self.info.to_json())

    def save_weights(self) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        atomic_write(self.path / WEIGHTS, lambda tmp: save_file(state, str(tmp)))

    def append_metrics(self, row: dict) -> None:
        """Add one epoch's row to the metrics CSV (rewritten atomically)."""
        rows = self.metrics + [dict(row)]
        header = list(dict.fromkeys(k for r in rows for k in r))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path / METRICS, buffer.getvalue())

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        atomic_write(self.path / CHECKPOINT, lambda tmp: torch.save(checkpoint.state(), tmp))

    def load_checkpoint(self) -> Checkpoint:
        path = self.path / CHECKPOINT
        if not path.exists():
            raise RunError(f"cannot resume: {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise RunError(f"{path} cannot be loaded safely (truncated or corrupt?): {err}") from err
        return Checkpoint.from_state(state, path)

    def save_bank(self) -> None:
        """Keep raw training captions as the run's query bank for hubness-aware scoring."""
        state = {"captions": torch.as_tensor(self.bank, dtype=torch.float32).contiguous()}
        meta = {"temperature": "" if self.temperature is None else repr(float(self.temperature))}
        atomic_write(self.path / BANK, lambda tmp: save_file(state, str(tmp), metadata=meta))

    def write_summary(self, body: dict) -> None:
        atomic_write_text(self.path / SUMMARY, json.dumps(body, indent=2, allow_nan=False))


UNFINISHED_FILES = {CONFIG, METRICS, SUMMARY, BANK, "tensorboard"}  # what a run writes before its first weights


def is_unfinished(path: Path) -> bool:
    """Whether ``path`` holds only what a training that failed before its first weights leaves (its
    ``config.json``, TensorBoard logs): nothing to resume or keep, so a re-run may start afresh there."""
    names = {entry.name for entry in path.iterdir()}
    return not names & {WEIGHTS, CHECKPOINT} and names <= UNFINISHED_FILES


def _number(cell: str | None) -> int | float | str | None:
    """A metrics.csv cell as the number it holds (int where whole, as epochs are); other text as it is."""
    if cell is None or cell == "":
        return None
    try:
        value = float(cell)
    except ValueError:
        return cell
    return int(value) if value.is_integer() and "." not in cell and "e" not in cell.lower() else value


def read_resume_config(path: str | Path, overrides: TrainConfig | None, force_config: bool) -> TrainConfig:
    """The config a resumed run continues with: its own. A differing ``overrides`` config is refused
    (listing the differences) unless ``force_config``; nothing in the folder changes here."""
    path = Path(path)
    if path.is_dir() and (path / CONFIG).exists() and is_unfinished(path):
        raise RunError(
            f"cannot resume: {path} holds no {CHECKPOINT}: its training stopped before the first epoch was saved; "
            "run the same command without --resume to start it again"
        )
    if not (path / CHECKPOINT).exists():
        raise RunError(f"cannot resume: {path} has no {CHECKPOINT} (finished runs drop nothing; was it trained?)")
    own = RunInfo.read(path).config
    if overrides is None:
        return own
    differences = _differences(own.to_dict(), overrides.to_dict())
    if differences and not force_config:
        listed = ", ".join(f"{k}: run {a!r} vs given {b!r}" for k, a, b in differences)
        raise ConfigError(
            f"--resume continues the run's own config; the given one differs ({listed}); "
            "drop the overrides or pass --force-config"
        )
    return overrides if differences else own


def _differences(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for key in a:
        if isinstance(a[key], dict):
            out += _differences(a[key], b.get(key, {}), f"{prefix}{key}.")
        elif a[key] != b.get(key):
            out.append((prefix + key, a[key], b.get(key)))
    return out


def _read_weights(path: Path, model: Translator) -> dict:
    weights = path / WEIGHTS
    if not weights.exists():
        raise RunError(f"{path} has no {WEIGHTS}; was training interrupted before the first epoch?")
    try:
        state = load_file(str(weights))
    except Exception as err:  # safetensors raises its own error type for corrupt files
        raise RunError(f"{weights} cannot be read (truncated or corrupt?): {err}") from err
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RunError(f"{weights} does not match the config: missing {missing}, unexpected {unexpected}")
    return state


def _read_bank(path: Path) -> tuple[np.ndarray | None, float | None]:
    from safetensors import safe_open

    bank = path / BANK
    if not bank.exists():
        return None, None
    try:
        with safe_open(str(bank), framework="pt") as handle:
            captions = handle.get_tensor("captions").numpy()
            temperature = (handle.metadata() or {}).get("temperature", "")
    except Exception as err:
        raise RunError(f"{bank} cannot be read (truncated or corrupt?): {err}") from err
    return captions, float(temperature) if temperature else None


def round_rows(rounds: list[dict]) -> list[dict]:
    """``metrics.csv`` rows of self-learning rounds (the log's round 0, the start, drew no pairs: left out)."""
    return [
        {
            "epoch": None,
            "round": row["round"],
            "pseudo_pairs": row["pseudo_pairs"],
            "pseudo_precision": row["precision"],
            "pseudo_score": row["mean_score"],
            "seconds": round(float(row["seconds"]), 2),
        }
        for row in rounds
        if row["round"] > 0
    ]


def epoch_rows(rows: list[dict]) -> list[dict]:
    """The epochs' rows of ``metrics.csv`` rows (self-learning rounds left out)."""
    return [row for row in rows if row.get("epoch") is not None]


def round_rows_of(rows: list[dict]) -> list[dict]:
    """The self-learning rounds' rows of ``metrics.csv`` rows."""
    return [row for row in rows if row.get("epoch") is None and row.get("round") is not None]


def run_summary(best_epoch: int, metrics: dict, split: str, scoring: str) -> dict:
    """The body of ``summary.json``: the best epoch's dev metrics with their protocol."""
    return {
        "best_epoch": best_epoch,
        "dev": metrics,
        "split": split,
        "protocol": f"text->image, full dev gallery, {scoring} scores, ranks pessimistic on ties",
    }


__all__ = ["Checkpoint", "Run", "RunError", "RunInfo", "read_resume_config", "run_summary"]
