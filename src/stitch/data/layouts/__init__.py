"""Readers for the on-disk layouts embeddings usually come in, opened as :class:`ShardedPairs` without a copy.

* ``clip-retrieval``: the folder clip-retrieval / img2dataset write — ``img_emb/img_emb_{i}.npy``,
  ``text_emb/text_emb_{i}.npy`` and ``metadata/metadata_{i}.parquet``, row-aligned, one image-caption pair
  a row. The ``.npy`` files are memory-mapped (float16 kept as float16).
* ``table``: one Parquet or Arrow IPC (file or stream) table, or a folder of them, with the embeddings in
  list<float> or fixed_size_list<float> columns. Arrow is memory-mapped and read zero-copy; Parquet is
  compressed, so it is decoded into memory a column at a time (``stitch convert`` writes a memory-mapped
  copy of anything that does not fit).
* ``hf-datasets``: a folder written by ``datasets``' ``save_to_disk`` (Arrow streams listed in
  ``state.json``), or a ``DatasetDict`` folder, read with pyarrow only, zero-copy.

Each input file is one shard. Without ``image_key`` every row is its own image; with it, rows of a file that
share the key are one image (its embedding is the key's first row) and a key may not appear in two files,
so that a split by image never separates a caption from its image. Optional columns: ``caption`` (caption
texts), the key (image names) and ``split`` (constant within an image) — the names stitch's sharded layout
keeps. pyarrow is imported only when a table is read (``pip install 'stitch[ondisk]'``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stitch.data.errors import DataError, describe_rows
from stitch.data.npy import read_npy
from stitch.data.sharded import ShardedPairs
from stitch.data.shards import Shard
from stitch.data.texts import TEXT, ArrowTexts, as_texts
from stitch.io.untrusted import first_repeat, inside, read_json, regular_file

logger = logging.getLogger(__name__)

LAYOUTS = ("clip-retrieval", "table", "hf-datasets")
TEXT_EMBEDDING_COLUMNS = ("text_emb", "text_embedding")  # tried in order when text_column is not given
IMAGE_EMBEDDING_COLUMNS = ("img_emb", "image_embedding")
TABLE_SUFFIXES = (".parquet", ".arrow", ".feather")
CLIP_FILES = {"img_emb": ("img_emb_", ".npy"), "text_emb": ("text_emb_", ".npy"), "metadata": ("metadata_", ".parquet")}


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


class ChunkedRows:
    """A matrix held as several zero-copy row blocks (an Arrow file's record batches), indexed by rows like an
    array. Joining the blocks would copy the whole file into memory; rows are gathered only when read."""

    def __init__(self, blocks: Sequence[np.ndarray]) -> None:
        self.blocks = list(blocks)
        self.starts = np.concatenate([[0], np.cumsum([len(b) for b in self.blocks])]).astype(np.int64)
        self.dtype = self.blocks[0].dtype
        self.shape = (int(self.starts[-1]), int(self.blocks[0].shape[1]))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: Any) -> np.ndarray:
        """``rows`` (ints, a slice or a boolean mask) as a new (k, dims) array; an int gives one row."""
        if isinstance(rows, tuple):
            raise TypeError("ChunkedRows is indexed by rows only")
        picked = self._positions(rows)
        out = np.empty((picked.size, self.shape[1]), dtype=self.dtype)
        flat = picked.ravel()
        which = np.searchsorted(self.starts, flat, side="right") - 1
        for k in np.unique(which):
            mine = which == k
            out[mine] = self.blocks[k][flat[mine] - self.starts[k]]
        return out[0] if picked.ndim == 0 else out

    def _positions(self, rows: Any) -> np.ndarray:
        n = self.shape[0]
        if isinstance(rows, slice):
            return np.arange(*rows.indices(n))
        picked = np.asarray(rows)
        if picked.size == 0:
            return picked.astype(np.int64)
        if picked.dtype == bool:
            if picked.shape != (n,):
                raise IndexError(f"boolean index of shape {picked.shape} for {n} rows")
            return np.flatnonzero(picked)
        if picked.dtype.kind not in "iu":
            raise IndexError(f"rows must be integers, a slice or a boolean mask, got {picked.dtype}")
        if picked.min() < -n or picked.max() >= n:
            raise IndexError(f"row index out of range for {n} rows")
        return np.where(picked < 0, picked + n, picked).astype(np.int64)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[:], dtype=dtype)


@dataclass(frozen=True)
class _Spec:
    """Which columns hold what (the same options for every table layout)."""

    text_column: str | None = None
    image_column: str | None = None
    image_key: str | None = None
    caption_column: str | None = "caption"
    split_column: str | None = "split"


@dataclass
class _Part:
    """One input file's rows, one image-caption pair a row, before rows sharing a key become one image."""

    name: str
    text: np.ndarray | ChunkedRows
    image: np.ndarray | ChunkedRows
    keys: np.ndarray | None = None
    captions: np.ndarray | None = None
    split: np.ndarray | None = None


@dataclass
class _Table:
    """One file's columns, read on demand (Parquet decodes a column when asked; Arrow maps it)."""

    where: str
    name: str
    names: list[str]
    rows: int
    read: Callable[[str], Any]  # column name -> pyarrow ChunkedArray


# --- dispatch -------------------------------------------------------------------------------------------


def detect_layout(path: str | Path) -> str | None:
    """Which of :data:`LAYOUTS` ``path`` is, from its file names alone (None: none of them)."""
    path = Path(path)
    if path.is_file():
        return "table" if path.suffix in TABLE_SUFFIXES else None
    if not path.is_dir():
        return None
    if (path / "img_emb").is_dir() or (path / "text_emb").is_dir():
        return "clip-retrieval"
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        return "hf-datasets"
    if any(p.suffix in TABLE_SUFFIXES and p.is_file() for p in path.iterdir()):
        return "table"
    return None


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
    if layout == "clip-retrieval":
        if text_column or image_column:
            raise DataError(
                f"{path}: a clip-retrieval folder keeps embeddings in text_emb/ and img_emb/ .npy files; "
                "text_column/image_column do not apply"
            )
        return read_clip_retrieval(path, image_key=image_key, **options)
    readers = {"table": read_table, "hf-datasets": read_hf_datasets}
    if layout not in readers:
        raise DataError(f"unknown layout {layout!r}; known: {list(LAYOUTS)}")
    return readers[layout](path, text_column=text_column, image_column=image_column, image_key=image_key, **options)


# --- clip-retrieval ---------------------------------------------------------------------------------------


def read_clip_retrieval(
    folder: str | Path,
    image_key: str | None = None,
    caption_column: str | None = "caption",
    split_column: str | None = "split",
) -> ShardedPairs:
    """A clip-retrieval / img2dataset embedding folder, each numbered shard memory-mapped. The metadata
    folder may be absent (no texts, no key); when present every shard needs its file."""
    folder = Path(folder)
    spec = _Spec(image_key=image_key, caption_column=caption_column, split_column=split_column)
    return _assemble([_clip_part(folder, i, files, spec) for i, files in _clip_files(folder)], folder)


def _numbered(folder: Path, prefix: str, suffix: str) -> dict[int, Path]:
    """Each shard number's file; two spellings of one number (``img_emb_2`` and ``img_emb_02``) are refused,
    since keeping either would silently drop the other's rows."""
    pattern = re.compile(rf"{re.escape(prefix)}(\d+){re.escape(suffix)}")
    if not folder.is_dir():
        return {}
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match:
            continue
        number = int(match.group(1))
        if number in found:
            raise DataError(f"{folder}: {found[number].name} and {path.name} are both shard {number}; keep one of them")
        found[number] = path
    return found


def _clip_files(folder: Path) -> list[tuple[int, dict[str, Path]]]:
    """Each shard number with its files, failing on a number some folder lacks."""
    found = {sub: _numbered(folder / sub, *pattern) for sub, pattern in CLIP_FILES.items()}
    if not (folder / "metadata").is_dir():
        del found["metadata"]
    if not found["img_emb"] and not found["text_emb"]:
        raise DataError(f"{folder}: no img_emb/img_emb_N.npy or text_emb/text_emb_N.npy files")
    numbers = sorted(set().union(*found.values()))
    for i in numbers:
        lacking = [sub for sub in found if i not in found[sub]]
        if lacking:
            missing = ", ".join(f"{sub}/{CLIP_FILES[sub][0]}{i}{CLIP_FILES[sub][1]}" for sub in lacking)
            held = "; ".join(f"{sub} has {_few(sorted(found[sub]))}" for sub in found)
            raise DataError(
                f"{folder}: shard {i}: {missing} missing; the {', '.join(found)} folders must hold the same "
                f"shard numbers ({held})"
            )
    return [(i, {sub: found[sub][i] for sub in found}) for i in numbers]


def _few(numbers: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(n) for n in numbers[:limit])
    return f"[{shown}{', ...' if len(numbers) > limit else ''}] ({len(numbers)})"


def _clip_part(folder: Path, i: int, files: dict[str, Path], spec: _Spec) -> _Part:
    text, image = _load_npy(files["text_emb"]), _load_npy(files["img_emb"])
    meta = _parquet_table(files["metadata"], files["metadata"].name) if "metadata" in files else None
    counts = {f"text_emb/{files['text_emb'].name}": len(text), f"img_emb/{files['img_emb'].name}": len(image)}
    if meta is not None:
        counts[f"metadata/{meta.name}"] = meta.rows
    if len(set(counts.values())) != 1:
        said = ", ".join(f"{name} has {n}" for name, n in counts.items())
        raise DataError(f"{folder}: shard {i}: row counts differ ({said}); each row must be one image-caption pair")
    if meta is None and spec.image_key:
        raise DataError(f"{folder}: image_key={spec.image_key!r} needs the metadata/ folder, which is missing")
    keys, captions, split = _labels(meta, spec) if meta is not None else (None, None, None)
    name = f"{files['img_emb'].name}+{files['text_emb'].name}"
    return _Part(name, text, image, keys, captions, split)


def _load_npy(path: Path) -> np.ndarray:
    matrix = read_npy(path, mmap=True)
    if matrix.ndim != 2 or matrix.dtype.kind != "f":
        raise DataError(
            f"{path}: embeddings must be a rows x dims float16/float32 matrix, got {matrix.dtype} "
            f"of shape {matrix.shape}"
        )
    return matrix


# --- Parquet / Arrow tables ------------------------------------------------------------------------------


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
    spec = _Spec(text_column, image_column, image_key, caption_column, split_column)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES and p.is_file())
    else:
        files = [path] if path.exists() else []
    if not files:
        raise DataError(f"{path}: no {'/'.join(TABLE_SUFFIXES)} files")
    parts = [_table_part(_open_table(f, f.name), spec) for f in files]
    return _assemble(parts, path)


