"""Training configuration: typed dataclasses, read from YAML, overridden by ``key=value`` pairs.

Unknown keys and wrongly typed values are errors that name the valid keys, so a typo in a config
never silently trains the default recipe.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


@dataclass
class ModelConfig:
    name: str = "resmlp"  # ridge | procrustes | mlp | resmlp | dual | set
    hidden: int = 3072
    depth: int = 1
    dropout: float = 0.535
    activation: str = "gelu"
    ridge_alpha: float = 1.0
    init: str = "procrustes"  # closed-form start of resmlp / set heads: procrustes | ridge
    standardize_target: bool = True  # z-score image features with train statistics
    # dual projection heads (name: dual)
    text_tower: str = "mlp"  # identity | linear | mlp | align | attention | crossattn
    image_tower: str = "mlp"
    shared_dim: int = 512
    freeze_image: bool = False
    momentum: float = 0.0  # > 0: BLIP-style momentum towers (EMA) with distillation
    distill_weight: float = 0.4
    distill_temperature: float = 0.05
    # set-prediction head (name: set)
    slots: int = 6
    slot_dropout: float = 0.1
    aggregation: str = "winner"  # winner | mean
    diversity_weight: float = 0.0
    diversity_margin: float = 0.7
    global_weight: float = 0.0
    global_margin: float = 0.7
    mmd_weight: float = 0.0
    uniformity_weight: float = 0.0


@dataclass
class LossConfig:
    name: str = "infonce"  # mse | cosine | infonce | siglip | contrastive | triplet | set-triplet | set-infonce
    temperature: float = 0.0715
    learnable_temperature: bool = True
    margin: float = 0.2  # contrastive / triplet / set-triplet
    miner: str = "none"  # none | all | hardest | semihard | distance-weighted
    queue_size: int = 4096  # > 0: memory of past images as extra negatives (losses with negatives only)
    hard_negatives: int = 0  # with a queue: keep only the top-k hardest memory negatives
    norm_weight: float = 0.0  # embedding-norm regulariser
    sinkhorn_temperature: float = 0.2  # set-triplet matching
    sinkhorn_iters: int = 10
    sinkhorn_stop_grad: bool = True


@dataclass
class OptimConfig:
    lr: float = 7.08e-4
    weight_decay: float = 0.014
    epochs: int = 20
    batch_size: int = 512
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0


@dataclass
class InferenceConfig:
    """How a run scores by default at evaluation and search time (override with --rerank)."""

    rerank: str = "is"  # none | csls | is | qbnorm | dbnorm | center | whiten
    beta: float = 0.0  # inverted-softmax sharpness; 0 = 1 / the learnt temperature (20 when none is learnt)
    k: int = 10  # csls neighbourhood
    bank_size: int = 10000  # training captions kept in the run as the query bank


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    patience: int = 3  # epochs without dev MRR gain before stopping
    dev_fraction: float = 0.1  # used only when the data has no train/dev split column
    eval_chunk: int = 1024
    tensorboard: bool = False  # log per-epoch metrics to RUN/tensorboard

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


TOWERS = ("identity", "linear", "mlp", "align", "attention", "crossattn")
CHOICES = {
    "model.name": ("ridge", "procrustes", "mlp", "resmlp", "dual", "set"),
    "loss.name": ("mse", "cosine", "infonce", "siglip", "contrastive", "triplet", "set-triplet", "set-infonce"),
    "loss.miner": ("none", "all", "hardest", "semihard", "distance-weighted"),
    "model.activation": ("gelu", "relu", "silu", "tanh"),
    "model.text_tower": TOWERS,
    "model.image_tower": TOWERS,
    "model.aggregation": ("winner", "mean"),
    "model.init": ("ridge", "procrustes"),
    "inference.rerank": ("none", "csls", "is", "qbnorm", "dbnorm", "center", "whiten"),
}
POSITIVE = {"optim.lr", "optim.epochs", "optim.batch_size", "model.hidden", "loss.temperature", "eval_chunk"}


def _coerce(key: str, kind: type, value):
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind in (int, float):
        try:
            number = kind(value) if not isinstance(value, str) else kind(float(value)) if kind is int else kind(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{key} must be a number ({kind.__name__}), got {value!r}") from err
        if kind is int and float(value) != int(number):
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return number
    return str(value)


def _apply(target, data: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(target))
    valid = {f.name for f in fields(target)}
    for key, value in data.items():
        full = prefix + key
        if key not in valid:
            raise ConfigError(f"unknown config key {full!r}; valid keys here: {sorted(prefix + v for v in valid)}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} is a section; give it a mapping, got {value!r}")
            _apply(current, value, full + ".")
        else:
            setattr(target, key, _coerce(full, hints[key], value))


def validate(config: TrainConfig) -> TrainConfig:
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
    for key in POSITIVE:
        obj = config
        for part in key.split("."):
            obj = getattr(obj, part)
        if obj <= 0:
            raise ConfigError(f"{key} must be positive, got {obj}")
    if not 0 <= config.model.dropout < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {config.model.dropout}")
    if not 0 <= config.optim.warmup_fraction < 1:
        raise ConfigError(f"optim.warmup_fraction must be in [0, 1), got {config.optim.warmup_fraction}")
    set_loss = config.loss.name.startswith("set-")
    if set_loss != (config.model.name == "set"):
        raise ConfigError(
            "set-triplet / set-infonce losses go with model.name=set, and model.name=set needs one of them"
        )
    if config.model.name == "dual" and config.loss.name in ("mse", "cosine"):
        raise ConfigError("dual heads learn a shared space: use a contrastive loss (infonce, siglip, triplet, ...)")
    if config.model.depth < 1:
        raise ConfigError(f"model.depth must be at least 1, got {config.model.depth}")
    if not (config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:")):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    return config


def parse_overrides(pairs: list[str]) -> dict:
    """``["optim.lr=1e-3", "model.name=mlp"]`` -> nested dict; values parsed as YAML scalars."""
    nested: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} must look like key=value (e.g. optim.lr=1e-3)")
        key, raw = pair.split("=", 1)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else raw
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then the overrides; validated."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of config keys")
        _apply(config, data)
    if overrides:
        _apply(config, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return validate(config)


def config_from_dict(data: dict) -> TrainConfig:
    config = TrainConfig()
    _apply(config, data)
    return validate(config)
