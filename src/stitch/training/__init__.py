"""Training: config, batching, the loop and run folders."""

from stitch.training.config import ConfigError, TrainConfig, load_config
from stitch.training.run import RunError, load_model, read_info
from stitch.training.trainer import TrainResult, train

__all__ = ["ConfigError", "RunError", "TrainConfig", "TrainResult", "load_config", "load_model", "read_info", "train"]
