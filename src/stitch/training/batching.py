"""Training batches read from shards: in RAM (one shard) or memory-mapped on disk (many), one path.

A pass over the data visits the shards in a seeded random order and each shard's captions in a seeded
order — a random permutation, or whole images together (``optim.sampler``, see
:mod:`stitch.training.sampling`) — a shard-aware shuffle: reads stay within one shard's pages. Batches are
cut across shard boundaries; with one shard and the random sampler a pass is one permutation of all
captions. Each batch holds captions,
their image labels and the (deduplicated) images they are contrasted with, or the row-aligned targets
for regression losses. When a caption is relevant to several images its label is that row (padded with
-1), so none of them is ever its negative.

An epoch is a full pass, or ``samples_per_epoch`` captions of an endless sequence of passes (for data too
large to evaluate after every pass). The position in the current pass is part of the state, so a resumed
run draws exactly the batches the uninterrupted one would. Under torchrun every rank draws the same
global batch and reads its share of the captions (see :mod:`stitch.training.distributed`).

With unpaired pools a learnt recipe trains on :class:`PooledBatches`: each batch of pairs with pseudo-pairs
added (a share of them in proportion to their number, so an epoch sees each about once), every row weighted
(1 for a pair, ``semi.pseudo_weight`` for a pseudo-pair), and, for the neighbourhood regulariser, a sample
of the caption pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from stitch.data.shards import ShardList
from stitch.errors import UsageError
from stitch.registries import SAMPLERS
from stitch.training.distributed import Distributed


@dataclass(frozen=True)
class Passes:
    """How passes over the data are drawn: the seed, the order within a shard (``optim.sampler``), an epoch's
    length (0: one full pass, else ``samples_per_epoch`` captions of an endless sequence of passes) and
    whether a full pass drops its last, short batch."""

    seed: int = 0
    sampler: str = "random"
    samples_per_epoch: int = 0
    drop_last: bool = True


class CaptionBatches:
    """Batches of ``shards`` on ``device``; ``settings`` are :class:`Passes`' fields by name
    (``CaptionBatches(shards, 64, seed=1, sampler="grouped")``), applied over ``passes``."""

    def __init__(
        self,
        shards: ShardList,
        batch_size: int,
        device: torch.device | str = "cpu",
        passes: Passes | None = None,
        aligned_targets: bool = False,
        world: Distributed | None = None,
        **settings: Any,
    ) -> None:
        passes = replace(passes or Passes(), **settings)
        self.shards, self.device = shards, torch.device(device)
        self.batch_size = min(batch_size, shards.n_captions)
        self.aligned_targets, self.drop_last = aligned_targets, passes.drop_last
        self.samples_per_epoch = passes.samples_per_epoch
        # the order within a shard (random, grouped, hard)
        self.order = SAMPLERS.get(passes.sampler, "optim.sampler")(passes.seed)
        self.generator = torch.Generator().manual_seed(passes.seed)
        self.world = world or Distributed()  # every rank draws the same global batch and keeps its share
        self._pass: _Pass | None = None  # the current pass
        self._pass_start: torch.Tensor = self.generator.get_state()  # generator state the pass was drawn from
        self._taken = 0  # batches of the current pass already yielded

    def __len__(self) -> int:
        n = self.samples_per_epoch or self.shards.n_captions
        per_pass = self.shards.n_captions // self.batch_size
        if not self.samples_per_epoch:
            return per_pass if self.drop_last else -(-n // self.batch_size)
        return max(1, n // self.batch_size)

    def _draw_pass(self) -> None:
        self._pass_start = self.generator.get_state()
        self._pass = _Pass(self.shards, self.order, self.generator, self.batch_size)
        self._taken = 0

    def _batches_in_pass(self) -> int:
        n = self.shards.n_captions
        return n // self.batch_size if (self.drop_last or self.samples_per_epoch) else -(-n // self.batch_size)

    def epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        for _ in range(len(self)):
            if self._pass is None or self._taken >= self._batches_in_pass():
                self._draw_pass()
            self._taken += 1
            yield self._batch(*self._pass.take(self.batch_size))
        if not self.samples_per_epoch:
            self._pass = None  # a full pass ends with the epoch; the next epoch draws the next pass

    def _batch(self, shard_of: np.ndarray, positions: np.ndarray):
        """Captions (this rank's share), labels, images and image ids of one global batch."""
        mine = self.world.local_rows(np.arange(len(positions)))
        captions, labels, own, parts = [], [], [], []
        for k in _in_order(shard_of):
            at = shard_of == k
            shard = self.shards.shards[k]
            labels.append(shard.labels(positions[at]))
            own.append(shard.own_images(positions[at]))
            parts.append((k, at))
        captions = np.empty((len(mine), self.shards.text_dim), dtype=np.float32)
        for k, at in parts:
            local = np.flatnonzero(at[mine])
            captions[local] = self.shards.shards[k].read_captions(positions[mine][local])
        labels = _stitch_rows(labels, parts, len(positions), self.shards.label_width)
        own_local = _stitch_rows(own, parts, len(positions), 0)
        offsets = np.zeros(len(positions), dtype=np.int64)
        for k, at in parts:
            offsets[at] = self.shards.shards[k].image_offset
        if self.aligned_targets:
            images = self._images_of(shard_of, own_local)
            return self._tensors(captions, labels, images, own_local + offsets)
        ids = own_local + offsets
        unique, first = np.unique(ids, return_index=True)
        images = self._images_of(shard_of[first], own_local[first])
        return self._tensors(captions, labels, images, unique)

    def _images_of(self, shard_of: np.ndarray, local: np.ndarray) -> np.ndarray:
        out = np.empty((len(local), self.shards.image_dim), dtype=np.float32)
        for k in _in_order(shard_of):
            at = shard_of == k
            out[at] = self.shards.shards[k].read_images(local[at])
        return out

    def _tensors(self, captions, labels, images, image_ids):
        def move(array, dtype=None):
            return torch.as_tensor(array, dtype=dtype).to(self.device, non_blocking=True)

        return move(captions), move(labels, torch.long), move(images), move(image_ids, torch.long)

    def get_state(self) -> dict:
        """The generator state the current pass was drawn from and how far into it training got."""
        if self._pass is None:
            return {"generator": self.generator.get_state(), "taken": torch.tensor(0)}
        return {"generator": self._pass_start, "taken": torch.tensor(self._taken)}

    def set_state(self, state) -> None:
        if isinstance(state, torch.Tensor):  # checkpoints of earlier versions: at the start of a pass
            state = {"generator": state, "taken": torch.tensor(0)}
        self.generator.set_state(state["generator"])
        self._pass, taken = None, int(state["taken"])
        if taken:
            self._draw_pass()
            self._pass.take(taken * self.batch_size)  # replays the pass's draws up to where it stopped
            self._taken = taken


class _Pass:
    """One pass over the shards: their order, then each shard's caption order drawn when the batches reach it,
    so memory holds one shard's order (not one entry per caption of the data) and the generator is consumed
    in the same sequence however the pass is cut into batches."""

    def __init__(self, shards: ShardList, order, generator: torch.Generator, batch_size: int) -> None:
        self.shards, self.order, self.generator, self.batch_size = shards, order, generator, batch_size
        self.queue = list(range(len(shards)))
        if len(shards) > 1:
            self.queue = torch.randperm(len(shards), generator=generator).tolist()
        self.shard, self.positions = -1, np.empty(0, dtype=np.int64)

    def take(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``count`` (shard, position) pairs of the pass (fewer at its end)."""
        shard_of, positions = [], []
        while count > 0 and (len(self.positions) or self.queue):
            if not len(self.positions):
                self.shard = self.queue.pop(0)
                self.positions = self.order(self.shard, self.shards.shards[self.shard], self.generator, self.batch_size)
            part, self.positions = self.positions[:count], self.positions[count:]
            shard_of.append(np.full(len(part), self.shard, dtype=np.int32))
            positions.append(part)
            count -= len(part)
        return np.concatenate(shard_of), np.concatenate(positions)


def _in_order(shard_of: np.ndarray) -> list[int]:
    """The shards of a batch in the order the batch reaches them."""
    _, first = np.unique(shard_of, return_index=True)
    return [int(shard_of[i]) for i in np.sort(first)]


def _stitch_rows(pieces: list[np.ndarray], parts, n: int, width: int) -> np.ndarray:
    """Per-shard pieces put back at the batch rows they came from; ``width`` > 0: label rows padded with -1."""
    out = np.full((n, width) if width else (n,), -1, dtype=np.int64)
    for piece, (_, at) in zip(pieces, parts):
        if width:
            out[at, : piece.shape[1]] = piece
        else:
            out[at] = piece
    return out


@dataclass(frozen=True)
class PoolRows:
    """What unpaired pools add to each batch: pseudo-pairs (raw caption and image rows, row-aligned, and each
    image's id, which follows every paired image's id), their weight against a pair, and the caption pool
    rows the neighbourhood regulariser samples ``pool_batch`` of a step (none: no regulariser)."""

    captions: np.ndarray
    images: np.ndarray
    image_ids: np.ndarray
    weight: float = 1.0
    pool_captions: np.ndarray | None = None
    pool_batch: int = 0


class PooledBatches:
    """:class:`CaptionBatches` with pool rows added to every batch (one loop: the pairs' batches set the
    epoch). A batch is ``(captions, labels, images, ref_labels, weights, pool_captions)``: the pairs' rows,
    then the pseudo-pairs' (their images after the pairs' images, ids still sorted), a weight per caption,
    and the caption pool sample (None without the regulariser).

    Pseudo-pairs are taken in order from an endless sequence of seeded permutations, and pool samples are
    seeded by the step, so the state is two counters besides the pairs' batches: a resumed run draws what
    the uninterrupted one would."""

    def __init__(self, base: CaptionBatches, rows: PoolRows, seed: int = 0) -> None:
        if base.world.active:
            raise UsageError("unpaired pools with a learnt recipe train in one process, not under torchrun")
        self.base, self.rows, self.seed = base, rows, seed
        n = len(rows.captions)
        self.per_batch = max(1, round(base.batch_size * n / base.shards.n_captions)) if n else 0
        self.taken, self.steps = 0, 0
        self._cycle, self._order = -1, np.empty(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.base)

    @property
    def device(self) -> torch.device:
        return self.base.device

    def epoch(self):
        for captions, labels, images, ref_labels in self.base.epoch():
            picked = self._take(self.per_batch)
            self.steps += 1
            yield (*self._joined(captions, labels, images, ref_labels, picked), self._pool_sample())

    def _take(self, count: int) -> np.ndarray:
        """The next ``count`` pseudo-pair rows: permutation ``c`` of the pairs is seeded by ``(seed, c)``."""
        n, out = len(self.rows.captions), []
        for position in range(self.taken, self.taken + count):
            cycle = position // n
            if cycle != self._cycle:
                self._cycle, self._order = cycle, np.random.default_rng([self.seed, cycle]).permutation(n)
            out.append(self._order[position % n])
        self.taken += count
        return np.asarray(out, dtype=np.int64)

    def _pool_sample(self) -> torch.Tensor | None:
        pool = self.rows.pool_captions
        if pool is None or not self.rows.pool_batch:
            return None
        rng = np.random.default_rng([self.seed, self.steps, 1])
        picked = np.sort(rng.choice(len(pool), size=min(self.rows.pool_batch, len(pool)), replace=False))
        return torch.as_tensor(pool[picked]).to(self.device)

    def _joined(self, captions, labels, images, ref_labels, picked: np.ndarray):
        """The pairs' batch with the picked pseudo-pairs after it, and the rows' weights."""
        move = self.device
        ids = torch.as_tensor(self.rows.image_ids[picked]).to(move)
        pseudo_labels = ids if labels.dim() == 1 else _padded(ids, labels.shape[1])
        weights = torch.cat([torch.ones(len(captions)), torch.full((len(picked),), float(self.rows.weight))])
        if self.base.aligned_targets:
            new_ids, new_images = ids, self.rows.images[picked]
        else:
            unique, first = np.unique(self.rows.image_ids[picked], return_index=True)
            new_ids, new_images = torch.as_tensor(unique).to(move), self.rows.images[picked[first]]
        return (
            torch.cat([captions, torch.as_tensor(self.rows.captions[picked]).to(move)]),
            torch.cat([labels, pseudo_labels]),
            torch.cat([images, torch.as_tensor(new_images).to(move)]),
            torch.cat([ref_labels, new_ids]),
            weights.to(move),
        )

    def get_state(self) -> dict:
        return {"pairs": self.base.get_state(), "taken": torch.tensor(self.taken), "steps": torch.tensor(self.steps)}

    def set_state(self, state) -> None:
        if not (isinstance(state, dict) and "pairs" in state):
            raise UsageError("the checkpoint's batches were drawn without unpaired pools; resume with the run's config")
        self.base.set_state(state["pairs"])
        self.taken, self.steps = int(state["taken"]), int(state["steps"])


def _padded(ids: torch.Tensor, width: int) -> torch.Tensor:
    """Ids as label rows of ``width`` (one relevant image each, padded with -1)."""
    out = torch.full((len(ids), width), -1, dtype=ids.dtype, device=ids.device)
    out[:, 0] = ids
    return out
