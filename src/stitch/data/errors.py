"""The data layer's error and how it names offending rows."""

from __future__ import annotations

import numpy as np

from stitch.errors import StitchError


class DataError(StitchError, ValueError):
    """Input data is unusable; the message says what was found and what to fix."""


def describe_rows(rows: np.ndarray, limit: int = 8) -> str:
    """``3 row(s): 1, 4, 9`` — how many rows are at fault and the first few."""
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    more = f" (+{len(rows) - limit} more)" if len(rows) > limit else ""
    return f"{len(rows)} row(s): {shown}{more}"
