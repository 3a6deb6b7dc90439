"""uvicorn's HTTP/1.1 protocols with a deadline on each request's headers.

uvicorn closes idle keep-alive connections, and the service's guard times out a request body
(408), but nothing bounds a client that trickles its request line and headers: such a connection
would stay open for ever. Here a request's headers must be complete within `read_timeout` seconds
of the connection opening, or of the request's first byte on a kept-alive connection; else the
connection is closed. (An idle kept-alive connection is left to uvicorn's own keep-alive time-out:
closing it sooner would race a client that is about to reuse it.)

Two parsers, the same deadline: httptools (C, uvicorn's own default where installed, and ours: its
requests cost the event loop less CPU, which on a small machine the model needs) and h11 (pure
Python, always there). These subclasses are the one place that relies on uvicorn's protocol
internals (h11: `data_received`, `handle_events`, `conn`; httptools: the parser callbacks
`on_message_begin`, `on_headers_complete`); tests/test_serve_limits.py fails if they change.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HttpParser = Literal["auto", "httptools", "h11"]


class HeaderDeadline:
    """The timer: armed when a request may begin, disarmed once its headers are in."""

    read_timeout: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # the protocol's own, next in the subclass's MRO
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.read_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.close()


class H11HeaderDeadline(HeaderDeadline, H11Protocol):
    def data_received(self, data: bytes) -> None:
        if self._header_deadline is None and self.conn.their_state is h11.IDLE:  # a next request begins
            self._arm()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._disarm()


def _httptools_protocol() -> type:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HttpToolsHeaderDeadline(HeaderDeadline, HttpToolsProtocol):
        def on_message_begin(self) -> None:  # a request's first byte: on a kept-alive connection, a new clock
            if self._header_deadline is None:
                self._arm()
            super().on_message_begin()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

    return HttpToolsHeaderDeadline


def http_parser(requested: HttpParser) -> Literal["httptools", "h11"]:
    """auto: httptools where installed (a dependency; measured in docs/deploy.md), else h11."""
    if requested == "auto":
        return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    return requested


def header_deadline_protocol(read_timeout: float, parser: HttpParser = "auto") -> type[HeaderDeadline]:
    base = _httptools_protocol() if http_parser(parser) == "httptools" else H11HeaderDeadline
    return type(base.__name__, (base,), {"read_timeout": read_timeout})
