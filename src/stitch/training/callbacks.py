"""What happens around each epoch: early stopping, the run folder, progress, TensorBoard, tuning hooks.

A callback overrides the hooks it needs; the :class:`~stitch.training.trainer.Trainer` calls them in
order, so early stopping has decided whether an epoch is the best before the run folder is written.
"""

from __future__ import annotations

import math
from pathlib import Path

from stitch.errors import StitchError, UsageError
from stitch.io.progress import live_bars, status_stream

SCORED_MRR_PREFIX = "dev_mrr_"


def scored_mrr_key(row: dict) -> str | None:
    """The key of a metrics row's dev MRR under the run's own scoring, if it has one."""
    return next((k for k in row if k.startswith(SCORED_MRR_PREFIX)), None)


class TrainingDiverged(StitchError, ValueError):
    """An epoch produced a non-finite loss or dev metric: no later number could be trusted."""


class Callback:
    def on_train_start(self, trainer, state) -> None:
        pass

    def on_step_end(self, trainer, state, epoch: int, mean_loss: float) -> None:
        pass

    def on_epoch_end(self, trainer, state, row: dict) -> None:
        pass

    def on_train_end(self, trainer, state) -> None:
        pass


class EarlyStopping(Callback):
    """Keep the epoch with the best dev MRR; stop after ``patience`` epochs without gain. A non-finite
    epoch is never selected: training stops with a message naming it (earlier epochs stay saved)."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_epoch_end(self, trainer, state, row: dict) -> None:
        values = {k: row[k] for k in ("train_loss", "dev_mrr") if isinstance(row.get(k), float)}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            state.stop = True
            state.improved = False
            raise TrainingDiverged(
                f"training diverged at epoch {row['epoch']}: {', '.join(bad)} is not finite "
                f"(lower optim.lr or keep optim.grad_clip > 0); best epoch so far: {state.best_epoch}"
            )
        state.improved = row["dev_mrr"] > state.best
        if state.improved:
            state.best, state.best_epoch, state.stale = row["dev_mrr"], row["epoch"], 0
            state.best_model = {k: v.detach().cpu().clone() for k, v in trainer.task.model.state_dict().items()}
        else:
            state.stale += 1
        state.stop = state.stale >= self.patience


class RunWriter(Callback):
    """The run folder after every epoch: best weights, the metrics row, the resume checkpoint."""

    def __init__(self, run) -> None:
        self.run = run

    def on_epoch_end(self, trainer, state, row: dict) -> None:
        if state.improved:
            self.run.save_weights()
        self.run.append_metrics(row)
        self.run.save_checkpoint(trainer.checkpoint(state))


class ProgressBar(Callback):
    """A tqdm bar on a terminal; off a terminal, one line per epoch instead of megabytes of redraws."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled, self.bar = enabled, None

    def on_train_start(self, trainer, state) -> None:
        if not self.enabled or not live_bars():
            return
        from tqdm.auto import tqdm

        done = state.epoch * len(trainer.batches)
        self.bar = tqdm(total=trainer.total_steps, initial=done, unit="step", desc="train", dynamic_ncols=True)

    def on_step_end(self, trainer, state, epoch: int, mean_loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}", dev_mrr=f"{max(state.best, 0):.4f}")

    def on_epoch_end(self, trainer, state, row: dict) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            scored = scored_mrr_key(row)
            own = f", {scored[len(SCORED_MRR_PREFIX) :]} {row[scored]:.4f}" if scored else ""
            line = f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, dev MRR cosine {row['dev_mrr']:.4f}{own}"
            print(line, file=status_stream(), flush=True)
        if state.stop:
            print(
                f"early stop after epoch {row['epoch']}: no gain in dev MRR (cosine) for {state.stale} epochs; "
                f"keeping epoch {state.best_epoch} (dev MRR {state.best:.4f})",
                file=status_stream(),
                flush=True,
            )

    def on_train_end(self, trainer, state) -> None:
        if self.bar is not None:
            self.bar.close()


class TensorBoardLogger(Callback):
    """Per-epoch scalars in ``RUN/tensorboard`` (needs the tensorboard package)."""

    def __init__(self, run_dir: Path | None) -> None:
        if run_dir is None:
            raise UsageError("tensorboard logging needs a run folder (--out)")
        self.check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    @staticmethod
    def check_available() -> None:
        try:
            import tensorboard  # noqa: F401
        except ImportError as err:
            raise UsageError("tensorboard=true needs the tensorboard package (pip install tensorboard)") from err

    def on_epoch_end(self, trainer, state, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["epoch"])

    def on_train_end(self, trainer, state) -> None:
        self.writer.close()


class EpochHook(Callback):
    """``fn(epoch, row)`` after each epoch (tuning reports and prunes with it; raising stops training)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer, state, row: dict) -> None:
        self.fn(row["epoch"], row)