def _open_table(path: Path, name: str) -> _Table:
    regular_file(path, error=DataError)
    return _parquet_table(path, name) if path.suffix == ".parquet" else _ipc_table(path, name)


def _parquet_table(path: Path, name: str) -> _Table:
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

    return _Table(str(path), name, list(handle.schema_arrow.names), handle.metadata.num_rows, read)


def _ipc_table(path: Path, name: str) -> _Table:
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
    return _Table(str(path), name, list(table.column_names), table.num_rows, table.column)


def _table_part(table: _Table, spec: _Spec) -> _Part:
    text_name = _pick(table, spec.text_column, TEXT_EMBEDDING_COLUMNS, "text_column")
    image_name = _pick(table, spec.image_column, IMAGE_EMBEDDING_COLUMNS, "image_column")
    text = _matrix(table.read(text_name), text_name, table.where)
    image = _matrix(table.read(image_name), image_name, table.where)
    return _Part(table.name, text, image, *_labels(table, spec))


def _pick(table: _Table, given: str | None, defaults: tuple[str, ...], option: str) -> str:
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


def _labels(table: _Table, spec: _Spec) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
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


def _strings(table: _Table, name: str) -> np.ndarray:
    column = table.read(name)
    if column.null_count:
        rows = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
        raise DataError(f"{table.where}: column {name!r} is empty (null) in {describe_rows(rows)}; fill it")
    return as_texts(column.to_numpy(zero_copy_only=False), f"{table.where}: column {name!r}")


