"""Training configuration: typed dataclasses, read from YAML, overridden by ``key=value`` pairs.

Unknown keys and wrongly typed values are errors that name the valid keys, so a typo in a config
never silently trains the default recipe.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from stitch.bounds import Bound, check
from stitch.errors import UsageError


class ConfigError(UsageError):
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
    hub_bias: float = 1.0  # graded runs: weight of the inverted-softmax bias folded into the query (0 = none)
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
    mse_weight: float = 0.0  # > 0: weight of the mean squared error (per feature) to each caption's own image
    final_temperature: float = 0.0  # > 0 (fixed temperature only): cosine schedule from temperature to this
    symmetric: bool = True  # infonce: add the image->text direction (images ranking captions) to the loss
    teacher: str = ""  # a run or ensemble folder whose batch score distributions the model learns (KL)
    teacher_weight: float = 1.0  # weight of the distillation term (with a teacher)
    teacher_temperature: float = 0.05  # temperature of both softmaxes in the distillation term


@dataclass
class OptimConfig:
    lr: float = 7.08e-4
    weight_decay: float = 0.014
    epochs: int = 20
    batch_size: int = 512
    warmup_fraction: float = 0.05
    grad_clip: float = 1.0
    samples_per_epoch: int = 0  # captions per epoch (dev evaluation, checkpoint); 0 = one full pass over the data
    sampler: str = "random"  # random | grouped (whole images per batch) | hard (grouped, similar images together)
    mixup_alpha: float = 0.0  # > 0: train on caption/image pairs mixed with Beta(alpha, alpha) weights


@dataclass
class InferenceConfig:
    """How a run scores by default at evaluation and search time (override with --rerank)."""

    rerank: str = "is"  # none | csls | is | qbnorm | dbnorm | center | whiten
    beta: float = 0.0  # inverted-softmax sharpness; 0 = 1 / the learnt temperature (20 when none is learnt)
    k: int = 10  # csls neighbourhood
    bank_size: int = 10000  # training captions kept in the run as the query bank


@dataclass
class EnsembleConfig:
    """Members trained inside one ``stitch train`` and averaged into one predictor (training/ensemble.py)."""

    folds: int = 0  # >= 2: K members, each trained on K-1 folds of the training images, early-stopped on the other
    seeds: int = 1  # members per fold (or in all, without folds): seeds seed, seed + 1, ...
    partner: str = ""  # named recipes (stitch.recipes), comma-separated, trained beside the members, fused by score
    partner_weight: float = 0.2  # each partner's share of the fused score; the members keep the rest

    @property
    def size(self) -> int:
        return max(self.folds, 1) * self.seeds

    @property
    def active(self) -> bool:
        """Whether training makes an ensemble folder rather than one run."""
        return self.size > 1 or bool(self.partners)

    @property
    def partners(self) -> list[str]:
        return [name.strip() for name in self.partner.split(",") if name.strip()]


@dataclass
class SemiConfig:
    """Unpaired pools and the self-learning that draws pseudo-pairs among them (``model.name=self-learning``)."""

    unpaired_captions: str = ""  # caption embeddings with no image: .npy, a query file, or a paired file's captions
    unpaired_images: str = ""  # image embeddings with no caption: .npy or a paired file's images
    use_pairs: bool = True  # false: zero-pair mode, start from matched pool structures instead of the pairs
    rounds: int = 5  # refits on seed + pseudo-pairs
    matcher: str = "csls"  # csls (mutual nearest neighbours) | sinkhorn (optimal-transport plan)
    threshold: float = 0.0  # keep pseudo-pairs scoring above this
    max_pairs: int = 0  # keep the best this many pseudo-pairs a round; 0 = all that qualify
    pseudo_weight: float = 1.0  # weight of a pseudo-pair against a seed pair in the refit
    pool_sample: int = 0  # caption pool rows drawn per round (bounds a round's cost); 0 = the whole pool
    k: int = 10  # CSLS neighbourhood size
    clusters: int = 32  # zero-pair mode: k-means anchors matched between the pools
    # learnt recipes (resmlp, ...) with pools: the last round's pseudo-pairs join the batches at pseudo_weight, and
    neighbour_weight: float = 0.0  # > 0: weight of the regulariser keeping pool captions' neighbourhoods when mapped
    neighbour_temperature: float = 0.1  # softmax temperature of that regulariser's similarity rows


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    ensemble: EnsembleConfig = field(default_factory=EnsembleConfig)
    semi: SemiConfig = field(default_factory=SemiConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    patience: int = 3  # epochs without dev MRR gain before stopping
    dev_fraction: float = 0.1  # used only when the data has no train/dev split column
    max_dev_images: int = 25000  # caps a seeded dev split (evaluated every epoch); 0 = no cap
    filter_fraction: float = 0.0  # drop this share of training pairs least consistent with a ridge map first
    eval_chunk: int = 1024
    tensorboard: bool = False  # log per-epoch metrics to RUN/tensorboard

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        """The full config as YAML: a file ``--config`` takes back unchanged."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _choices() -> dict[str, tuple[str, ...]]:
    """Settings whose values are registry names (the registries are the one spelling of each)."""
    from stitch import registries as r
    from stitch.semi.self_learning import MATCHERS

    return {
        "model.name": r.MODELS.names(),
        "loss.name": r.LOSSES.names(),
        "loss.miner": r.MINERS.names(),
        "model.activation": r.ACTIVATIONS.names(),
        "model.text_tower": r.TOWERS.names(),
        "model.image_tower": r.TOWERS.names(),
        "model.aggregation": ("winner", "mean"),
        "model.init": ("ridge", "procrustes"),
        "inference.rerank": r.RESCORERS.names(),
        "optim.sampler": r.SAMPLERS.names(),
        "semi.matcher": MATCHERS,
    }


