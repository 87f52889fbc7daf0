"""A cross-batch memory: a FIFO queue of past reference embeddings reused as extra negatives.

Small batches see few negatives; the queue (as in MoCo / pml's CrossBatchMemory) keeps the last
``size`` detached reference embeddings with their labels. With ``hard_negatives = k`` only the k
memory entries most similar to each query are kept as negatives (top-k hard negatives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stitch.errors import UsageError
from stitch.losses.base import PairLoss


class MemoryQueue(PairLoss):
    def __init__(self, loss: PairLoss, dim: int, size: int = 4096, hard_negatives: int | None = None) -> None:
        super().__init__()
        self.loss, self.size, self.hard_negatives = loss, size, hard_negatives
        self.register_buffer("bank", torch.zeros(size, dim))
        self.register_buffer("bank_labels", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def supports_weights(self) -> bool:
        return self.loss.supports_weights

    def forward(self, embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, weights=None):
        if ref_emb is None or labels is None or ref_labels is None:
            raise UsageError("MemoryQueue needs labels, ref_emb and ref_labels")
        memory, memory_labels = self.memory()
        # memory entries of an image in the batch are positives already present: keep only negatives
        fresh = ~(memory_labels[:, None] == ref_labels[None, :]).any(1)
        memory, memory_labels = memory[fresh], memory_labels[fresh]
        if self.hard_negatives is not None and len(memory) > self.hard_negatives:
            sims = F.normalize(embeddings.detach(), dim=1) @ F.normalize(memory, dim=1).T
            pick = sims.topk(self.hard_negatives, dim=1).indices.unique()
            memory, memory_labels = memory[pick], memory_labels[pick]
        everything, labels_all = torch.cat([ref_emb, memory]), torch.cat([ref_labels, memory_labels])
        weighted = {} if weights is None else {"weights": weights}  # memory rows are nobody's positive
        loss = self.loss(embeddings, labels, indices_tuple, everything, labels_all, **weighted)
        if self.training:
            self.enqueue(ref_emb.detach(), ref_labels)
        return loss

    def memory(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(self.filled)
        return self.bank[:n], self.bank_labels[:n]

    @torch.no_grad()
    def enqueue(self, emb: torch.Tensor, labels: torch.Tensor) -> None:
        emb, labels = emb[-self.size :], labels[-self.size :]
        idx = (self.cursor + torch.arange(len(emb), device=emb.device)) % self.size
        self.bank[idx] = emb.to(self.bank.dtype)
        self.bank_labels[idx] = labels
        self.cursor.copy_((self.cursor + len(emb)) % self.size)
        self.filled.copy_(torch.clamp(self.filled + len(emb), max=self.size))

    def extra_state(self) -> dict[str, float]:
        return self.loss.extra_state()

    def set_temperature(self, temperature: float) -> None:
        self.loss.set_temperature(temperature)
