"""What every holder of paired embeddings offers, in memory (:class:`~stitch.data.dataset.PairedEmbeddings`) or
on disk (:class:`~stitch.data.sharded.ShardedPairs`): training, evaluation, indexing and the API take a
:class:`Pairs` and call these, so no caller branches on which one it holds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from stitch.data.dataset import PairedEmbeddings
    from stitch.data.shards import Shard, ShardList


@runtime_checkable
class Pairs(Protocol):
    """Captions paired with images. ``in_memory``: whether every row is in RAM already (a K-fold ensemble
    deals images into folds in memory and refuses data on disk rather than read it all silently)."""

    encoders: dict

    @property
    def in_memory(self) -> bool: ...

    @property
    def n_captions(self) -> int: ...

    @property
    def n_images(self) -> int: ...

    @property
    def text_dim(self) -> int: ...

    @property
    def image_dim(self) -> int: ...

    def split_names(self) -> list[str]: ...

    def select(self, split: str | None = None) -> PairedEmbeddings: ...

    def to_memory(self) -> PairedEmbeddings: ...

    def take_images(self, image_rows: np.ndarray) -> PairedEmbeddings: ...

    def holdout(
        self, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
    ) -> tuple[ShardList, PairedEmbeddings, str]: ...

    def holdout_rows(
        self, dev_fraction: float = 0.1, seed: int = 0, max_dev_images: int = 0
    ) -> tuple[np.ndarray, np.ndarray, str]: ...

    def image_shards(self) -> tuple[list[Shard], dict[str, list[np.ndarray]], str]: ...