# --- Hugging Face datasets ------------------------------------------------------------------------------


def read_hf_datasets(
    folder: str | Path,
    text_column: str | None = None,
    image_column: str | None = None,
    image_key: str | None = None,
    caption_column: str | None = "caption",
    split_column: str | None = "split",
    splits: Sequence[str] | None = None,
) -> ShardedPairs:
    """A ``save_to_disk`` folder read with pyarrow alone, each Arrow file a shard, zero-copy. A DatasetDict
    folder gives all its splits (or those in ``splits``) with each split's name as the images' split (a
    ``split`` column in the rows is then ignored): stitch's holdout uses splits named ``train`` and ``dev``."""
    folder = Path(folder)
    spec = _Spec(text_column, image_column, image_key, caption_column, split_column)
    if not (folder / "dataset_dict.json").is_file():
        if splits is not None:
            raise DataError(f"{folder}: splits= selects splits of a DatasetDict folder; this is a single Dataset")
        return _assemble(_hf_parts(folder, spec, ""), folder)
    names = _dict_splits(folder, splits)
    where = f"{folder}/dataset_dict.json"
    parts = [part for split in names for part in _hf_parts(inside(folder, split, where, DataError), spec, split)]
    return _assemble(parts, folder)


def _dict_splits(folder: Path, wanted: Sequence[str] | None) -> list[str]:
    """The splits to read; a split listed twice would count its rows twice, so it is refused."""
    names = _read_json(folder / "dataset_dict.json").get("splits")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f'{folder}/dataset_dict.json lists no splits (expected {{"splits": [...]}})')
    repeated = first_repeat(names) or first_repeat(list(wanted or []))
    if repeated is not None:
        raise DataError(f"{folder}/dataset_dict.json: split {repeated!r} is listed twice; each split may appear once")
    unknown = [s for s in (wanted or []) if s not in names]
    if unknown:
        raise DataError(f"{folder}: no split(s) {unknown}; the DatasetDict has {names}")
    return list(wanted) if wanted is not None else names


