"""The query/item layout of product search and any A <-> B data with several right answers per query.

A folder holds::

    queries.jsonl (.csv, .parquet)   query_id, query_text, item_ids (a list), optional grades (a list)
    query_embeddings.npy             one row per query, in the table's order
    items.jsonl (.csv, .parquet)     item_id, optional name and split
    item_embeddings.npy              one row per item, in the table's order

In CSV files the lists are JSON (``["a", "b"]``) or space-separated ids. Every item id a query names
must exist; empty lists and duplicate ids are errors naming the rows.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from stitch.data.dataset import PairedEmbeddings
from stitch.data.errors import DataError, describe_rows
from stitch.data.npy import read_npy
from stitch.data.relevance import Relevance
from stitch.io.atomic import atomic_path, atomic_write_text
from stitch.io.untrusted import unique_keys

QUERY_TABLES = ("queries.jsonl", "queries.csv", "queries.parquet")
ITEM_TABLES = ("items.jsonl", "items.csv", "items.parquet")


def is_query_items_folder(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in QUERY_TABLES)


def _table(folder: Path, names: tuple[str, ...]) -> list[dict]:
    found = [folder / name for name in names if (folder / name).is_file()]
    if not found:
        raise DataError(f"{folder}: needs one of {list(names)}")
    path = found[0]
    if path.suffix == ".parquet":
        return _parquet_rows(path)
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))
        lines = path.read_text(encoding="utf-8").splitlines()
        return [_json_row(line, path, number) for number, line in enumerate(lines, 1) if line.strip()]
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text: {err}") from err


def _parquet_rows(path: Path) -> list[dict]:
    """Rows of a Parquet table through pandas (with pyarrow or fastparquet), list columns as lists."""
    try:
        import pandas
    except ImportError as err:
        raise DataError(f"{path}: reading Parquet needs pandas with pyarrow or fastparquet installed") from err
    try:
        frame = pandas.read_parquet(path)
    except ImportError as err:
        raise DataError(f"{path}: reading Parquet needs pyarrow or fastparquet: {err}") from err
    except Exception as err:  # the engines raise their own types for truncated or foreign files
        raise DataError(f"{path}: not a readable Parquet table (truncated or corrupt?): {err}") from err
    return [
        {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()} for row in frame.to_dict("records")
    ]


def _json_row(line: str, path: Path, number: int) -> dict:
    try:  # a repeated key (two item_ids) is refused: json alone keeps the last and drops relevant items
        row = json.loads(line, object_pairs_hook=unique_keys(f"{path}: line {number}", DataError))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {number} is not JSON (truncated?): {err}") from err
    if not isinstance(row, dict):
        raise DataError(f"{path}: line {number} must be a JSON object")
    return row


def _as_list(value, what: str, row: int) -> list:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        text = value.strip()
        return json.loads(text) if text.startswith("[") else text.split()
    raise DataError(f"query row {row}: {what} must be a list, got {type(value).__name__}")


def _column(rows: list[dict], key: str, table: str) -> list:
    missing = [i for i, row in enumerate(rows) if key not in row]
    if missing:
        raise DataError(f"{table}: column {key!r} missing in {describe_rows(np.array(missing))}")
    return [row[key] for row in rows]


def _unique_ids(ids: list, table: str) -> np.ndarray:
    ids = np.array([str(i) for i in ids])
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{table}: duplicate ids {values[counts > 1][:5].tolist()}")
    return ids


def _relevance(queries: list[dict], item_ids: np.ndarray) -> Relevance:
    position = {item: i for i, item in enumerate(item_ids.tolist())}
    lists, grades, has_grades = [], [], any("grades" in row and row["grades"] not in (None, "") for row in queries)
    for row, query in enumerate(queries):
        names = [str(i) for i in _as_list(query["item_ids"], "item_ids", row)]
        if not names:
            raise DataError(f"query row {row} ({query.get('query_id')}) lists no relevant item")
        unknown = [n for n in names if n not in position]
        if unknown:
            raise DataError(f"query row {row} ({query.get('query_id')}) names unknown item ids {unknown[:5]}")
        lists.append([position[n] for n in names])
        if has_grades:
            row_grades = [float(g) for g in _as_list(query.get("grades") or [1] * len(names), "grades", row)]
            if len(row_grades) != len(names):
                raise DataError(f"query row {row}: {len(row_grades)} grades for {len(names)} item ids")
            grades.append(row_grades)
    return Relevance.from_lists(lists, len(item_ids), grades if has_grades else None)


def read_query_items(folder: str | Path, **kwargs) -> PairedEmbeddings:
    """A query/item folder as paired data: queries play the captions, items the images."""
    folder = Path(folder)
    queries, items = _table(folder, QUERY_TABLES), _table(folder, ITEM_TABLES)
    if not queries or not items:
        raise DataError(f"{folder}: the query and item tables must not be empty")
    query_ids = _unique_ids(_column(queries, "query_id", "queries"), "queries")
    item_ids = _unique_ids(_column(items, "item_id", "items"), "items")
    _column(queries, "item_ids", "queries")
    relevance = _relevance(queries, item_ids)
    texts = [row.get("query_text") for row in queries]
    splits = [row.get("split") for row in items]
    return PairedEmbeddings(
        captions=read_npy(folder / "query_embeddings.npy"),
        images=read_npy(folder / "item_embeddings.npy"),
        caption_image=relevance.first_items,
        caption_ids=query_ids,
        caption_texts=None if any(t is None for t in texts) else np.array(texts),
        image_names=np.array([str(row.get("name") or row["item_id"]) for row in items]),
        image_split=None if any(s in (None, "") for s in splits) else np.array(splits),
        relevance=relevance,
        **kwargs,
    )


def write_query_items(data: PairedEmbeddings, folder: str | Path) -> Path:
    """Write ``data`` (its relevance, ids, texts, names and split) as a query/item folder."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise DataError(f"{folder} exists and is not empty; choose a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    names = data.image_names if data.image_names is not None else np.arange(data.n_images).astype(str)
    links = data.relevant
    rows = []
    for q in range(data.n_captions):
        row = {"query_id": str(data.caption_ids[q]) if data.caption_ids is not None else str(q)}
        if data.caption_texts is not None:
            row["query_text"] = str(data.caption_texts[q])
        row["item_ids"] = names[links.row(q)].tolist()
        if links.grades is not None:
            row["grades"] = links.grades[links.indptr[q] : links.indptr[q + 1]].tolist()
        rows.append(json.dumps(row, ensure_ascii=False))
    items = [
        json.dumps({"item_id": str(n), **({"split": str(data.image_split[i])} if data.image_split is not None else {})})
        for i, n in enumerate(names)
    ]
    for name, matrix in (("query_embeddings.npy", data.captions), ("item_embeddings.npy", data.images)):
        with atomic_path(folder / name) as tmp, tmp.open("wb") as handle:
            np.save(handle, matrix)
    atomic_write_text(folder / "items.jsonl", "\n".join(items) + "\n")
    atomic_write_text(folder / "queries.jsonl", "\n".join(rows) + "\n")
    return folder