# inclusive numeric bounds of every numeric setting (stitch.bounds); None = unbounded on that side. A value outside
# them is an error naming the setting, never a silent NaN or an empty training.
RANGES: dict[str, Bound] = {
    "model.hidden": Bound(1, 1 << 16),
    "model.depth": Bound(1, 64),
    "model.dropout": Bound(0.0, 0.999),
    "model.ridge_alpha": Bound(0.0, 1e12),
    "model.hub_bias": Bound(0.0, 10.0),
    "model.shared_dim": Bound(1, 1 << 16),
    "model.momentum": Bound(0.0, 0.99999),
    "model.distill_weight": Bound(0.0, 1e6),
    "model.distill_temperature": Bound(1e-6, 1e3),
    "model.slots": Bound(1, 1024),
    "model.slot_dropout": Bound(0.0, 0.999),
    "model.diversity_weight": Bound(0.0, 1e6),
    "model.diversity_margin": Bound(-1.0, 1.0),
    "model.global_weight": Bound(0.0, 1e6),
    "model.global_margin": Bound(-1.0, 1.0),
    "model.mmd_weight": Bound(0.0, 1e6),
    "model.uniformity_weight": Bound(0.0, 1e6),
    "loss.temperature": Bound(1e-4, 100.0),
    "loss.margin": Bound(0.0, 100.0),
    "loss.queue_size": Bound(0, 1 << 24),
    "loss.hard_negatives": Bound(0, 1 << 24),
    "loss.norm_weight": Bound(0.0, 1e6),
    "loss.sinkhorn_temperature": Bound(1e-4, 100.0),
    "loss.sinkhorn_iters": Bound(1, 10_000),
    "loss.mse_weight": Bound(0.0, 1e6),
    "loss.final_temperature": Bound(0.0, 100.0),
    "loss.teacher_weight": Bound(0.0, 1e6),
    "loss.teacher_temperature": Bound(1e-4, 100.0),
    "optim.mixup_alpha": Bound(0.0, 100.0),
    "filter_fraction": Bound(0.0, 0.9),
    "optim.lr": Bound(1e-9, 10.0),
    "optim.weight_decay": Bound(0.0, 100.0),
    "optim.epochs": Bound(1, 100_000),
    "optim.batch_size": Bound(2, 1 << 20),
    "optim.warmup_fraction": Bound(0.0, 0.999),
    "optim.grad_clip": Bound(0.0, 1e9),
    "optim.samples_per_epoch": Bound(0, 1 << 40),
    "inference.beta": Bound(0.0, 1e4),
    "inference.k": Bound(1, 1 << 20),
    "inference.bank_size": Bound(1, 1 << 26),
    "ensemble.folds": Bound(0, 100),
    "ensemble.seeds": Bound(1, 1000),
    "ensemble.partner_weight": Bound(0.0, 1.0),
    "seed": Bound(0, 2**63 - 1),
    "patience": Bound(1, 100_000),
    "dev_fraction": Bound(0.0, 0.99),
    "max_dev_images": Bound(0, 1 << 40),
    "eval_chunk": Bound(1, 1 << 24),
    "semi.rounds": Bound(0, 1000),
    "semi.threshold": Bound(-1.0, 1.0),
    "semi.max_pairs": Bound(0, 1 << 40),
    "semi.pseudo_weight": Bound(1e-6, 1e6),
    "semi.pool_sample": Bound(0, 1 << 40),
    "semi.k": Bound(1, 1000),
    "semi.clusters": Bound(2, 10_000),
    "semi.neighbour_weight": Bound(0.0, 1e6),
    "semi.neighbour_temperature": Bound(1e-4, 100.0),
}


