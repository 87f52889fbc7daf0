"""What ``stitch serve`` is told, as one frozen object checked once: :class:`ServeConfig` (what to serve, where,
for which origins) and its :class:`Limits` (every bound the service keeps, per request and per connection).

The CLI builds it from its options and hands it down: :func:`~stitch.apps.service.app.serve`,
:func:`~stitch.apps.service.app.build_app`, :func:`~stitch.apps.service.app.create_app` and
:func:`~stitch.apps.service.server.server_config` read it and check nothing again. Every check runs at
construction, so a bad setting fails in a moment with a message naming it, before any data or model loads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stitch.apps.service.cors import check_cors_origins
from stitch.errors import UsageError
from stitch.registries import TEXT_ENCODERS

DEFAULT_MAX_BODY_BYTES = 64 * 1024
DEFAULT_BODY_TIMEOUT_S = 10.0
DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5.0
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
# Long enough for the callers of a batch of 20 to read their answers and send again over loopback (~7 ms
# of event-loop time on the 2-core benchmark machine), short beside a MiniLM batch (~60 ms).
DEFAULT_REGATHER_MS = 10.0


def is_number(value: Any, kind: type | tuple[type, ...] = (int, float)) -> bool:
    """Whether ``value`` is a real number of ``kind`` (``True`` is an int to Python, not a setting here)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def check_port(port: Any) -> int:
    """``port`` if it can be bound: an int in 1-65535 (uvicorn would only fail later, with an OverflowError)."""
    if not is_number(port, int) or not 1 <= port <= 65535:
        raise UsageError(f"port must be 1-65535, got {port!r}")
    return port


def check_wait_ms(name: str, value: Any) -> float:
    """``value`` if it is a finite number of milliseconds >= 0."""
    if not is_number(value) or not 0 <= value < math.inf:
        raise UsageError(f"{name} must be a number of milliseconds >= 0, got {value!r}")
    return float(value)


def check_images_dir(images_dir: str | Path) -> Path:
    """The images folder, resolved; an error naming it when it is missing or not a folder (so a typo fails in a
    second rather than after the encoder is up)."""
    path = Path(images_dir)
    if not path.exists():
        raise UsageError(f"images folder {str(path)!r} does not exist")
    if not path.is_dir():
        raise UsageError(f"images folder {str(path)!r} is not a directory")
    return path.resolve()


