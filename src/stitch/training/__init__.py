"""Training: config, tasks, the trainer and its callbacks, and runs (single and ensemble)."""

from stitch.training.config import ConfigError, TrainConfig, load_config
from stitch.training.ensemble import EnsembleRun, open_run, write_ensemble
from stitch.training.run import Run, RunError
from stitch.training.trainer import TrainResult, train

__all__ = [
    "ConfigError",
    "EnsembleRun",
    "Run",
    "RunError",
    "TrainConfig",
    "TrainResult",
    "load_config",
    "open_run",
    "train",
    "write_ensemble",
]
