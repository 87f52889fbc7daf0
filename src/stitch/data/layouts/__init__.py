"""Readers for the on-disk layouts embeddings usually come in, opened as :class:`ShardedPairs` without a copy.

* ``clip-retrieval`` (:mod:`.clip_retrieval`): the folder clip-retrieval / img2dataset write, numbered
  ``.npy`` shards memory-mapped, with Parquet metadata.
* ``table`` (:mod:`.tables`): one Parquet or Arrow IPC table, or a folder of them, embeddings in list<float>
  or fixed_size_list<float> columns.
* ``hf-datasets`` (:mod:`.hf_datasets`): a folder written by ``datasets``' ``save_to_disk``, or a
  ``DatasetDict`` folder, read with pyarrow only, zero-copy.

Each reader turns its files into rows (:mod:`.rows`, Arrow columns read by :mod:`.arrow`) and hands them to
one grouping step (:mod:`.grouping`). Each input file is one shard. Without ``image_key`` every row is its
own image; with it, rows of a file that share the key are one image (its embedding is the key's first row)
and a key may not appear in two files, so that a split by image never separates a caption from its image.
Optional columns: ``caption`` (caption texts), the key (image names) and ``split`` (constant within an
image) — the names stitch's sharded layout keeps. pyarrow is imported only when a table is read
(``pip install 'stitch[ondisk]'``).

Which layout a path is, is decided with every other data format in :mod:`stitch.data.formats`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stitch.data.errors import DataError
from stitch.data.formats import LAYOUTS, detect_format, open_format
from stitch.data.layouts.arrow import IMAGE_EMBEDDING_COLUMNS, TEXT_EMBEDDING_COLUMNS
from stitch.data.layouts.clip_retrieval import CLIP_FILES, read_clip_retrieval
from stitch.data.layouts.hf_datasets import read_hf_datasets
from stitch.data.layouts.rows import ChunkedRows
from stitch.data.layouts.tables import TABLE_SUFFIXES, read_table
from stitch.data.sharded import ShardedPairs

__all__ = [
    "CLIP_FILES",
    "IMAGE_EMBEDDING_COLUMNS",
    "LAYOUTS",
    "TABLE_SUFFIXES",
    "TEXT_EMBEDDING_COLUMNS",
    "ChunkedRows",
    "detect_layout",
    "open_layout",
    "read_clip_retrieval",
    "read_hf_datasets",
    "read_table",
]


def detect_layout(path: str | Path) -> str | None:
    """Which of :data:`LAYOUTS` ``path`` is, from its file names alone (None: none of them)."""
    return detect_format(path, among=LAYOUTS)


def open_layout(
    path: str | Path,
    image_key: str | None = None,
    text_column: str | None = None,
    image_column: str | None = None,
    layout: str | None = None,
    **options: Any,
) -> ShardedPairs:
    """Open any of :data:`LAYOUTS` (detected unless ``layout`` is given); ``options`` go to its reader
    (``caption_column``, ``split_column``, and ``splits`` for a DatasetDict)."""
    layout = layout or detect_layout(path)
    if layout is None:
        raise DataError(
            f"{path}: not a known embedding layout; expected a clip-retrieval folder (img_emb/, text_emb/, "
            f"metadata/), a {'/'.join(TABLE_SUFFIXES)} file or folder, or a datasets save_to_disk folder"
        )
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; known: {list(LAYOUTS)}")
    return open_format(layout, path, text_column=text_column, image_column=image_column, image_key=image_key, **options)
