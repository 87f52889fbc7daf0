"""Competition submissions: the Kaggle CSV (``id,embedding``) and the ``.pt`` dict layout."""

from __future__ import annotations

import csv
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from stitch.data import DataError, Queries
from stitch.errors import UsageError
from stitch.io.atomic import atomic_write, ensure_writable

FORMATS = ("csv", "pt")
HEADER = ["id", "embedding"]


def format_for(path: str | Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise UsageError(f"unknown submission format {fmt!r}; choose from {FORMATS}")
        return fmt
    suffix = Path(path).suffix.lstrip(".")
    if suffix not in FORMATS:
        raise UsageError(f"cannot tell the format from {path}; pass --format csv or pt")
    return suffix


def _check(queries: Queries, predictions: np.ndarray) -> None:
    if predictions.ndim != 2 or len(predictions) != len(queries):
        raise DataError(f"{len(queries)} queries but predictions of shape {predictions.shape}")
    if not np.isfinite(predictions).all():
        raise DataError("predictions contain NaN/Inf; refusing to write a broken submission")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet run a cell as a formula (CSV injection)."""

_PLAIN_NUMBER = re.compile(r"[+-]?\d+(\.\d+)?")
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}  # CSV quoting keeps these intact


def _bad_control(text: str) -> str | None:
    for char in text:
        if char not in _ALLOWED_CONTROLS and unicodedata.category(char) == "Cc":
            return char
    return None


def check_ids(ids: Iterable[object], formula_ids: str = "refuse") -> list[str]:
    """The ids as they will be written; refuse any the grader could not match or a spreadsheet would run.

    The competition grader matches ids exactly, so nothing is changed silently. Refused (ValueError naming
    the first offending id and its 0-based row): empty ids, repeated ids, control characters other than
    tab/newline/CR (which CSV quoting keeps intact), and formula-like ids starting with one of
    ``= + - @ TAB CR`` (Excel/LibreOffice would execute ``=HYPERLINK(...)`` on opening the file). Plain
    numbers such as ``-3`` are not formulas and pass. With ``formula_ids="prefix"`` formula-like ids are
    written with a leading ``'`` instead (OWASP's neutralisation): safe to open, but such rows no longer
    match their query id at the grader, so use it only for files meant for people.
    """
    if formula_ids not in ("refuse", "prefix"):
        raise UsageError(f"formula_ids must be 'refuse' or 'prefix', got {formula_ids!r}")
    out: list[str] = []
    seen: dict[str, int] = {}
    written: dict[str, int] = {}
    for row, raw in enumerate(ids):
        qid = str(raw)
        if not qid:
            raise DataError(f"id at row {row} is empty; every submission row needs its query's id")
        bad = _bad_control(qid)
        if bad is not None:
            raise DataError(
                f"id {qid!r} at row {row} contains the control character {bad!r}; "
                "graders and spreadsheets mangle these, so fix the ids in the queries file"
            )
        if qid in seen:
            raise DataError(f"id {qid!r} at row {row} repeats row {seen[qid]}; a submission needs one row per id")
        seen[qid] = row
        if qid.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(qid):
            if formula_ids == "refuse":
                raise DataError(
                    f"id {qid!r} at row {row} starts with {qid[0]!r}, which a spreadsheet runs as a formula; "
                    "refusing to write it (prefixing it with ' would make it safe to open, but the grader "
                    "matches ids exactly and that row would no longer count); pass formula_ids='prefix' "
                    "only for a file meant for people"
                )
            qid = "'" + qid
        if qid in written:  # a prefixed id can collide with an id that really starts with '
            raise DataError(f"id {qid!r} at row {row} (prefixed) repeats row {written[qid]}")
        written[qid] = row
        out.append(qid)
    return out


def _format_row(row: np.ndarray) -> str:
    """``[v0, v1, ...]`` with each value's shortest text that reads back (via float64) as the very same number."""
    texts = [str(v) for v in row]  # numpy's shortest round-trip repr for the row's own dtype
    back = np.array(texts, dtype=np.float64).astype(row.dtype)
    for i in np.flatnonzero(back != row):  # rare double rounding through float64: write the exact value
        texts[i] = repr(float(row[i]))
    return "[" + ", ".join(texts) + "]"


