"""Numeric bounds, stated and checked one way: a :class:`Bound` per setting, :func:`check` per value.

Training settings (``stitch.training.config.RANGES``), index parameters (``stitch.retrieval.index.PARAM_BOUNDS``)
and rescorer parameters (``stitch.retrieval.hubness.RERANK_BOUNDS``) each keep their table of bounds next to
what they bound, and each raises its own error type with its own prefix; what counts as out of bounds, and
how it is said, is decided here once. A value is a number (never a bool), whole when the bound says so, and
inside the inclusive range; NaN is inside no range.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bound:
    """An inclusive range ``[low, high]`` (None: open on that side), of whole numbers when ``integer``.
    It unpacks as ``low, high``."""

    low: float | None = None
    high: float | None = None
    integer: bool = False

    def __iter__(self) -> Iterator[float | None]:
        return iter((self.low, self.high))

    def __str__(self) -> str:
        return f"[{self.low}, {self.high}]"

    def holds(self, value: float) -> bool:
        """Whether the number ``value`` is inside the range (NaN never is)."""
        above = self.low is None or value >= self.low
        below = self.high is None or value <= self.high
        return bool(above and below) and value == value


def check(name: str, value: Any, bound: Bound, error: type[Exception] = ValueError, noun: str = "") -> Any:
    """``value`` if it is a number within ``bound``, else ``error`` naming ``name``, the bound and the value.
    ``noun`` is how an out-of-range message calls a valid value (``"a number"``: "k must be a number in
    [1, 10], got 0"; by default "k must be in [1, 10], got 0")."""
    kind = "a whole number" if bound.integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise error(f"{name} must be {kind} in {bound}, got {value!r}")
    if bound.integer and isinstance(value, float) and not value.is_integer():
        raise error(f"{name} must be a whole number, got {value!r}")
    if not bound.holds(value):
        raise error(f"{name} must be {noun + ' ' if noun else ''}in {bound}, got {value}")
    return value
