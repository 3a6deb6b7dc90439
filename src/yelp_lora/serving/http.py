"""uvicorn's HTTP/1.1 protocol with a deadline on each request's headers.

uvicorn closes idle keep-alive connections, and the service's guard times out a request body
(408), but nothing bounds a client that trickles its request line and headers: such a connection
would stay open for ever. Here a connection whose request has not sent its headers within
`read_timeout` seconds of opening (or of the previous response) is closed. This subclass of
`uvicorn.protocols.http.h11_impl.H11Protocol` is the one place that relies on uvicorn's protocol
internals (`handle_events`, `on_response_complete`, `conn`); tests/test_serve_limits.py fails if they change.
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

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

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