def _hf_parts(folder: Path, spec: _Spec, split: str) -> list[_Part]:
    """Each Arrow file ``state.json`` lists, in its order; a DatasetDict split names every row's split."""
    where = f"{folder}/state.json"
    files = _read_json(folder / "state.json").get("_data_files")
    if not isinstance(files, list) or not files or not all(isinstance(f, dict) and "filename" in f for f in files):
        raise DataError(f"{where} lists no _data_files; not a datasets save_to_disk folder")
    names = [entry["filename"] for entry in files]
    paths = [inside(folder, name, where, DataError) for name in names]  # every name checked before any read
    repeated = first_repeat(paths)
    if repeated is not None:
        raise DataError(f"{where}: Arrow file {repeated.name!r} is listed twice; each file may appear once")
    parts = []
    for path in paths:
        if not path.exists():
            raise DataError(f"{path}: missing (state.json lists it)")
        part = _table_part(_ipc_table(path, f"{split}/{path.name}" if split else path.name), spec)
        if split:
            part.split = np.full(len(part.text), split)
        parts.append(part)
    return parts


def _read_json(path: Path) -> dict:
    """A JSON object from a regular file, no key repeated (``json`` alone would keep the last)."""
    try:
        found = read_json(path, DataError)
    except FileNotFoundError as err:
        raise DataError(f"{path}: missing; not a datasets save_to_disk folder") from err
    if not isinstance(found, dict):
        raise DataError(f"{path}: expected a JSON object")
    return found


