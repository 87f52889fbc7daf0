"""The training loop: a :class:`Task` trained by a small :class:`Trainer` with callbacks.

``train`` splits the data by image, fits the closed-form start, and runs the Trainer: AdamW with warmup
+ cosine, early stopping on dev MRR (never on a non-finite epoch), a run folder written every epoch and
resumable exactly, progress, TensorBoard and tuning callbacks. Device choice lives in ``device``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stitch.data import PairedEmbeddings
from stitch.data.pairs import Pairs
from stitch.data.shards import ShardList
from stitch.data.splits import SEEDED_SPLIT, is_seeded, split_record
from stitch.io.atomic import atomic_write_text
from stitch.registries import LOSSES, MODELS, RESCORERS
from stitch.retrieval.evaluate import (
    DirectionReport,
    evaluate_embeddings,
    text_to_image_link_ranks,
    text_to_image_metrics,
)
from stitch.retrieval.graded import graded_reports
from stitch.retrieval.metrics import relevance_metrics
from stitch.retrieval.scorer import Scorer
from stitch.semi.pools import UnpairedPools, read_pools, without_paired_captions
from stitch.semi.refine import TrainingPairs, refine_map, training_pairs
from stitch.semi.self_learning import weighted_moments
from stitch.training.batching import CaptionBatches, Passes, PooledBatches, PoolRows
from stitch.training.callbacks import (
    SCORED_MRR_PREFIX,
    Callback,
    EarlyStopping,
    EpochHook,
    ProgressBar,
    RunWriter,
    TensorBoardLogger,
)
from stitch.training.card import card_text
from stitch.training.config import TrainConfig
from stitch.training.device import autocast, resolve_device
from stitch.training.distributed import Distributed
from stitch.training.filtering import consistency_scores, drop_least_consistent
from stitch.training.hub_bias import fold_hub_bias
from stitch.training.run import (
    CARD,
    Checkpoint,
    Run,
    RunError,
    RunInfo,
    epoch_rows,
    read_resume_config,
    round_rows,
    run_summary,
)
from stitch.training.tasks import Task
from stitch.translators import Translator, build_model, image_space_rows
from stitch.translators.moments import ColumnMoments, PairMoments


# per-epoch dev MRR under the run's own scoring is logged as SCORED_MRR_PREFIX + the method (dev_mrr_is)
@dataclass
class TrainResult:
    run: Run
    best_epoch: int
    dev_metrics: dict[str, float]
    history: list[dict]
    split: str
    dev_reports: list[DirectionReport] = field(default_factory=list)
    members: list[TrainResult] = field(default_factory=list)  # an ensemble's members, each a full result

    @property
    def model(self):
        return self.run.model


logger = logging.getLogger(__name__)

@dataclass
class TrainState:
    """Where training stands; restored from a :class:`Checkpoint` on resume."""

    epoch: int = 0  # the next epoch to train
    best: float = -1.0
    best_epoch: int = -1
    stale: int = 0
    best_model: dict | None = None
    history: list[dict] = field(default_factory=list)
    stop: bool = False
    improved: bool = False  # whether the last epoch became the best (set by EarlyStopping)


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warmup, then cosine decay to zero."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class DevEvaluator:
    """Dev text->image metrics after each epoch: plain cosine (early stopping) and the run's own scoring.
    Under torchrun each rank ranks its share of the dev captions and the ranks are gathered, so the metrics
    equal one process's."""

    def __init__(
        self, dev: PairedEmbeddings, config: TrainConfig, bank: np.ndarray, device: torch.device, world=None
    ) -> None:
        self.dev, self.config, self.bank, self.device = dev, config, bank, device
        self.world = world or Distributed()
        rows = self.world.query_shard(dev.n_captions)
        self.rows, self.shard = rows, dev.relevant.subset(rows, np.arange(dev.n_images))

    def __call__(self, model, temperature: float | None) -> dict[str, float]:
        """The metrics of an epoch (callbacks and early stopping see these)."""
        return self.scores(model, temperature)

    @torch.no_grad()
    def scores(self, model, temperature: float | None) -> dict[str, float]:
        """The metrics of ``model`` as it is (also the closed-form start, before any epoch)."""
        model.eval()
        scorer = _scorer(model, self.config, self.config.inference.rerank, temperature, self.bank, self.device)
        plain = scorer.plain()
        q = plain.embed_queries(self.dev.captions[self.rows], "translated dev captions")
        g = plain.embed_gallery(self.dev.images)
        metrics = self._metrics(q, g, plain.fit(g))
        if scorer.rescorer is not None:
            metrics[SCORED_MRR_PREFIX + scorer.name] = self._metrics(q, g, scorer.fit(g))["mrr"]
        return metrics

    def _metrics(self, q, g, scorer: Scorer) -> dict[str, float]:
        q_s, g_s = scorer.prepare_queries(q), scorer.prepare_gallery(g)
        local = text_to_image_link_ranks(q_s, g_s, self.shard, self.config.eval_chunk, scorer.similarity, scorer.adjust)
        return relevance_metrics(self.world.gather_rows(local), self.dev.relevant)


