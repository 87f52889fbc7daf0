"""The uvicorn server the service runs under, with the connection-level limits uvicorn leaves open.

uvicorn only arms its keep-alive timer *after* a response, so a connection that sends nothing, or half a
request line and some headers, is held for ever (200 such connections were all still open after 30 s).
Its httptools parser has no header-size limit either. So the service runs on h11, whose
``h11_max_incomplete_event_size`` bounds the request line plus headers held while incomplete (past it:
400, connection closed; a head that arrives whole in one socket read, at most 256 KiB, is still parsed),
through :class:`HeaderTimeoutProtocol`, which closes a connection whose request headers are not complete
``header_timeout_s`` after the connection opened or after the request's first byte arrived. Body size and
body read time are :class:`stitch.apps.service.guard.BodyLimit`'s job; idle keep-alive connections close after
``timeout_keep_alive``.

Not covered: a client that reads the *response* very slowly (uvicorn has no write timeout), and the number
of open connections (uvicorn's ``limit_concurrency`` answers 503 past a count; not set here).
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from stitch.apps.service.config import DEFAULT_HEADER_TIMEOUT_S, Limits


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request's headers.

    The deadline starts when the connection opens and again when the first byte of a later request on a
    kept-alive connection arrives; it is cancelled once h11 has parsed the request head."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._cancel_header_timer()
        elif self.conn.their_state is h11.IDLE:  # the request head is still incomplete
            self._arm_header_timer()
        else:
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            try:
                self.conn.send(h11.ConnectionClosed())
            except h11.LocalProtocolError:
                pass
            self.transport.close()


def protocol_with(header_timeout_s: float) -> type[HeaderTimeoutProtocol]:
    """A :class:`HeaderTimeoutProtocol` subclass with this deadline (uvicorn builds protocols from a class)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout_s": float(header_timeout_s)})


def server_config(app: Any, host: str, port: int, limits: Limits = Limits(), log_level: str = "warning") -> Any:
    """The ``uvicorn.Config`` for the service on ``host:port``: h11 with the header-size cap, the header deadline
    and the keep-alive timeout of ``limits`` (checked when they were made, so a bad one failed at start)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol_with(limits.header_timeout_s),
        timeout_keep_alive=limits.keep_alive_s,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        log_level=log_level,
    )
