"""uvicorn's HTTP/1.1 protocol with a deadline on each request's headers.

uvicorn closes idle keep-alive connections, and the service's guard times out a request body
(408), but nothing bounds a client that trickles its request line and headers: such a connection
would stay open for ever. Here a request's headers must be complete within `read_timeout` seconds
of the connection opening, or of the request's first byte on a kept-alive connection; else the
connection is closed. (An idle kept-alive connection is left to uvicorn's own keep-alive time-out:
closing it sooner would race a client that is about to reuse it.) This subclass of
`uvicorn.protocols.http.h11_impl.H11Protocol` is the one place that relies on uvicorn's protocol
internals (`data_received`, `handle_events`, `conn`); tests/test_serve_limits.py fails if they change.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderDeadlineProtocol(H11Protocol):
    read_timeout: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self.conn.their_state is h11.IDLE:  # a next request begins
            self._arm()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm()

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.read_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_deadline_protocol(read_timeout: float) -> type[HeaderDeadlineProtocol]:
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"read_timeout": read_timeout})
