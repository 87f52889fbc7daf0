"""Train an embedding net on labelled vectors with a siamese (contrastive) or triplet loss and a miner."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from stitch.apps.metric_learning.data import LabelledVectors
from stitch.errors import UsageError
from stitch.losses import ContrastiveLoss, TripletMarginLoss, build_miner


@dataclass
class EmbeddingConfig:
    loss: str = "triplet"  # triplet | contrastive
    miner: str = "semihard"  # none | all | hardest | semihard | distance-weighted
    margin: float = 0.2
    hidden: int = 512
    dim: int = 32
    dropout: float = 0.1
    lr: float = 1e-3
    weight_decay: float = 1e-4
    epochs: int = 150
    batch_size: int = 128
    augment: bool = True  # random 1-pixel shifts when the vectors are images, else small Gaussian noise
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


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
    """Mini-batch training; each batch's pairs/triplets come from the configured miner."""
    from tqdm.auto import tqdm

    config = config or EmbeddingConfig()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    net = EmbeddingNet(data.x.shape[1], config.hidden, config.dim, config.dropout)
    if config.loss == "triplet":
        loss_fn = TripletMarginLoss(margin=config.margin)
    elif config.loss == "contrastive":
        loss_fn = ContrastiveLoss(neg_margin=config.margin)
    else:
        raise UsageError(f"unknown loss {config.loss!r}; choose triplet or contrastive")
    miner = build_miner(config.miner)
    optimizer = torch.optim.AdamW(net.parameters(), config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    x, y = torch.as_tensor(data.x), torch.as_tensor(data.labels)
    for _ in tqdm(range(config.epochs), desc="embedding", disable=not progress):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), config.batch_size):
            rows = order[start : start + config.batch_size]
            xb = _augment(x[rows], data.image_shape, generator) if config.augment else x[rows]
            emb = net(xb)
            indices = miner(emb.detach(), y[rows]) if miner is not None else None
            loss = loss_fn(emb, y[rows], indices)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scheduler.step()
    return net.eval()


@torch.no_grad()
def embed(net: EmbeddingNet, x: np.ndarray) -> np.ndarray:
    return nn.functional.normalize(net.eval()(torch.as_tensor(x, dtype=torch.float32)), dim=1).numpy()
