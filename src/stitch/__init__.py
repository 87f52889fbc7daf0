"""stitch: learn translators between embedding spaces and search across them.

The API (``stitch.load``, ``stitch.open``, ``stitch.train``, ``stitch.evaluate``, ``stitch.predict``, ...) is imported
lazily so that ``import stitch`` and ``stitch --help`` stay fast (no torch at import time).
"""

from __future__ import annotations

__version__ = "0.1.0"

_API = (
    "load", "open", "train", "evaluate", "scorings", "predict", "write_submission", "build_index", "open_searcher",
    "EvalOptions", "IndexOptions",
)  # fmt: skip


def __getattr__(name: str):
    if name in _API:
        from stitch import api

        return getattr(api, name)
    raise AttributeError(f"module 'stitch' has no attribute {name!r}")


__all__ = [*_API, "__version__"]
