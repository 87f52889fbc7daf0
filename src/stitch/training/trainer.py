"""The training loop: image-level train/dev split, closed-form start, AdamW with warmup + cosine,
early stopping on dev MRR, and a run folder that can be resumed."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stitch.data import PairedEmbeddings, train_dev_split
from stitch.losses import build_loss
from stitch.losses.set_losses import SetInfoNCELoss, SetTripletLoss
from stitch.io.atomic import atomic_write_text
from stitch.retrieval.evaluate import rescored_space
from stitch.retrieval.hubness import Rescorer, configured_rescorer
from stitch.retrieval.metrics import rank_metrics
from stitch.retrieval.ranks import cosine_ready, text_to_image_ranks
from stitch.training import run as runfiles
from stitch.training.batching import CaptionBatches
from stitch.training.config import TrainConfig
from stitch.training.device import autocast, resolve_device
from stitch.translators import CLOSED_FORM, StitchModel, build_model, embed_rows, initialise, output_dim


@dataclass
class TrainResult:
    model: StitchModel
    best_epoch: int
    dev_metrics: dict[str, float]
    history: list[dict]
    split: str
    run_dir: Path | None
    bank: np.ndarray | None = None  # raw training captions kept as the query bank
    temperature: float | None = None  # learnt temperature of the contrastive loss, if any
    config: TrainConfig | None = None  # what trained it (its inference settings choose the scoring)


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR multiplier: linear warmup, then cosine decay to zero."""
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# per-epoch dev MRR under the run's own scoring is logged as SCORED_MRR_PREFIX + the method (dev_mrr_is)
SCORED_MRR_PREFIX = "dev_mrr_"


def scored_mrr_key(row: dict) -> str | None:
    """The key of a metrics row's dev MRR under the run's own scoring, if it has one."""
    return next((k for k in row if k.startswith(SCORED_MRR_PREFIX)), None)


