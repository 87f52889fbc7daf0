"""Bounds are stated as one Bound and checked by one check: numbers only (never a bool), whole where asked,
inside the inclusive range (NaN inside none), each caller's error type and prefix in the one message."""

from __future__ import annotations

import math

import pytest

from stitch.bounds import Bound, check
from stitch.errors import UsageError
from stitch.retrieval.hubness import RERANK_BOUNDS
from stitch.retrieval.index import PARAM_BOUNDS
from stitch.training.config import RANGES


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (True, r"^n must be a whole number in \[1, 10\], got True$"),
        ("3", r"^n must be a whole number in \[1, 10\], got '3'$"),
        (2.5, r"^n must be a whole number, got 2.5$"),
        (math.inf, r"^n must be a whole number, got inf$"),
        (0, r"^n must be in \[1, 10\], got 0$"),
        (11.0, r"^n must be in \[1, 10\], got 11.0$"),
    ],
)
def test_a_value_outside_its_bound_is_one_error_naming_it(value, message):
    with pytest.raises(UsageError, match=message):
        check("n", value, Bound(1, 10, integer=True), UsageError)


def test_the_range_is_inclusive_open_where_none_and_holds_no_nan():
    assert check("x", 1, Bound(1, 10)) == 1 and check("x", 10.0, Bound(1, 10)) == 10.0
    assert check("x", -1e300, Bound(None, 0)) == -1e300 and check("x", 7, Bound()) == 7
    with pytest.raises(ValueError, match=r"x must be a number in \[0, 1\], got nan"):
        check("x", math.nan, Bound(0, 1), noun="a number")
    low, high = Bound(0.5, 2)  # unpacks as its range
    assert (low, high) == (0.5, 2)


def test_every_table_of_bounds_is_made_of_bounds():
    for table in (RANGES, PARAM_BOUNDS, RERANK_BOUNDS):
        assert all(isinstance(bound, Bound) for bound in table.values())
    assert all(bound.integer for bound in PARAM_BOUNDS.values())