@dataclass(frozen=True)
class Limits:
    """Every bound the service keeps. Per request: query length, ``k``, body size and body read time
    (``max_body_bytes=None``: 64 KiB, or more when the run's raw-embedding queries need it: a JSON float takes
    up to ~24 bytes, so a 4096-d embedding needs ~100 KB). Per connection: the request head's size (a head still
    incomplete past ``max_header_bytes`` gets 400) and read time, and how long an idle kept-alive connection
    stays open. A value uvicorn would take but misapply (a zero timeout closes every connection at once; h11
    cannot parse a request head in under 1 KiB) is refused."""

    max_query_chars: int = 500
    max_k: int = 100
    max_body_bytes: int | None = field(
        default=None, metadata={"help": "413 above this request size (default 64 KiB, more for wide embeddings)"}
    )
    body_timeout_s: float = field(
        default=DEFAULT_BODY_TIMEOUT_S,
        metadata={"help": "seconds a request body may take (408 after)", "flag": "--body-timeout"},
    )
    header_timeout_s: float = field(
        default=DEFAULT_HEADER_TIMEOUT_S,
        metadata={"help": "seconds a request head may take (closed after)", "flag": "--header-timeout"},
    )
    keep_alive_s: float = field(
        default=DEFAULT_KEEP_ALIVE_S,
        metadata={"help": "seconds an idle kept-alive connection stays open", "flag": "--keep-alive"},
    )
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    def __post_init__(self) -> None:
        for name in ("max_query_chars", "max_k"):
            if not is_number(getattr(self, name), int) or getattr(self, name) < 1:
                raise UsageError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if self.max_body_bytes is not None and (not is_number(self.max_body_bytes, int) or self.max_body_bytes < 1):
            raise UsageError(f"max_body_bytes must be a positive int, got {self.max_body_bytes!r}")
        for name in ("body_timeout_s", "header_timeout_s", "keep_alive_s"):
            if not is_number(getattr(self, name)) or not getattr(self, name) > 0:
                raise UsageError(f"{name} must be a positive number of seconds, got {getattr(self, name)!r}")
        if not is_number(self.max_header_bytes, int) or self.max_header_bytes < 1024:
            raise UsageError(f"max_header_bytes must be an int of at least 1024, got {self.max_header_bytes!r}")

    def body_cap(self, text_dim: int) -> int:
        """The body cap in bytes for a searcher taking ``text_dim``-d embeddings."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return max(DEFAULT_MAX_BODY_BYTES, 32 * text_dim + 1024)


@dataclass(frozen=True)
class ServeConfig:
    """A service over ``run``'s gallery: the images of ``data_path`` (or of its ``split``), searched exactly
    with the run's rescoring or through a prebuilt ``index`` folder, queries encoded by ``text_encoder`` (default:
    the one the run or the data records) at ``text_precision``; pictures served from ``images_dir``.

    ``cors_origins``: the sites whose pages may call the service from a browser (``["*"]``: any; none by
    default), kept normalised as a tuple. ``regather_ms``: how long a batch may wait for the callers just
    answered (0: never; see :mod:`stitch.apps.service.batcher`). ``images_dir`` is kept resolved."""

    run: str | Path = field(metadata={"help": "run folder"})
    data_path: str | Path = field(metadata={"help": "data file whose images form the gallery", "flag": "--data"})
    images_dir: str | Path = field(
        metadata={
            "help": "folder of the gallery's pictures (served read-only; required)",
            "flag": "--image-dir",
            "renamed_from": ("--images",),
        }
    )
    split: str | None = field(default=None, metadata={"help": "serve only this split's images (e.g. dev)"})
    index: str | Path | None = field(
        default=None,
        metadata={
            "help": "a prebuilt index folder (stitch index build); default: exact, built at start",
            "flag": "--index-dir",
            "renamed_from": ("--index",),
        },
    )
    text_encoder: str | None = field(
        default=None,
        metadata={"help": f"the query encoder, when not the one the data records: {TEXT_ENCODERS.help()}"},
    )
    text_precision: str = field(
        default="fp32",
        metadata={
            "help": "query encoding precision on CPU: fp32 reproduces the data's embeddings; bf16 is ~1.3x faster, "
            "not exact",
            "choices": ("fp32", "bf16"),
        },
    )
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8000, metadata={"help": "port to listen on"})
    cors_origins: Sequence[str] | None = field(
        default=(),
        metadata={
            "help": "let pages from ORIGIN (scheme://host[:port], '*' for any) call the service; repeatable; "
            "default none",
            "flag": "--cors-origin",
            "repeat": True,
            "metavar": "ORIGIN",
        },
    )
    regather_ms: float = field(
        default=DEFAULT_REGATHER_MS,
        metadata={
            "help": "under steady load, how long a batch may wait for the callers just answered to send again, so "
            "they share one batch (0: never wait; a lone caller never waits)"
        },
    )
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        check_port(self.port)
        object.__setattr__(self, "images_dir", check_images_dir(self.images_dir))
        object.__setattr__(self, "cors_origins", tuple(check_cors_origins(self.cors_origins)))
        check_wait_ms("regather_ms", self.regather_ms)
        if not isinstance(self.limits, Limits):
            raise UsageError(f"limits must be a Limits, got {self.limits!r}")

    @property
    def title(self) -> str:
        """The name the service shows: the run folder's."""
        return Path(self.run).name
