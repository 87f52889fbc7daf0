"""Cross-origin access (CORS), off unless origins are given: a search page served from another site (a demo,
a notebook front end) may then call this service from the browser.

Off by default because the service needs no browser access from elsewhere to work (its own page is
same-origin) and any cross-origin allowance is a decision for whoever deploys it. Origins are checked at start:
a browser sends ``Origin: https://a.example`` (lower case, no path), so ``https://A.example/`` is
normalised to that and ``https://a.example/app`` or a bare ``a.example``, which could never match, are refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from stitch.errors import UsageError

CORS_METHODS = ("GET", "POST")
CORS_HEADERS = ("content-type",)  # POST /search sends JSON, which browsers preflight
SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")


def check_origin(origin: Any) -> str:
    """``origin`` as a browser would send it (``scheme://host[:port]``, lower case), or ``*``; ValueError if
    it could never match one."""
    if not isinstance(origin, str):
        raise UsageError(f"a CORS origin must be a string, got {origin!r}")
    if origin == "*":
        return origin
    problem = f"CORS origin {origin!r} must be scheme://host[:port] (like https://a.example) or '*'"
    try:
        parts = urlsplit(origin.strip().lower())
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        raise UsageError(problem) from None
    if not SCHEME.fullmatch(parts.scheme) or not parts.hostname or "@" in parts.netloc:
        raise UsageError(problem)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(f"{problem}: browsers send no path, so this one would never match")
    return f"{parts.scheme}://{parts.netloc}"


def check_cors_origins(origins: Iterable[str] | None) -> list[str]:
    """The allowed origins, checked and normalised; ``[]`` (CORS off) for ``None`` or an empty list. A lone
    string is refused: iterated, it would allow one-letter origins instead of the one meant."""
    if origins is None:
        return []
    if isinstance(origins, str | bytes):
        raise UsageError(f"cors_origins must be a list of origins, got the string {origins!r}")
    checked = [check_origin(origin) for origin in origins]
    return list(dict.fromkeys(checked))


def add_cors(app: Any, origins: list[str]) -> None:
    """Answer CORS preflights and tag responses for ``origins`` (GET and POST, JSON bodies); nothing when
    ``origins`` is empty, so a default service sends no CORS header at all."""
    if origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=list(CORS_METHODS), allow_headers=list(CORS_HEADERS)
        )
