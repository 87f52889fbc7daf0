"""Progress for long chunked loops: a tqdm bar on a terminal, a log line every tenth off one (so logs do
not fill with redraws), nothing for short loops."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator

log = logging.getLogger("stitch")
LONG = 20  # chunks: shorter loops finish in a few seconds and show nothing


def chunk_starts(total: int, step: int, desc: str) -> Iterator[int]:
    """``range(0, total, step)``, reporting progress when the loop is long."""
    starts = range(0, total, step)
    if len(starts) < LONG:
        yield from starts
        return
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(starts, desc=desc, unit="chunk", leave=False, dynamic_ncols=True)
        return
    tenth = max(1, len(starts) // 10)
    for i, start in enumerate(starts):
        if i % tenth == 0:
            log.info("%s: %d%%", desc, 100 * i // len(starts))
        yield start
