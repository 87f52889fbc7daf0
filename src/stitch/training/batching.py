"""Batches drawn straight from in-memory tensors: one index permutation per epoch, no per-sample
DataLoader work. Each batch holds captions, their image labels and the (deduplicated) images they
are contrasted with, or the row-aligned targets for regression losses. When a caption is relevant to
several images (``relevant``: its image ids padded with -1), its label is that row, so none of them
is ever its negative. Under torchrun each rank gets its share of the batch's captions and the whole
batch's labels and images (see :mod:`stitch.training.distributed`)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from stitch.training.distributed import Distributed


class CaptionBatches:
    def __init__(
        self,
        captions: np.ndarray,
        caption_image: np.ndarray,
        gallery: np.ndarray,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        aligned_targets: bool = False,
        drop_last: bool = True,
        relevant: np.ndarray | None = None,
        world: Distributed | None = None,
    ) -> None:
        if len(captions) == 0:
            raise ValueError("no training captions")
        self.captions = torch.as_tensor(captions, device=device)
        self.labels = torch.as_tensor(caption_image, dtype=torch.long, device=device)
        self.relevant = None if relevant is None else torch.as_tensor(relevant, dtype=torch.long, device=device)
        self.gallery = torch.as_tensor(gallery, device=device)
        self.batch_size = min(batch_size, len(captions))
        self.aligned_targets = aligned_targets
        self.drop_last = drop_last
        self.generator = torch.Generator().manual_seed(seed)
        self.world = world or Distributed()  # every rank draws the same global batch and keeps its share

    def __len__(self) -> int:
        n = len(self.captions)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.captions), generator=self.generator).to(self.captions.device)
        for i in range(len(self)):
            rows = order[i * self.batch_size : (i + 1) * self.batch_size]
            own = self.labels[rows]
            labels = own if self.relevant is None else self.relevant[rows]
            captions = self.captions[self.world.local_rows(rows)]  # labels and gallery stay global
            if self.aligned_targets:
                yield captions, labels, self.gallery[own], own
            else:
                images = torch.unique(own)
                yield captions, labels, self.gallery[images], images

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