def _scorer(model, config: TrainConfig, rerank: str, temperature, bank, device) -> Scorer:
    """The run's scoring while training; a per-query transform that cannot apply to this model's slot-set
    queries falls back to cosine (tables name the scoring; ``evaluate`` refuses it with a message)."""
    if RESCORERS.tag(rerank, "single_vector") and model.vectors_per_query > 1:
        rerank = "none"
    return Scorer.configured(model, rerank, None, config.inference, temperature, bank, device)


class Trainer:
    """Epochs of ``task`` over ``batches`` with AdamW + warmup/cosine; callbacks see every epoch."""

    def __init__(
        self, task: Task, batches: CaptionBatches | PooledBatches, config: TrainConfig, device, evaluate, callbacks
    ) -> None:
        self.task, self.batches, self.config, self.device = task, batches, config, device
        self.step = task.world.wrap(task)  # DDP under torchrun: gradients averaged over ranks
        self.evaluate, self.callbacks = evaluate, list(callbacks)
        optim = config.optim
        self.params = [p for p in task.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in self.params if p.ndim >= 2], "weight_decay": optim.weight_decay},
            {"params": [p for p in self.params if p.ndim < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=optim.lr)
        self.total_steps = optim.epochs * len(batches)
        schedule = warmup_cosine(self.total_steps, optim.warmup_fraction)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def fit(self, state: TrainState) -> TrainState:
        self._notify("on_train_start", state)
        for epoch in range(state.epoch, self.config.optim.epochs):
            if state.stop:
                break
            started = time.time()
            loss = self.train_epoch(epoch, state)
            row = self.epoch_row(epoch, loss, time.time() - started)
            state.history.append(row)
            state.epoch = epoch + 1
            self._notify("on_epoch_end", state, row)
        self._notify("on_train_end", state)
        return state

    def train_epoch(self, epoch: int, state: TrainState) -> float:
        self.task.train()
        running, count = 0.0, 0
        for batch in self.batches.epoch():  # (captions, labels, images, ref_labels[, weights, pool captions])
            with autocast(self.device, self.config.amp):
                loss = self.step(*batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.params, self.config.optim.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.task.after_step()
            self.task.set_progress(self.scheduler.last_epoch / self.total_steps)
            running, count = running + loss.item(), count + 1
            self._notify("on_step_end", state, epoch, running / count)
        return running / max(count, 1)

    def epoch_row(self, epoch: int, loss: float, seconds: float) -> dict:
        extra = self.task.extra_state()
        metrics = self.evaluate(self.task.model, extra.get("temperature"))
        row = {
            "epoch": epoch,
            "train_loss": loss,
            "dev_mrr": metrics["mrr"],
            "dev_recall@1": metrics["recall@1"],
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": round(seconds, 2),
            **extra,
        }
        row.update({k: v for k, v in metrics.items() if k.startswith(SCORED_MRR_PREFIX)})
        return row

    def checkpoint(self, state: TrainState) -> Checkpoint:
        return Checkpoint(
            model=self.task.model.state_dict(),
            loss=self.task.loss.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            sampler=self.batches.get_state(),
            torch_rng=torch.get_rng_state(),
            epoch=state.epoch - 1,
            best=state.best,
            best_epoch=state.best_epoch,
            stale=state.stale,
            best_model=state.best_model,
        )

    def restore(self, checkpoint: Checkpoint, history: list[dict]) -> TrainState:
        try:
            self.task.model.load_state_dict(checkpoint.model)
            self.task.loss.load_state_dict(checkpoint.loss)
            self.optimizer.load_state_dict(checkpoint.optimizer)
            self.scheduler.load_state_dict(checkpoint.scheduler)
        except (RuntimeError, ValueError, KeyError) as err:
            raise RunError(f"the checkpoint does not fit this run's model and config: {err}") from err
        self.batches.set_state(checkpoint.sampler)
        torch.set_rng_state(checkpoint.torch_rng)
        return TrainState(
            int(checkpoint.epoch) + 1,
            float(checkpoint.best),
            int(checkpoint.best_epoch),
            int(checkpoint.stale),
            checkpoint.best_model,
            history,
        )

    def _notify(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


@dataclass(frozen=True)
class TrainOptions:
    """How one call of :func:`train` runs, apart from the recipe (its config) and the data: how the run folder
    is treated, what it reports, and what a caller brings from outside.

    With ``resume`` the run continues with its own config (a differing ``config`` is refused unless
    ``force_config``), and nothing in the folder changes before the checkpoint is verified to fit; ``force``
    replaces a finished run. ``data_source`` is recorded as where the data came from.
    ``epoch_callback(epoch, row)`` is called after each epoch (tuning reports and prunes with it).
    ``image_moments`` replace the training images' own z-scoring statistics (K-fold ensemble members).
    ``teacher``: the opened run of ``loss.teacher`` (``stitch.train`` opens it), distilled from.
    """

    resume: bool = False
    force: bool = False
    force_config: bool = False
    progress: bool = True
    data_source: str = ""
    epoch_callback: Callable[[int, dict], object] | None = None
    image_moments: ColumnMoments | None = None
    teacher: Translator | None = None


def train(
    data: Pairs,
    config: TrainConfig | None,
    run_dir: str | Path | None = None,
    options: TrainOptions | None = None,
    **settings: Any,
) -> TrainResult:
    """Train ``config``'s recipe on the data's train images, early-stopping on its dev images.

    ``settings`` are :class:`TrainOptions`' fields by name (``train(data, None, run_dir, resume=True)``),
    applied over ``options`` (the defaults when None).
    """
    options = replace(options or TrainOptions(), **settings)
    resume = options.resume
    if resume:
        if run_dir is None:
            raise RunError("--resume needs the run folder (--out)")
        config = read_resume_config(run_dir, config, options.force_config)
    if config.tensorboard:  # before any folder is made: a missing package leaves no half-made run
        TensorBoardLogger.check_available()
    device = resolve_device(config.device)
    world = Distributed.from_env(device)
    device = world.device(device)
    if not resume and run_dir is not None and world.is_main:
        Run.create(run_dir, options.force)
    world.barrier()  # the folder exists (or creating it failed) before any rank goes on
    _seed_everything(config.seed)
    train_set, dev_set, how = data.holdout(config.dev_fraction, config.seed, config.max_dev_images)
    if resume:
        _check_same_data(Path(run_dir), data, train_set, dev_set, how)
    run, train_set, pooled = _initial_run(data, train_set, dev_set, how, config, run_dir, options, world.is_main)
    run.model.to(device)
    if MODELS.tag(config.model.name, "closed_form", False):
        state = TrainState(0, best_epoch=0, history=[])
        return _finish(run, state, train_set, dev_set, device, how, None, world.is_main)
    task = Task.for_config(run.model, config, world, _teacher(options.teacher, config, data, device)).to(device)
    batches = _batches(train_set, config, task, device, world)
    if pooled is not None:
        batches = PooledBatches(batches, _pool_rows(pooled, train_set, config, task), config.seed)
    evaluator = DevEvaluator(dev_set, config, run.bank, device, world)
    callbacks = _callbacks(run, config, options.progress and world.is_main, options.epoch_callback, world.is_main)
    trainer = Trainer(task, batches, config, device, evaluator, callbacks)
    state = trainer.restore(run.load_checkpoint(), epoch_rows(run.metrics)) if resume else TrainState()
    if resume and world.is_main:
        run.save_info()  # verified: the checkpoint fits this model, loss and optimiser
    scored = not resume and _has_closed_form_start(config)
    start = evaluator.scores(run.model, task.temperature)["mrr"] if scored else None
    state = trainer.fit(state)
    if start is not None and world.is_main and 0 <= state.best < start:
        logger.warning(start_note(start, state))
    return _finish(run, state, train_set, dev_set, device, how, task.temperature, world.is_main)


def _has_closed_form_start(config: TrainConfig) -> bool:
    """Whether the model kind starts from a closed-form map (``model.init``) that training should beat."""
    return "init" in MODELS.tag(config.model.name, "config_keys", ())


def start_note(start: float, state: TrainState) -> str:
    """The line said when no trained epoch scored above the closed-form map the network started from."""
    return (
        f"no epoch beat the closed-form start: dev MRR (cosine) {start:.4f} before training, best epoch "
        f"{state.best_epoch} {state.best:.4f}; the run keeps epoch {state.best_epoch}. The start alone is "
        "model.name=ridge (or procrustes); with few pairs it often wins (stitch curve measures it)"
    )


def _batches(train_set: ShardList, config: TrainConfig, task: Task, device, world: Distributed) -> CaptionBatches:
    """The training passes over ``train_set`` the config asks for (order, size, share of this rank)."""
    passes = Passes(config.seed, config.optim.sampler, config.optim.samples_per_epoch)
    return CaptionBatches(train_set, config.optim.batch_size, device, passes, task.needs_aligned_targets, world)


def _teacher(teacher: Translator | None, config: TrainConfig, data, device) -> Translator | None:
    """The teacher model on ``device`` when ``loss.teacher`` names one, checked against the data."""
    if not config.loss.teacher:
        return None
    if teacher is None:
        raise RunError(f"loss.teacher={config.loss.teacher}: open it and pass teacher= (stitch.train does)")
    if (teacher.query_dim, teacher.gallery_dim) != (data.text_dim, data.image_dim):
        raise RunError(
            f"the teacher {config.loss.teacher} takes {teacher.query_dim}-d captions and {teacher.gallery_dim}-d "
            f"images, the data has {data.text_dim} and {data.image_dim}"
        )
    return teacher.to(device)


def _initial_run(data, train_set: ShardList, dev_set, how, config, run_dir, options: TrainOptions, writes: bool = True):
    """A fresh model with its closed-form start fitted, its bank kept and (unless resuming) its info saved, and
    the training pairs it trains on (without the least consistent ones when ``filter_fraction`` is set). The
    z-scoring and the closed-form start take one streamed pass over the training pairs. ``options`` give the
    data's source (recorded) and image moments to use instead of the training images' own."""
    image_moments = options.image_moments
    model = build_model(config.model, data.text_dim, data.image_dim)
    pools = _pools(config, data, dev_set)
    seed = None if pools is None else _seed_pairs(train_set)  # read once, for the pools and the start
    if pools is not None and config.semi.use_pairs:  # the zero-pair mode fits on no pair: nothing is paired
        pools = without_paired_captions(pools, [] if seed is None else [seed[0]])
    if config.model.standardize_target:
        own = image_moments is None
        images = train_set.image_chunks()  # loose images inform the image space's statistics as paired ones do
        chunks = images if pools is None else itertools.chain(images, [pools.images])
        model.space.fit_moments(ColumnMoments.of_chunks(chunks) if own else image_moments)

    def in_space(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.space(torch.as_tensor(images)).numpy()

    # closed-form fits use every caption-image link, weighted 1/(images of the caption): the mean target
    moments = PairMoments.of_chunks((c, in_space(t)) for c, t in train_set.pair_chunks())
    pooled, rounds = _fit_start(model, moments, in_space, seed, pools, config)
    bank = _keep_bank(train_set, config)
    filtered, train_images, train_captions = "", train_set.n_images, train_set.n_captions
    if config.filter_fraction:
        scores = consistency_scores(train_set, moments, in_space, config.model.ridge_alpha)
        train_set, filtered = drop_least_consistent(train_set, scores, config.filter_fraction)
    meta = {
        "split": how,
        "train_images": train_images,
        "train_captions": train_captions,
        "dev_images": dev_set.n_images,
        "dev_captions": dev_set.n_captions,
        "data": options.data_source,
        "encoders": data.encoders,
        **({"filtered": filtered} if filtered else {}),
        **({"self_learning": _pool_record(pools, rounds, pooled)} if pools is not None else {}),
        **_seeded_split(data, dev_set, how, config),
    }
    run = Run(model, RunInfo(config, data.text_dim, data.image_dim, meta), run_dir, bank)
    if writes and run_dir is not None and not (Path(run_dir) / "checkpoint.pt").exists():
        run.save_info()
        for row in round_rows(rounds or []):  # metrics.csv: the rounds first, then the epochs
            run.append_metrics(row)
    return run, train_set, pooled


def _pools(config: TrainConfig, data, dev_set) -> UnpairedPools | None:
    """The unpaired pools (``semi.*``), checked against the pairs and dev: always for a model kind that uses them,
    and when given for a learnt kind (its batches take pseudo-pairs); a closed-form kind that does not use them
    (ridge) leaves them."""
    semi = config.semi
    uses = MODELS.tag(config.model.name, "uses_pools", False)
    given = bool(semi.unpaired_captions or semi.unpaired_images)
    learnt = not MODELS.tag(config.model.name, "closed_form", False)
    if not (uses or (given and learnt)):
        return None
    if not uses and config.optim.mixup_alpha:
        raise RunError("optim.mixup_alpha mixes pairs; with unpaired pools (pseudo-pairs in the batches) set it to 0")
    return read_pools(semi.unpaired_captions, semi.unpaired_images, data.text_dim, data.image_dim, dev_set)


def _seed_pairs(train_set: ShardList) -> tuple[np.ndarray, np.ndarray] | None:
    """The training pairs, raw, one row per caption-image link (None without any)."""
    pairs = list(train_set.pair_chunks())
    return (np.concatenate([c for c, _ in pairs]), np.concatenate([i for _, i in pairs])) if pairs else None


def _fit_start(model, moments: PairMoments, in_space, seed, pools: UnpairedPools | None, config: TrainConfig):
    """``(pooled, rounds)``, the model's closed-form start fitted once: on the pairs' ``moments``; for a learnt
    recipe with pools, on the pairs plus the pseudo-pairs that will join its batches (``pooled``); a model kind
    that uses pools has its map refitted on them by self-learning. ``rounds``: the self-learning log."""
    if pools is None:
        model.initialise(moments, config.model)
        return None, None
    if MODELS.tag(config.model.name, "uses_pools", False):
        model.initialise(moments, config.model)
        return None, refine_map(model, seed, pools, config)
    pooled = training_pairs(seed, pools, config)
    if len(pooled):
        moments = moments.merge(weighted_moments(pooled.captions, in_space(pooled.images), pooled.weight))
    model.initialise(moments, config.model)
    return pooled, pooled.rounds


def _pool_record(pools: UnpairedPools, rounds: list[dict], pooled: TrainingPairs | None) -> dict:
    """config.json's ``self_learning``: the pools, each round's pseudo-pairs, and for a learnt recipe how many
    joined its batches at which weight."""
    record = {"pools": pools.describe(), "rounds": rounds}
    if pooled is not None:
        record["in_batches"] = {"pseudo_pairs": len(pooled), "weight": pooled.weight}
    return record


def _pool_rows(pooled: TrainingPairs, train_set: ShardList, config: TrainConfig, task: Task) -> PoolRows:
    """What the pools add to a learnt recipe's batches: the pseudo-pairs, their images numbered after the
    training images, and the caption pool for the neighbourhood regulariser (when it is on)."""
    if len(pooled) and not task.weighs_rows:
        weighing = [name for name in LOSSES.names() if LOSSES.get(name).supports_weights is True]
        raise RunError(
            f"loss.name={config.loss.name} cannot weigh its rows, which pseudo-pairs from unpaired pools need; "
            f"use one of {weighing} (with loss.miner=none), or train without pools"
        )
    regularised = config.semi.neighbour_weight > 0 and len(pooled.pool) >= 2
    return PoolRows(
        pooled.captions,
        pooled.images,
        pooled.image_rows + train_set.n_images,
        pooled.weight,
        pooled.pool if regularised else None,
        config.optim.batch_size if regularised else 0,
    )


def _seeded_split(data, dev_set, how: str, config: TrainConfig) -> dict:
    """The ``seeded_split`` record of a run that drew its own split (none when the file's column gave it),
    so ``evaluate --split dev|train`` can take the same images again from data without a split column."""
    if not is_seeded(how):
        return {}
    record = split_record(data.n_images, dev_set, config.dev_fraction, config.seed, config.max_dev_images)
    return {SEEDED_SPLIT: record}


def _check_same_data(run_dir: Path, data, train_set, dev_set, how: str) -> None:
    """A resumed run must see the data it started on (dimensions, split, sizes)."""
    info = RunInfo.read(run_dir)
    now = {
        "text_dim": data.text_dim,
        "image_dim": data.image_dim,
        "split": how,
        "train_captions": train_set.n_captions,
        "dev_images": dev_set.n_images,
    }
    was = {"text_dim": info.text_dim, "image_dim": info.image_dim, **{k: info.meta.get(k) for k in list(now)[2:]}}
    differences = [f"{k}: run {was[k]!r} vs data {now[k]!r}" for k in now if was[k] != now[k]]
    if differences:
        raise RunError(f"cannot resume {run_dir} on other data ({'; '.join(differences)})")


def _callbacks(run: Run, config: TrainConfig, progress: bool, epoch_callback, writes: bool = True) -> list[Callback]:
    callbacks: list[Callback] = [EarlyStopping(config.patience)]
    if run.path is not None and writes:  # under torchrun only rank 0 writes the folder
        callbacks.append(RunWriter(run))
    callbacks.append(ProgressBar(progress))
    if config.tensorboard and writes:
        callbacks.append(TensorBoardLogger(run.path))
    if epoch_callback is not None:
        callbacks.append(EpochHook(epoch_callback))
    return callbacks


def _finish(
    run: Run, state: TrainState, train_set: ShardList, dev_set, device, how: str, temperature, writes: bool = True
) -> TrainResult:
    """Best weights back in the model, a hubness bias folded in (graded models), the final labelled dev table,
    and the run folder completed."""
    if state.best_model is not None:
        run.model.load_state_dict(state.best_model)
    run.model.eval()
    run.temperature = temperature
    fold_hub_bias(run, train_set.image_chunks(), device)
    plain, reports, scoring = dev_tables(run, dev_set, device)
    fitted = not state.history  # closed-form fits have one row, epoch 0
    if fitted:
        state.history = [{"epoch": 0, "train_loss": "", "dev_mrr": plain["mrr"], "dev_recall@1": plain["recall@1"]}]
    graded = graded_dev_report(run, dev_set, device)
    if run.path is not None and writes:
        if fitted or run.model.folds_hub_bias:
            run.save_weights()
        if fitted:
            run.append_metrics(state.history[0])
        summary = run_summary(state.best_epoch, reports[0].metrics, how, scoring)
        run.write_summary({**summary, **({"as_submitted": graded.metrics} if graded is not None else {})})
        run.save_bank()
        atomic_write_text(run.path / CARD, card_text(run, reports, plain, graded, how))
    return TrainResult(run, state.best_epoch, plain, state.history, how, reports)


@torch.no_grad()
def graded_dev_report(run: Run, dev_set, device) -> DirectionReport | None:
    """What a grader gives the run's submission on the dev images (None: the run cannot be submitted)."""
    if not run.model.has_image_space:
        return None
    predictions = image_space_rows(run.model, dev_set.captions, device)
    return graded_reports(predictions, dev_set.images, dev_set.relevant, chunk=run.config.eval_chunk, device=device)[0]


@torch.no_grad()
def dev_tables(run: Run, dev_set, device) -> tuple[dict[str, float], list[DirectionReport], str]:
    """The final dev tables of a trained run: plain-cosine text->image metrics, the labelled reports
    (both directions) under the run's own scoring, and that scoring's name."""
    scorer = _scorer(run.model, run.config, run.config.inference.rerank, run.temperature, run.bank, device)
    q, g = scorer.embed_queries(dev_set.captions, "translated dev captions"), scorer.embed_gallery(dev_set.images)
    reports = evaluate_embeddings(q, g, dev_set.relevant, chunk=run.config.eval_chunk, device=device, scorer=scorer)
    plain = text_to_image_metrics(q, g, dev_set.relevant, scorer.plain().fit(g), run.config.eval_chunk)
    return plain, reports, scorer.name


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _keep_bank(train_set: ShardList, config: TrainConfig) -> np.ndarray:
    """A seeded sample of training captions: the query bank of hubness-aware scoring."""
    size = min(config.inference.bank_size, train_set.n_captions)
    rows = np.sort(np.random.default_rng(config.seed).choice(train_set.n_captions, size, replace=False))
    return train_set.read_captions(rows)
