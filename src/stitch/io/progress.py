"""Progress for long loops: a redrawn bar where one can draw (a terminal, or a notebook with ipywidgets),
otherwise a line at a time (so logs do not fill with redraws), nothing for short loops. In a notebook the
lines go to stdout: Jupyter draws stderr as an error."""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Iterator
from typing import TextIO

log = logging.getLogger("stitch")
LONG = 20  # chunks: shorter loops finish in a few seconds and show nothing


def chunk_starts(total: int, step: int, desc: str) -> Iterator[int]:
    """``range(0, total, step)``, reporting progress when the loop is long."""
    starts = range(0, total, step)
    if len(starts) < LONG:
        yield from starts
        return
    if live_bars():
        from tqdm.auto import tqdm

        yield from tqdm(starts, desc=desc, unit="chunk", leave=False, dynamic_ncols=True)
        return
    tenth = max(1, len(starts) // 10)
    for i, start in enumerate(starts):
        if i % tenth == 0:
            log.info("%s: %d%%", desc, 100 * i // len(starts))
        yield start


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's kernel shell), where a widget bar can draw."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


def live_bars() -> bool:
    """Whether to draw redrawn bars: on a terminal, or in a notebook that has ipywidgets (without them
    tqdm.auto falls back to text bars on stderr, which a notebook shows as an error)."""
    if sys.stderr.isatty():
        return True
    return in_notebook() and importlib.util.find_spec("ipywidgets") is not None


def status_stream() -> TextIO:
    """Where progress lines go: stdout in a notebook, stderr elsewhere (results stay alone on stdout)."""
    return sys.stdout if in_notebook() else sys.stderr


class Steps:
    """The named steps of a job that takes a while (``stitch report``): a bar of steps where one can draw,
    else one line per step as it starts, so a minute of work is never silent."""

    def __init__(self, desc: str, total: int, enabled: bool = True) -> None:
        self.desc, self.total, self.done, self.bar = desc, total, 0, None
        self.enabled = enabled
        if enabled and live_bars():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, dynamic_ncols=True)

    def __call__(self, name: str) -> None:
        """Step ``name`` starts (the one before it is done)."""
        if self.bar is not None:
            self.bar.update(min(1, self.done))
            self.bar.set_postfix_str(name)
        elif self.enabled:
            print(f"{self.desc} [{self.done + 1}/{self.total}]: {name}", file=status_stream(), flush=True)
        self.done += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.total - self.bar.n)
            self.bar.close()
