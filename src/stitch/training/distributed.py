"""Data-parallel training on torchrun: the process group, which rows are this rank's, and features gathered
with their gradients.

``torchrun --nproc_per_node=N -m stitch train ...`` starts N processes with ``RANK``/``WORLD_SIZE`` set;
:meth:`Distributed.from_env` joins them (gloo on CPU, NCCL on CUDA). Every rank draws the same global batch
(same seed), translates its contiguous share of the captions, and gathers every rank's translated captions
with gradients, so contrastive losses (InfoNCE, SigLIP, the memory queue) see the negatives of the whole
batch. Each rank then computes the same global loss; the backward of the gather sums the world's identical
contributions (``world x`` the gradient through this rank's rows) and DDP averages parameter gradients, which
leaves exactly the single-process gradient of that batch. Only rank 0 writes the run folder.
"""

from __future__ import annotations

import atexit
import datetime
import os
from dataclasses import dataclass

import numpy as np
import torch

from stitch.errors import UsageError

TIMEOUT = datetime.timedelta(minutes=10)  # a rank that died makes the others fail after this, not hang


def _shutdown() -> None:
    """Leave the process group before the interpreter exits: gloo's threads still running at exit abort the
    process ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: torch.device) -> Distributed:
        """The torchrun world this process belongs to (a world of one without ``WORLD_SIZE`` > 1)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
            atexit.register(_shutdown)
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The rank that writes the run folder, logs and shows progress."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """One GPU per rank on CUDA (``LOCAL_RANK``); CPU ranks share the CPU."""
        return torch.device("cuda", self.local_rank) if device.type == "cuda" and self.active else device

    def local_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (its size must divide by the world size)."""
        if len(rows) % self.world_size:
            raise UsageError(f"a global batch of {len(rows)} does not split evenly over {self.world_size} ranks")
        share = len(rows) // self.world_size
        return rows[self.rank * share : (self.rank + 1) * share]

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Every rank's rows in rank order, differentiable (gradients flow back to the rank that made them)."""
        if not self.active:
            return local
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(local))

    def query_shard(self, n: int) -> np.ndarray:
        """This rank's contiguous part of ``n`` evaluated queries (parts differ by at most one row)."""
        return np.array_split(np.arange(n), self.world_size)[self.rank]

    def gather_rows(self, local: np.ndarray) -> np.ndarray:
        """Every rank's 1-D integer array concatenated in rank order (lengths may differ)."""
        if not self.active:
            return local
        import torch.distributed as dist

        mine = torch.as_tensor(local, dtype=torch.long)
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([len(mine)]))
        width = int(max(sizes).item())
        padded = [torch.zeros(width, dtype=torch.long) for _ in range(self.world_size)]
        dist.all_gather(padded, torch.cat([mine, mine.new_zeros(width - len(mine))]))
        return torch.cat([part[: int(size)] for part, size in zip(padded, sizes)]).numpy()

    def wrap(self, module: torch.nn.Module) -> torch.nn.Module:
        """DDP around ``module`` (gradients averaged over ranks); the module itself in a world of one."""
        if not self.active:
            return module
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if next(module.parameters()).is_cuda else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()