# --- from rows to shards ---------------------------------------------------------------------------------


def _assemble(parts: list[_Part], source: Path) -> ShardedPairs:
    """Checked parts (one per file) as shards: rows sharing a key become one image, files agree on dimensions
    and no key spans two files."""
    parts = [p for p in parts if len(p.text)]
    if not parts:
        raise DataError(f"{source}: holds no rows")
    _check_dims(parts, source)
    _check_keys_apart(parts, source)
    if all(p.keys is None for p in parts):
        _warn_repeated_images(parts[0], source)
    shards, columns = [], {}
    for part in parts:
        shard, extra = _group(part, source)
        shards.append(shard)
        for column, values in extra.items():
            columns.setdefault(column, []).append(values)
    if "image_split" in columns and len(columns["image_split"]) != len(parts):
        lacking = next(p.name for p in parts if p.split is None)
        raise DataError(f"{source}: {lacking} has no split column while other files do; give every file one")
    if "caption_texts" in columns and len(columns["caption_texts"]) != len(parts):
        blank = [np.full(len(p.text), "", dtype=TEXT) for p in parts]
        columns["caption_texts"] = [p.captions if p.captions is not None else b for p, b in zip(parts, blank)]
    return ShardedPairs(shards, columns, {}, source=str(source))


REPEAT_SAMPLE = 4096  # rows of the first file checked for an image repeated row for row


def _warn_repeated_images(part: _Part, source: Path) -> None:
    """Without a key every row is its own image; a file whose rows repeat one image embedding (several
    captions of a picture, a row each) would put identical copies of it in the gallery and score every
    caption wrong but one. A sample of the first rows is checked and the fix named."""
    sample = np.ascontiguousarray(np.asarray(part.image[:REPEAT_SAMPLE]))
    if len(sample) < 2:
        return
    rows = sample.view(np.dtype((np.void, sample.dtype.itemsize * sample.shape[1]))).ravel()
    repeated = len(rows) - len(np.unique(rows))
    if repeated:
        logger.warning(
            "%s: %s: %d of its first %d rows repeat an earlier row's image embedding, and without an image key "
            "every row is its own image (identical gallery copies, wrong metrics); pass --image-key COLUMN "
            "(image_key= in Python) naming the column that says which image a row shows",
            source,
            part.name,
            repeated,
            len(rows),
        )


def _check_dims(parts: list[_Part], source: Path) -> None:
    first = parts[0]
    for part in parts[1:]:
        for side, mine, theirs in (("text", part.text, first.text), ("image", part.image, first.image)):
            if mine.shape[1] != theirs.shape[1]:
                raise DataError(
                    f"{source}: {part.name} has {side} dimension {mine.shape[1]} but {first.name} has "
                    f"{theirs.shape[1]}; every file must hold embeddings of the same encoders"
                )


def _check_keys_apart(parts: list[_Part], source: Path) -> None:
    """A key in two files would put captions of one image in two shards (and on both sides of a split)."""
    keyed = [(k, np.unique(p.keys)) for k, p in enumerate(parts) if p.keys is not None]
    if not keyed:
        return
    keys = np.concatenate([u for _, u in keyed])
    owners = np.concatenate([np.full(len(u), k) for k, u in keyed])
    order = np.argsort(keys, kind="stable")
    shared = np.flatnonzero(keys[order][1:] == keys[order][:-1])
    if len(shared):
        at = shared[0]
        one, two = parts[owners[order[at]]].name, parts[owners[order[at + 1]]].name
        key = str(keys[order[at]])
        raise DataError(
            f"{source}: image key {key!r} appears in two shards, {one} and {two} ({len(shared)} key(s) shared "
            "across files); all captions of an image must be in one file — regroup the rows by key"
        )


