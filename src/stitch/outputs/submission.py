"""Competition submissions: the Kaggle CSV (``id,embedding``) and the ``.pt`` dict layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from stitch.data import DataError, Queries
from stitch.io.atomic import atomic_write, ensure_writable

FORMATS = ("csv", "pt")


def format_for(path: str | Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown submission format {fmt!r}; choose from {FORMATS}")
        return fmt
    suffix = Path(path).suffix.lstrip(".")
    if suffix not in FORMATS:
        raise ValueError(f"cannot tell the format from {path}; pass --format csv or pt")
    return suffix


def _check(queries: Queries, predictions: np.ndarray) -> None:
    if predictions.ndim != 2 or len(predictions) != len(queries):
        raise DataError(f"{len(queries)} queries but predictions of shape {predictions.shape}")
    if not np.isfinite(predictions).all():
        raise DataError("predictions contain NaN/Inf; refusing to write a broken submission")


def write_csv(path: str | Path, queries: Queries, predictions: np.ndarray, force: bool = False) -> Path:
    """One row per query: its id and the predicted embedding as a bracketed list of floats."""
    path = ensure_writable(path, force)
    _check(queries, predictions)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as handle:
            handle.write("id,embedding\n")
            for qid, row in zip(queries.row_ids, predictions):
                handle.write(f'{qid},"[{", ".join(f"{v:.6g}" for v in row)}]"\n')

    atomic_write(path, write)
    return path


def write_pt(path: str | Path, queries: Queries, predictions: np.ndarray, force: bool = False) -> Path:
    """The challenge dict: the queries' ``caption_embd`` and ``captions_text`` plus ``img_embd`` predictions."""
    import torch

    path = ensure_writable(path, force)
    _check(queries, predictions)
    body = {
        "caption_embd": torch.as_tensor(queries.embeddings),
        "img_embd": torch.as_tensor(predictions, dtype=torch.float32),
    }
    if queries.texts is not None:
        body["captions_text"] = [str(t) for t in queries.texts]
    if queries.ids is not None:
        body["caption_ids"] = [str(i) for i in queries.ids]
    atomic_write(path, lambda tmp: torch.save(body, tmp))
    return path


def read_csv_submission(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Ids and embeddings of a submission CSV (for checks and tests)."""
    import csv

    ids, rows = [], []
    with Path(path).open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header != ["id", "embedding"]:
            raise DataError(f"{path}: header must be id,embedding, got {header}")
        for line_no, (qid, emb) in enumerate(reader, start=2):
            if not (emb.startswith("[") and emb.endswith("]")):
                raise DataError(f"{path}:{line_no}: embedding must be a bracketed list")
            ids.append(qid)
            rows.append(np.array(emb[1:-1].split(","), dtype=np.float32))
    return np.array(ids), np.stack(rows) if rows else np.zeros((0, 0), np.float32)
