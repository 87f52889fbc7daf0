"""Per-query checks run before a query joins a micro-batch.

A batch shares one encoder call and one search call, so an input that makes either raise would fail
every query batched with it. Whatever can be refused from the query alone is refused here, with a
:class:`QueryError` (a ``ValueError``: the service answers 422), so it never reaches a batch.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from stitch.errors import UsageError

# Whitespace controls a sentence may hold (the tokenizer treats them as spaces); any other C0/C1 control is refused.
ALLOWED_CONTROLS = frozenset("\t\n\r\x0b\x0c")


class QueryError(UsageError):
    """The query itself is unusable: the fault of the request that sent it, never of its batch."""


def check_text(text: object) -> str:
    """``text`` if a tokenizer can take it: a str that encodes to UTF-8 (no lone surrogates) and holds no
    control characters other than whitespace. Raises :class:`QueryError` otherwise."""
    if not isinstance(text, str):
        raise QueryError(f"the query must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise QueryError(f"the query is not valid Unicode (a lone surrogate at position {err.start})") from None
    for position, char in enumerate(text):
        if char not in ALLOWED_CONTROLS and unicodedata.category(char) == "Cc":
            raise QueryError(f"the query holds a control character (U+{ord(char):04X}) at position {position}")
    return text


def check_embedding(values: Sequence[float] | np.ndarray, dim: int | None) -> np.ndarray:
    """``values`` as the float32 row the searcher will see: a flat vector of ``dim`` values, each finite
    *after* the cast (1e39 is a finite Python float but Inf in float32). Raises :class:`QueryError` otherwise."""
    try:
        row = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise QueryError(f"the embedding must be a list of numbers ({err})") from None
    if row.ndim != 1:
        raise QueryError(f"the embedding must be a flat list of numbers, got shape {list(row.shape)}")
    if dim is not None and row.shape[0] != dim:
        raise QueryError(f"embedding must have {dim} dimensions, got {row.shape[0]}")
    with np.errstate(over="ignore", invalid="ignore"):
        row32 = row.astype(np.float32)
    if not np.isfinite(row32).all():
        bad = int(np.flatnonzero(~np.isfinite(row32))[0])
        raise QueryError(
            f"embedding contains NaN or Inf, or a value beyond float32 range (|x| > 3.4e38), at index {bad}"
        )
    return row32
