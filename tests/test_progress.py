"""Progress off a terminal: one log line per tenth of a long loop, nothing for a short one, and the loop
itself unchanged."""

from __future__ import annotations

import logging

from stitch.io.progress import chunk_starts


def test_long_loops_log_tenths_short_loops_stay_quiet(caplog):
    caplog.set_level(logging.INFO, logger="stitch")
    assert list(chunk_starts(1000, 10, "ranks")) == list(range(0, 1000, 10))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f"ranks: {p}%" for p in range(0, 100, 10)]
    caplog.clear()
    assert list(chunk_starts(50, 10, "short")) == [0, 10, 20, 30, 40]
    assert caplog.records == []
