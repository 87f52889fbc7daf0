"""Losses of metric learning as small classes with one calling convention (see ``base``)."""

from stitch.losses.base import PairLoss
from stitch.losses.infonce import InfoNCELoss, multi_positive_nll
from stitch.losses.regression import CosineLoss, MSELoss


def build_loss(name: str, temperature: float = 0.05, learnable_temperature: bool = True) -> PairLoss:
    """A loss by its config name."""
    if name == "mse":
        return MSELoss()
    if name == "cosine":
        return CosineLoss()
    if name == "infonce":
        return InfoNCELoss(temperature=temperature, learnable=learnable_temperature)
    raise ValueError(f"unknown loss {name!r}; choose from mse, cosine, infonce")


__all__ = ["CosineLoss", "InfoNCELoss", "MSELoss", "PairLoss", "build_loss", "multi_positive_nll"]
