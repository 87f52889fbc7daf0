"""Arrow columns as stitch rows, shared by every layout that stores a table: a Parquet or Arrow IPC file
opened as a :class:`Table` whose columns are read on demand, its embedding columns viewed as
(rows, dims) matrices without a copy, its key, caption and split columns as texts.

pyarrow is imported only here and only when a table is read (``pip install 'stitch[ondisk]'``), so the
rest of stitch runs without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stitch.data.errors import DataError, describe_rows
from stitch.data.layouts.rows import ChunkedRows, Part, Spec
from stitch.data.texts import ArrowTexts, as_texts
from stitch.io.untrusted import regular_file

TEXT_EMBEDDING_COLUMNS = ("text_emb", "text_embedding")  # tried in order when text_column is not given
IMAGE_EMBEDDING_COLUMNS = ("img_emb", "image_embedding")


def _pyarrow():
    """pyarrow and its IPC/Parquet modules, or the one line that says how to get them."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.ipc
        import pyarrow.parquet
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            "reading Parquet/Arrow/datasets layouts needs pyarrow: pip install 'stitch[ondisk]'", name="pyarrow"
        ) from err
    return pyarrow


@dataclass
class Table:
    """One file's columns, read on demand (Parquet decodes a column when asked; Arrow maps it)."""

    where: str
    name: str
    names: list[str]
    rows: int
    read: Callable[[str], Any]  # column name -> pyarrow ChunkedArray


def parquet_table(path: Path, name: str) -> Table:
    pa = _pyarrow()
    regular_file(path, error=DataError)
    try:
        handle = pa.parquet.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable Parquet file (truncated or corrupt?): {err}") from err

    def read(column: str):
        try:
            return pa.chunked_array([handle.read(columns=[column]).column(0).combine_chunks()])
        except (pa.ArrowException, OSError, ValueError) as err:
            raise DataError(f"{path}: column {column!r} cannot be read (truncated or corrupt?): {err}") from err

    return Table(str(path), name, list(handle.schema_arrow.names), handle.metadata.num_rows, read)


def ipc_table(path: Path, name: str) -> Table:
    """An Arrow IPC file or stream, memory-mapped: its columns point into the file, nothing is copied."""
    pa = _pyarrow()
    regular_file(path, error=DataError)
    try:
        source = pa.memory_map(str(path), "r")
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot be memory-mapped: {err}") from err
    try:
        table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError, ValueError):
        source.seek(0)
        try:
            table = pa.ipc.open_stream(source).read_all()
        except (pa.ArrowException, OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable Arrow IPC file or stream (truncated or corrupt?): {err}") from err
    return Table(str(path), name, list(table.column_names), table.num_rows, table.column)


def table_part(table: Table, spec: Spec) -> Part:
    text_name = _pick(table, spec.text_column, TEXT_EMBEDDING_COLUMNS, "text_column")
    image_name = _pick(table, spec.image_column, IMAGE_EMBEDDING_COLUMNS, "image_column")
    text = _matrix(table.read(text_name), text_name, table.where)
    image = _matrix(table.read(image_name), image_name, table.where)
    return Part(table.name, text, image, *labels(table, spec))


def _pick(table: Table, given: str | None, defaults: tuple[str, ...], option: str) -> str:
    wanted = (given,) if given else defaults
    for name in wanted:
        if name in table.names:
            return name
    lacking = f"no column {given!r}" if given else f"none of the columns {list(defaults)}"
    raise DataError(f"{table.where}: has {lacking}; columns found: {table.names} (pass {option}= to name it)")


def _matrix(column: Any, name: str, where: str) -> np.ndarray | ChunkedRows:
    """An embedding column as a (rows, dims) view of its values, without a copy; a column in several record
    batches becomes a :class:`ChunkedRows` of one view per batch."""
    pa = _pyarrow()
    kind = column.type
    listy = pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    if not listy or not pa.types.is_floating(kind.value_type):
        raise DataError(
            f"{where}: column {name!r} holds {kind}; embeddings must be list<float16/float32> "
            "or fixed_size_list<float16/float32>"
        )
    if column.null_count:
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{where}: column {name!r} has null embeddings in {describe_rows(rows)}; drop or fill them")
    blocks, start, width = [], 0, None
    for chunk in column.chunks:
        if len(chunk):
            blocks.append(_block(chunk, name, where, start, width))
            width = blocks[-1].shape[1]
        start += len(chunk)
    if not blocks:
        return np.empty((0, kind.list_size if pa.types.is_fixed_size_list(kind) else 1), dtype=np.float32)
    return blocks[0] if len(blocks) == 1 else ChunkedRows(blocks)


def _block(chunk: Any, name: str, where: str, start: int, width: int | None) -> np.ndarray:
    """One record batch's embeddings as a zero-copy (rows, dims) view; every row must have ``width`` values
    (the first batch's commonest length when None)."""
    pa = _pyarrow()
    if pa.types.is_fixed_size_list(chunk.type):
        width = chunk.type.list_size
    else:
        lengths = np.diff(chunk.offsets.to_numpy())
        if width is None:
            values, counts = np.unique(lengths, return_counts=True)
            width = int(values[np.argmax(counts)])
        bad = np.flatnonzero(lengths != width)
        if len(bad):
            raise DataError(
                f"{where}: column {name!r} row {start + int(bad[0])} has {int(lengths[bad[0]])} values where the "
                f"embeddings have {width} ({len(bad)} such row(s)); every embedding "
                "must have the same length"
            )
    flat = chunk.flatten()
    if flat.null_count:
        rows = np.unique(np.flatnonzero(flat.is_null().to_numpy(zero_copy_only=False)) // max(width, 1)) + start
        raise DataError(f"{where}: column {name!r} has null values inside the embeddings of {describe_rows(rows)}")
    if width == 0:
        raise DataError(f"{where}: column {name!r} holds empty embeddings")
    return flat.to_numpy(zero_copy_only=True).reshape(len(chunk), width)


def labels(table: Table, spec: Spec) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Per-row image keys, caption texts and split names, each None when absent."""
    if spec.image_key and spec.image_key not in table.names:
        raise DataError(f"{table.where}: no image key column {spec.image_key!r}; columns found: {table.names}")
    keys = _strings(table, spec.image_key) if spec.image_key else None
    captions = None
    if spec.caption_column and spec.caption_column in table.names:
        pa = _pyarrow()
        captions = ArrowTexts(pa.compute.fill_null(table.read(spec.caption_column).cast(pa.string()), ""))
    has_split = spec.split_column and spec.split_column in table.names
    return keys, captions, _strings(table, spec.split_column) if has_split else None


def _strings(table: Table, name: str) -> np.ndarray:
    column = table.read(name)
    if column.null_count:
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{table.where}: column {name!r} is empty (null) in {describe_rows(rows)}; fill it")
    return as_texts(column.to_numpy(zero_copy_only=False), f"{table.where}: column {name!r}")