def _group(part: _Part, source: Path) -> tuple[Shard, dict[str, np.ndarray]]:
    """The part as a shard: without keys each row is an image (zero-copy); with keys each key is one image,
    the first row's embedding, in order of first appearance (gathered into memory unless every key is new)."""
    n = len(part.text)
    if part.keys is None:
        owner = firsts = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
    else:
        _, first, inverse = np.unique(part.keys, return_index=True, return_inverse=True)
        order = np.argsort(first)
        rank = np.empty(len(first), dtype=np.int64)
        rank[order] = np.arange(len(first))
        owner, firsts = rank[inverse.ravel()], first[order]
    images = part.image if len(firsts) == n else np.asarray(part.image[firsts])
    if len(firsts) < n:
        _check_grouping(part, owner, firsts, images)
    if part.keys is not None:
        _check_keys_name_images(part, source)
    extra = {}
    if part.captions is not None:
        extra["caption_texts"] = part.captions
    if part.keys is not None:
        extra["image_names"] = part.keys[firsts]
    if part.split is not None:
        extra["image_split"] = _image_split(part, owner, firsts, source)
    return Shard(part.text, images, owner, name=part.name), extra


GROUP_CHECK_ROWS = 65_536  # rows compared at a time with their group's first row


def _check_grouping(part: _Part, owner: np.ndarray, firsts: np.ndarray, images: np.ndarray) -> None:
    """Rows that share an image key must hold that image's embedding: a key column out of step with the
    embeddings (metadata rotated by a row, a wrong key) would otherwise pair captions with the wrong image."""
    for start in range(0, len(owner), GROUP_CHECK_ROWS):
        rows = np.arange(start, min(start + GROUP_CHECK_ROWS, len(owner)))
        differ = ~np.all(np.asarray(part.image[rows]) == images[owner[rows]], axis=1)
        if differ.any():
            row = int(rows[np.flatnonzero(differ)[0]])
            first = int(firsts[owner[row]])
            raise DataError(
                f"{part.name}: rows {first} and {row} share image key {str(part.keys[row])!r} but hold different "
                f"image embeddings ({int(differ.sum())} such row(s) in rows {start}-{rows[-1]}): the key column "
                "is out of step with the embeddings, or names something other than the image"
            )


PER_CAPTION_SHARE = 0.25  # rows repeating the previous row's image under a new key, above which keys are per caption


def _check_keys_name_images(part: _Part, source: Path) -> None:
    """A key column that names captions, not images (a caption id, a row number) makes each caption its own
    image: identical gallery copies and wrong metrics. Its sign, checked on the first rows: consecutive rows
    with the same image embedding under different keys (duplicate photos under two names are rare and
    scattered, not row after row)."""
    sample = np.asarray(part.image[:REPEAT_SAMPLE])
    if len(sample) < 4:
        return
    keys = part.keys[: len(sample)]
    repeats = np.flatnonzero(np.all(sample[1:] == sample[:-1], axis=1) & (keys[1:] != keys[:-1])) + 1
    if len(repeats) >= PER_CAPTION_SHARE * len(sample):
        row = int(repeats[0])
        raise DataError(
            f"{source}: {part.name}: rows {row - 1} and {row} hold the same image embedding under keys "
            f"{str(keys[row - 1])!r} and {str(keys[row])!r} ({len(repeats)} of the first {len(sample)} rows do): "
            "the key column names captions, not images; pass --image-key naming the image column"
        )


def _image_split(part: _Part, owner: np.ndarray, firsts: np.ndarray, source: Path) -> np.ndarray:
    split = part.split[firsts]
    bad = np.flatnonzero(split[owner] != part.split)
    if len(bad):
        row, first = int(bad[0]), int(firsts[owner[bad[0]]])
        key, was, now = (str(v) for v in (part.keys[row], part.split[first], part.split[row]))
        raise DataError(
            f"{source}: {part.name}: image {key!r} is in split {was!r} at row {first} but {now!r} at row {row} "
            f"({len(bad)} such row(s)); the split must be the same for every caption of an image"
        )
    return split