def _coerce(key: str, kind: type, value):
    """``value`` as the setting's type, or a ConfigError naming the setting."""
    if kind is not bool and isinstance(value, bool):
        raise ConfigError(f"{key} must be a {kind.__name__}, got the boolean {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind in (int, float):
        return _number(key, kind, value)
    if not isinstance(value, (str, int, float)):
        raise ConfigError(f"{key} must be a name, got {value!r}")
    return str(value)


def _number(key: str, kind: type, value) -> int | float:
    if isinstance(value, int) and kind is int:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as err:
        raise ConfigError(f"{key} must be a number ({kind.__name__}), got {value!r}") from err
    if not math.isfinite(number):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if kind is int:
        if number != int(number):
            raise ConfigError(f"{key} must be a whole number, got {value!r}")
        return int(number)
    return number


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


def _get(config: TrainConfig, key: str):
    obj = config
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def validate(config: TrainConfig) -> TrainConfig:
    """Every name against its registry, every number against its range, and the pairs that must agree."""
    for key, allowed in _choices().items():
        if _get(config, key) not in allowed:
            raise ConfigError(f"{key} must be one of {list(allowed)}, got {_get(config, key)!r}")
    for key, bound in RANGES.items():
        check(key, _get(config, key), bound, ConfigError)
    _check_task(config)
    _check_ingredients(config)
    if not (config.device in ("auto", "cpu", "cuda") or config.device.startswith("cuda:")):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {config.device!r}")
    return config


def check_kind_settings(model: ModelConfig) -> None:
    """Each model kind has its own model settings (registry tag ``config_keys``); one the chosen kind does not
    have, set to anything but its default, is an error naming the kind and its settings: a set-head setting on
    a residual MLP would otherwise train as if it had not been given.

    A value equal to the default passes, so a full config, which lists every model setting (``--print-config``,
    :meth:`TrainConfig.to_yaml`, a run's config.json given as ``--config``), loads as written. A kind that
    declares no settings (no ``config_keys`` tag) is not checked."""
    from stitch.registries import MODELS, model_has

    given, defaults = asdict(model), asdict(ModelConfig())
    foreign = [f"model.{k}" for k, v in given.items() if not model_has(model.name, k) and v != defaults[k]]
    if foreign:
        has = MODELS.tag(model.name, "config_keys")
        verb = "is not a setting" if len(foreign) == 1 else "are not settings"
        raise ConfigError(f"{', '.join(foreign)} {verb} of model kind {model.name!r} (its settings: {', '.join(has)})")


def _check_task(config: TrainConfig) -> None:
    """The model's training task decides which kinds of loss it can train with (registry tags)."""
    from stitch.registries import LOSSES, MODELS, TASKS

    task = MODELS.tag(config.model.name, "task")
    kind = LOSSES.tag(config.loss.name, "kind")
    accepted = TASKS.tag(task, "losses")
    if kind not in accepted:
        fitting = [name for name in LOSSES.names() if LOSSES.tag(name, "kind") in accepted]
        raise ConfigError(
            f"model.name={config.model.name} trains with loss.name in {fitting}, got {config.loss.name!r}"
        )


def _check_ingredients(config: TrainConfig) -> None:
    """Settings that only make sense together."""
    from stitch.registries import LOSSES

    if config.loss.final_temperature and config.loss.learnable_temperature:
        raise ConfigError("loss.final_temperature schedules a fixed temperature: set loss.learnable_temperature=false")
    if config.loss.final_temperature and not LOSSES.tag(config.loss.name, "temperature", False):
        raise ConfigError(f"loss.final_temperature needs a loss with a temperature, not {config.loss.name!r}")
    if config.ensemble.folds == 1:
        raise ConfigError("ensemble.folds must be 0 (no folds) or at least 2")
    _check_partners(config.ensemble)
    kind = LOSSES.tag(config.loss.name, "kind")
    _check_folded_bias_and_teacher(config)
    if (config.optim.mixup_alpha or config.loss.mse_weight) and kind != "pair":
        raise ConfigError("optim.mixup_alpha and loss.mse_weight go with a contrastive loss (infonce, siglip, ...)")


def _check_folded_bias_and_teacher(config: TrainConfig) -> None:
    """A model that folds inverted softmax into its query must not be rescored by it again; distillation
    compares single query vectors, which set heads (scored by their best slot) do not have."""
    from stitch.registries import MODELS

    folds = MODELS.tag(config.model.name, "folds_hub_bias", False) and config.model.hub_bias > 0
    if folds and config.inference.rerank != "none":
        raise ConfigError(
            f"model.name={config.model.name} folds inverted softmax into its query (model.hub_bias="
            f"{config.model.hub_bias}); rescoring it again with inference.rerank={config.inference.rerank} counts "
            "the hubs twice: set inference.rerank=none (or model.hub_bias=0 to rescore instead)"
        )
    if config.loss.teacher and MODELS.tag(config.model.name, "task") == "set":
        raise ConfigError("loss.teacher distils single query vectors; set heads (model.name=set) are not supported")


def _check_partners(ensemble: EnsembleConfig) -> None:
    """Partners are named recipes that train one run each, and leave the members a share of the score."""
    from stitch.recipes import RECIPES, recipe_overrides

    for name in ensemble.partners:
        if name not in RECIPES:
            raise ConfigError(f"ensemble.partner {name!r} is not a named recipe; choose from {sorted(RECIPES)}")
        if any(o.startswith("ensemble.") for o in recipe_overrides(name)):
            raise ConfigError(f"ensemble.partner {name!r} is itself an ensemble; a partner must train one run")
    if ensemble.partners and len(ensemble.partners) * ensemble.partner_weight >= 1:
        raise ConfigError(
            f"{len(ensemble.partners)} partners x ensemble.partner_weight {ensemble.partner_weight} leave the "
            "members no share of the score: keep it below 1"
        )


def parse_pairs(pairs: list[str], what: str = "override", example: str = "optim.lr=1e-3") -> dict[str, object]:
    """``["a.b=1e-3", "c=x"]`` -> ``{"a.b": "1e-3" or 0.001, "c": "x"}``: every ``key=value`` of the command
    line (config overrides, index and rescorer parameters) read one way, values as YAML scalars."""
    flat: dict[str, object] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"{what} {pair!r} must look like key=value (e.g. {example})")
        key, raw = pair.split("=", 1)
        try:
            flat[key.strip()] = yaml.safe_load(raw) if raw else raw
        except yaml.YAMLError as err:
            raise ConfigError(f"{what} {pair!r}: the value is not valid YAML ({err.__class__.__name__})") from err
    return flat


def parse_overrides(pairs: list[str]) -> dict:
    """``["optim.lr=1e-3", "model.name=mlp"]`` -> nested dict; values parsed as YAML scalars."""
    return nest(parse_pairs(pairs))


def nest(flat: dict[str, object]) -> dict:
    """``{"optim.lr": 1e-3}`` -> ``{"optim": {"lr": 1e-3}}``: dotted keys as the sections they name."""
    nested: dict = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
    """Defaults, then the YAML file, then the overrides; validated, and every model setting given checked
    against the model kind (:func:`check_kind_settings`).

    A run's own saved config is read by :func:`config_from_dict` instead, which validates but does not check
    the kind: runs written while such a setting was only warned about still open."""
    config = TrainConfig()
    if path is not None:
        _apply(config, _read_yaml(Path(path)))
    if overrides:
        _apply(config, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    validate(config)
    check_kind_settings(config.model)
    return config


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where} ({err.__class__.__name__})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys")
    return data


def config_from_dict(data: dict) -> TrainConfig:
    """A config as a run folder records it (every field): validated, not checked against the model kind."""
    config = TrainConfig()
    _apply(config, data)
    return validate(config)
