"""The ``hf-datasets`` layout: a folder written by ``datasets``' ``save_to_disk`` (Arrow streams listed in
``state.json``), or a ``DatasetDict`` folder of such splits, read with pyarrow alone, zero-copy — ``datasets``
itself is not needed.

Its own module because the folder is described by JSON files that name other files: every name is checked
to stay inside the folder and to appear once before anything is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stitch.data.errors import DataError
from stitch.data.layouts.arrow import ipc_table, table_part
from stitch.data.layouts.grouping import assemble
from stitch.data.layouts.rows import Part, Spec
from stitch.data.sharded import ShardedPairs
from stitch.io.untrusted import first_repeat, inside, read_json_object


def is_hf_datasets(path: Path) -> bool:
    """A folder with a ``state.json`` (one Dataset) or ``dataset_dict.json`` (a DatasetDict)."""
    return path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file())


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
    spec = Spec(text_column, image_column, image_key, caption_column, split_column)
    if not (folder / "dataset_dict.json").is_file():
        if splits is not None:
            raise DataError(f"{folder}: splits= selects splits of a DatasetDict folder; this is a single Dataset")
        return assemble(_hf_parts(folder, spec, ""), folder)
    names = _dict_splits(folder, splits)
    where = f"{folder}/dataset_dict.json"
    parts = [part for split in names for part in _hf_parts(inside(folder, split, where, DataError), spec, split)]
    return assemble(parts, folder)


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


def _hf_parts(folder: Path, spec: Spec, split: str) -> list[Part]:
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
        part = table_part(ipc_table(path, f"{split}/{path.name}" if split else path.name), spec)
        if split:
            part.split = np.full(len(part.text), split)
        parts.append(part)
    return parts


def _read_json(path: Path) -> dict:
    """A JSON object from a regular file, no key repeated (``json`` alone would keep the last)."""
    return read_json_object(path, DataError, ": missing; not a datasets save_to_disk folder")
