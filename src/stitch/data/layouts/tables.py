"""The ``table`` layout: one Parquet or Arrow IPC (file or stream) table, or a folder of them, with the
embeddings in list<float> or fixed_size_list<float> columns, one image-caption pair a row.

Arrow is memory-mapped and read zero-copy; Parquet is compressed, so it is decoded into memory a column at
a time (``stitch convert`` writes a memory-mapped copy of anything that does not fit). The column reading
itself is :mod:`stitch.data.layouts.arrow`'s, shared with the other layouts; this module only says which
files make a table.
"""

from __future__ import annotations

from pathlib import Path

from stitch.data.errors import DataError
from stitch.data.layouts.arrow import Table, ipc_table, parquet_table, table_part
from stitch.data.layouts.grouping import assemble
from stitch.data.layouts.rows import Spec
from stitch.data.sharded import ShardedPairs
from stitch.io.untrusted import regular_file

TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")


def is_table(path: Path) -> bool:
    """A table file, or a folder holding one (checked after the folder layouts, which may hold tables too)."""
    if path.is_file():
        return path.suffix in TABLE_SUFFIXES
    return path.is_dir() and any(p.suffix in TABLE_SUFFIXES and p.is_file() for p in path.iterdir())


def read_table(
    path: str | Path,
    text_column: str | None = None,
    image_column: str | None = None,
    image_key: str | None = None,
    caption_column: str | None = "caption",
    split_column: str | None = "split",
) -> ShardedPairs:
    """A Parquet / Arrow IPC file, or a folder of them (one shard each, in name order). Arrow is
    memory-mapped zero-copy; Parquet is compressed and so decoded into memory, one column at a time."""
    path = Path(path)
    spec = Spec(text_column, image_column, image_key, caption_column, split_column)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES and p.is_file())
    else:
        files = [path] if path.exists() else []
    if not files:
        raise DataError(f"{path}: no {'/'.join(TABLE_SUFFIXES)} files")
    parts = [table_part(_open_table(f, f.name), spec) for f in files]
    return assemble(parts, path)


def _open_table(path: Path, name: str) -> Table:
    regular_file(path, error=DataError)
    return parquet_table(path, name) if path.suffix == ".parquet" else ipc_table(path, name)