def write_csv(
    path: str | Path,
    queries: Queries,
    predictions: np.ndarray,
    force: bool = False,
    *,
    formula_ids: str = "refuse",
) -> Path:
    """One row per query: its id and the predicted embedding as a bracketed list of floats.

    Written with the ``csv`` module (ids with commas, quotes or newlines are quoted, so every reader sees
    two fields) in UTF-8 with CRLF rows like the competition's sample file; floats are written so that
    :func:`read_csv_submission` gives back the exact predicted values. Ids are checked by
    :func:`check_ids` (``formula_ids`` is passed on) before anything is written.
    """
    path = ensure_writable(path, force)
    _check(queries, predictions)
    predictions = np.asarray(predictions)
    if not np.issubdtype(predictions.dtype, np.floating) or predictions.dtype.itemsize > 8:
        predictions = predictions.astype(np.float64)  # ints, and long doubles (not exact via float64 text)
    ids = check_ids(queries.row_ids, formula_ids)

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\r\n")
            writer.writerow(HEADER)
            for qid, row in zip(ids, predictions):
                writer.writerow([qid, _format_row(row)])

    atomic_write(path, write)
    return path


def write_pt(
    path: str | Path, queries: Queries, predictions: np.ndarray, force: bool = False, prediction: str = "direction"
) -> Path:
    """The challenge dict: the queries' ``caption_embd`` and ``captions_text`` plus ``img_embd`` predictions;
    ``prediction`` records what the vectors are (``direction`` or ``point``)."""
    import torch

    path = ensure_writable(path, force)
    _check(queries, predictions)
    body = {
        "caption_embd": torch.as_tensor(queries.embeddings),
        "img_embd": torch.as_tensor(predictions, dtype=torch.float32),
        "prediction": str(prediction),
    }
    if queries.texts is not None:
        body["captions_text"] = [str(t) for t in queries.texts]
    if queries.ids is not None:
        body["caption_ids"] = [str(i) for i in queries.ids]
    atomic_write(path, lambda tmp: torch.save(body, tmp))
    return path


def read_csv_submission(path: str | Path, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Ids and embeddings of a submission CSV (for checks and tests), failing on anything malformed.

    Parsed with the ``csv`` module, so quoted ids (commas, quotes, newlines) come back exactly. Values are
    parsed as float64 and cast to ``dtype``: a file from :func:`write_csv` gives back its predictions
    bit for bit when ``dtype`` is theirs. Raises DataError naming the line of a broken row.
    """
    # an embedding is one CSV field; the csv module's default 128 KiB cap is too small for wide ones
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 28))
    ids: list[str] = []
    rows: list[np.ndarray] = []
    seen: dict[str, int] = {}
    with Path(path).open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader, None)
            if header != HEADER:
                raise DataError(f"{path}: header must be id,embedding, got {header}")
            line_no = reader.line_num + 1
            for record in reader:
                if len(record) != 2:
                    raise DataError(f"{path}:{line_no}: expected 2 fields (id, embedding), got {len(record)}")
                qid, emb = record
                emb = emb.strip()
                if not (emb.startswith("[") and emb.endswith("]")) or not emb[1:-1].strip():
                    raise DataError(f"{path}:{line_no}: embedding must be a non-empty bracketed list")
                try:
                    values = np.array(emb[1:-1].split(","), dtype=np.float64)
                except ValueError as err:
                    raise DataError(f"{path}:{line_no}: embedding has a value that is not a number ({err})") from None
                if not np.isfinite(values).all():
                    raise DataError(f"{path}:{line_no}: embedding has NaN/Inf values")
                if rows and len(values) != len(rows[0]):
                    raise DataError(f"{path}:{line_no}: {len(values)} values, earlier rows have {len(rows[0])}")
                if qid in seen:
                    raise DataError(f"{path}:{line_no}: id {qid!r} repeats line {seen[qid]}")
                seen[qid] = line_no
                ids.append(qid)
                rows.append(values.astype(dtype))
                line_no = reader.line_num + 1
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: not valid CSV ({err})") from None
    return np.array(ids, dtype=str), np.stack(rows) if rows else np.zeros((0, 0), dtype)
