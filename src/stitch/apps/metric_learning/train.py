"""Train an embedding net on labelled vectors with a loss from :data:`stitch.registries.LOSSES` and a miner."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
from torch import nn

from stitch.apps.metric_learning.data import LabelledVectors
from stitch.bounds import Bound, check
from stitch.errors import UsageError
from stitch.losses import LossSettings, PairLoss, build_loss
from stitch.registries import LOSSES, MINERS, Registry

# the numeric settings of EmbeddingConfig and their bounds (inclusive)
BOUNDS = {
    "margin": Bound(0.0, 100.0),
    "hidden": Bound(1, 65536, integer=True),
    "dim": Bound(1, 65536, integer=True),
    "dropout": Bound(0.0, 0.95),
    "lr": Bound(1e-8, 10.0),
    "weight_decay": Bound(0.0, 10.0),
    "epochs": Bound(1, 1_000_000, integer=True),
    "batch_size": Bound(2, 1_000_000, integer=True),
    "seed": Bound(0, 2**32 - 1, integer=True),
}


def embedding_losses() -> Registry:
    """The losses that train on class labels alone: the pair losses of :data:`~stitch.registries.LOSSES`
    (pairs, triplets or negatives formed inside the batch)."""
    return Registry("loss", {name: e for name, e in LOSSES.entries.items() if e.tags.get("kind") == "pair"})


@dataclass(frozen=True)
class EmbeddingConfig:
    """How the embedding net is built and trained; every value is checked when the config is made."""

    loss: str = "triplet"  # a pair loss of stitch.registries.LOSSES (see embedding_losses)
    miner: str = "semihard"  # stitch.registries.MINERS; it picks the pairs or triplets of the margin losses
    margin: float = 0.2  # triplet margin; contrastive negative margin
    hidden: int = 512
    dim: int = 32
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 150
    batch_size: int = 128
    augment: bool = True  # random 1-pixel shifts when the vectors are images, else small Gaussian noise
    seed: int = 0

    def __post_init__(self) -> None:
        embedding_losses().check(self.loss, "loss")
        MINERS.check(self.miner, "miner")
        for name, bound in BOUNDS.items():
            check(name, getattr(self, name), bound, UsageError)
        if not isinstance(self.augment, bool):
            raise UsageError(f"augment must be true or false, got {self.augment!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, body: dict) -> EmbeddingConfig:
        """The config written by :meth:`to_dict`; an unknown setting is an error naming it."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(body) - known)
        if unknown:
            raise UsageError(f"unknown embedding setting(s) {unknown}; known: {sorted(known)}")
        return cls(**body)


def embedding_loss(config: EmbeddingConfig) -> PairLoss:
    """The configured loss, built by name through the loss registry, fed by the configured miner."""
    return build_loss(LossSettings(config.loss, margin=config.margin, miner=config.miner))


class EmbeddingNet(nn.Module):
    def __init__(self, in_dim: int, hidden: int = 512, dim: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _augment(x: torch.Tensor, image_shape: tuple[int, int] | None, generator: torch.Generator) -> torch.Tensor:
    if image_shape is None:
        return x + 0.05 * torch.randn(x.shape, generator=generator)
    h, w = image_shape
    images = nn.functional.pad(x.view(-1, 1, h, w), (1, 1, 1, 1))
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    shifted = images[:, :, dy : dy + h, dx : dx + w].reshape(len(x), -1)
    keep = torch.rand(len(x), 1, generator=generator) < 0.5
    return torch.where(keep, x, shifted)


def train_embedding(
    data: LabelledVectors, config: EmbeddingConfig | None = None, progress: bool = True
) -> EmbeddingNet:
    """Mini-batch training; each batch's pairs or triplets come from the configured miner (margin losses) or
    are every pair of the batch (InfoNCE, SigLIP)."""
    from tqdm.auto import tqdm

    config = config or EmbeddingConfig()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    net = EmbeddingNet(data.x.shape[1], config.hidden, config.dim, config.dropout)
    loss_fn = embedding_loss(config)
    groups = [{"params": list(net.parameters())}]
    if any(True for _ in loss_fn.parameters()):  # a learnable temperature trains with the net, undecayed
        groups.append({"params": list(loss_fn.parameters()), "weight_decay": 0.0})
    optimizer = torch.optim.AdamW(groups, config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    x, y = torch.as_tensor(data.x), torch.as_tensor(np.unique(data.labels, return_inverse=True)[1])
    for _ in tqdm(range(config.epochs), desc="embedding", disable=not progress):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            rows = order[start : start + config.batch_size]
            xb = _augment(x[rows], data.image_shape, generator) if config.augment else x[rows]
            loss = loss_fn(net(xb), y[rows])  # a miner inside the loss picks the batch's pairs or triplets
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    return net.eval()


@torch.no_grad()
def embed(net: EmbeddingNet, x: np.ndarray) -> np.ndarray:
    return nn.functional.normalize(net.eval()(torch.as_tensor(x, dtype=torch.float32)), dim=1).numpy()