@torch.no_grad()
def dev_retrieval(
    model: StitchModel,
    dev: PairedEmbeddings,
    device: torch.device,
    chunk: int = 1024,
    rescorer: Rescorer | None = None,
    bank: np.ndarray | None = None,
) -> dict[str, float]:
    """Text->image metrics over the dev gallery with plain cosine scores (used for early stopping).

    With a ``rescorer`` (fitted on the translated query ``bank``) it adds ``scored_mrr``, the dev MRR
    under the run's own scoring — what ``stitch evaluate`` reports — so that tuning can prune on it."""
    model.eval()
    queries = cosine_ready(embed_rows(model.embed_queries, dev.captions, device), device)
    gallery = cosine_ready(embed_rows(model.embed_gallery, dev.images, device), device)
    metrics = rank_metrics(text_to_image_ranks(queries, gallery, dev.caption_image, chunk=chunk))
    if rescorer is not None and not (queries.ndim == 3 and rescorer.name in ("center", "whiten")):
        bank_queries = embed_rows(model.embed_queries, bank, device)
        q, g, scorer = rescored_space(queries, gallery, rescorer, bank_queries, device=device)
        ranks = text_to_image_ranks(q, g, dev.caption_image, chunk=chunk, scorer=scorer)
        metrics["scored_mrr"] = rank_metrics(ranks)["mrr"]
    return metrics


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def _check_run_dir(run_dir: Path | None, resume: bool, force: bool) -> None:
    if run_dir is None:
        return
    if resume:
        if not (run_dir / runfiles.CHECKPOINT).exists():
            raise runfiles.RunError(f"cannot resume: {run_dir} has no {runfiles.CHECKPOINT}")
        return
    if run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise runfiles.RunError(f"{run_dir} already holds a run; pass --resume to continue it or --force to replace it")
    if force and run_dir.exists():
        for name in (
            runfiles.WEIGHTS,
            runfiles.CONFIG,
            runfiles.METRICS,
            runfiles.CHECKPOINT,
            runfiles.SUMMARY,
            runfiles.BANK,
        ):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def train(
    data: PairedEmbeddings,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    data_source: str = "",
    epoch_callback=None,
) -> TrainResult:
    """Train ``config``'s recipe on the data's train images, early-stopping on its dev images.

    ``epoch_callback(epoch, row)`` is called after each epoch with its metrics row (tuning uses it to
    report and prune); an exception it raises stops training.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    _check_run_dir(run_dir, resume, force)
    _seed_everything(config.seed)
    device = resolve_device(config.device)
    train_set, dev_set, how = train_dev_split(data, config.dev_fraction, config.seed)

    model = build_model(config.model, data.text_dim, data.image_dim)
    if config.model.standardize_target:
        model.space.fit(train_set.images)
    with torch.no_grad():
        train_targets = model.space(torch.as_tensor(train_set.images)).numpy()
    initialise(model, config.model, train_set.captions, train_targets[train_set.caption_image])
    model.to(device)

    info = runfiles.RunInfo(
        config,
        data.text_dim,
        data.image_dim,
        {
            "split": how,
            "train_images": train_set.n_images,
            "train_captions": train_set.n_captions,
            "dev_images": dev_set.n_images,
            "dev_captions": dev_set.n_captions,
            "data": data_source,
            "encoders": data.encoders,
        },
    )
    if run_dir is not None:
        runfiles.save_info(info, run_dir)

    if config.model.name in CLOSED_FORM:
        metrics = dev_retrieval(model, dev_set, device, config.eval_chunk)
        row = {"epoch": 0, "train_loss": float("nan"), "dev_mrr": metrics["mrr"], "dev_recall@1": metrics["recall@1"]}
        if run_dir is not None:
            runfiles.save_weights(model, run_dir)
            runfiles.append_metrics(run_dir, row)
            _write_summary(run_dir, 0, metrics, how)
        bank = _keep_bank(train_set, config)
        if run_dir is not None:
            runfiles.save_bank(run_dir, bank, None)
        return TrainResult(model.eval(), 0, metrics, [row], how, run_dir, bank, None, config)

    return _fit(model, train_set, dev_set, config, device, run_dir, resume, progress, how, epoch_callback)


REGRESSION_LOSSES = ("mse", "cosine")


def make_loss(config: TrainConfig, dim: int):
    """The configured loss (set losses for set heads, else the shared metric-learning builder)."""
    lc = config.loss
    if lc.name == "set-triplet":
        return SetTripletLoss(lc.margin, lc.sinkhorn_temperature, lc.sinkhorn_iters, lc.sinkhorn_stop_grad)
    if lc.name == "set-infonce":
        return SetInfoNCELoss(lc.temperature, lc.learnable_temperature)
    return build_loss(
        lc.name,
        lc.temperature,
        lc.learnable_temperature,
        lc.margin,
        lc.miner,
        0 if lc.name in REGRESSION_LOSSES else lc.queue_size,  # a queue holds negatives: none to hold here
        lc.hard_negatives,
        lc.norm_weight,
        dim,
    )


def _fit(model, train_set, dev_set, config, device, run_dir, resume, progress, how, epoch_callback) -> TrainResult:
    optim_cfg = config.optim
    loss_fn = make_loss(config, output_dim(model)).to(device)
    batches = CaptionBatches(
        train_set.captions,
        train_set.caption_image,
        train_set.images,
        optim_cfg.batch_size,
        device,
        seed=config.seed,
        aligned_targets=loss_fn.needs_aligned_targets,
    )
    training_queries = getattr(model, "training_queries", model.embed_queries)
    auxiliary = getattr(model, "auxiliary_loss", None)
    after_step = getattr(model, "after_step", None)
    params = [p for p in list(model.parameters()) + list(loss_fn.parameters()) if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim_cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim_cfg.lr,
    )
    total_steps = optim_cfg.epochs * len(batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, optim_cfg.warmup_fraction))

    bank = _keep_bank(train_set, config)
    start_epoch, best, best_epoch, stale, history = 0, -1.0, -1, 0, []
    best_state = None
    if resume:
        ckpt = runfiles.load_checkpoint(run_dir)
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt["loss"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        batches.set_state(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        start_epoch, best, best_epoch, stale = (
            int(ckpt["epoch"]) + 1,
            float(ckpt["best"]),
            int(ckpt["best_epoch"]),
            int(ckpt["stale"]),
        )
        best_state = ckpt["best_model"]
        history = runfiles.read_metrics(run_dir)

    bar = _progress(total_steps, start_epoch * len(batches), progress)
    writer = _tensorboard(run_dir) if config.tensorboard else None
    for epoch in range(start_epoch, optim_cfg.epochs):
        if stale >= config.patience:
            break
        model.train()
        started, running, count = time.time(), 0.0, 0
        for x, labels, images, ref_labels in batches.epoch():
            with autocast(device, config.amp):
                queries, gallery = training_queries(x), model.embed_gallery(images)
                loss = loss_fn(queries.float(), labels, None, gallery.float(), ref_labels)
                if auxiliary is not None:
                    loss = loss + auxiliary(x, queries, images, gallery, labels, ref_labels, config.model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if optim_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, optim_cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            running, count = running + loss.item(), count + 1
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{running / count:.4f}", dev_mrr=f"{max(best, 0):.4f}")
        extra = loss_fn.extra_state()
        rescorer = None
        if config.inference.rerank != "none":
            rescorer = configured_rescorer(config.inference.rerank, None, config.inference, extra.get("temperature"))
        metrics = dev_retrieval(model, dev_set, device, config.eval_chunk, rescorer, bank)
        row = {
            "epoch": epoch,
            "train_loss": running / count,
            "dev_mrr": metrics["mrr"],
            "dev_recall@1": metrics["recall@1"],
            "lr": scheduler.get_last_lr()[0],
            "seconds": round(time.time() - started, 2),
            **extra,
        }
        if "scored_mrr" in metrics:
            row[SCORED_MRR_PREFIX + config.inference.rerank] = metrics["scored_mrr"]
        history.append(row)
        if writer is not None:
            for key, value in row.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch)
        if metrics["mrr"] > best:
            best, best_epoch, stale = metrics["mrr"], epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            if run_dir is not None:
                runfiles.save_weights(model, run_dir)
        else:
            stale += 1
        if run_dir is not None:
            runfiles.append_metrics(run_dir, row)
            runfiles.save_checkpoint(
                run_dir,
                {
                    "model": model.state_dict(),
                    "loss": loss_fn.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "sampler": batches.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "epoch": epoch,
                    "best": best,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "best_model": best_state,
                },
            )
        if epoch_callback is not None:
            epoch_callback(epoch, row)
    bar.close()
    if writer is not None:
        writer.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    dev_metrics = dev_retrieval(model, dev_set, device, config.eval_chunk)
    if run_dir is not None:
        _write_summary(run_dir, best_epoch, dev_metrics, how)
    temperature = loss_fn.extra_state().get("temperature")
    if run_dir is not None:
        runfiles.save_bank(run_dir, bank, temperature)
    return TrainResult(model, best_epoch, dev_metrics, history, how, run_dir, bank, temperature, config)


def _keep_bank(train_set: PairedEmbeddings, config: TrainConfig) -> np.ndarray:
    """A seeded sample of training captions: the query bank of hubness-aware scoring."""
    size = min(config.inference.bank_size, train_set.n_captions)
    rows = np.sort(np.random.default_rng(config.seed).choice(train_set.n_captions, size, replace=False))
    return train_set.captions[rows]


def _write_summary(run_dir: Path, best_epoch: int, metrics: dict, how: str) -> None:

    body = {
        "best_epoch": best_epoch,
        "dev": metrics,
        "split": how,
        "protocol": "text->image, full dev gallery, ranks pessimistic on ties",
    }
    atomic_write_text(run_dir / runfiles.SUMMARY, json.dumps(body, indent=2))


def _tensorboard(run_dir: Path | None):
    """A TensorBoard writer in ``run_dir/tensorboard`` (needs the tensorboard package)."""
    if run_dir is None:
        raise ValueError("tensorboard logging needs a run folder (--out)")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError("tensorboard=true needs the tensorboard package (pip install tensorboard)") from err
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _progress(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", desc="train", dynamic_ncols=True)
