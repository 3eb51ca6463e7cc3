"""Slow clients cut off: uvicorn's httptools protocol with a header and a body timeout.

uvicorn times out only idle kept-alive connections, so a client that sends its headers or
its body a byte at a time holds a connection (and, once its headers are in, a request task)
for as long as it likes; 2,000 of them were held for 90 s. `rightsize serve` runs uvicorn with
this protocol (`http=`): the headers must be complete within server.header_timeout_s of the
connection opening or the request starting, the body within server.body_timeout_s of the
headers; otherwise the client gets a 408 (when it has begun a request) and the connection is
closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from gateway.http import RequestTimedOut
from gateway.settings import ServerSettings

log = logging.getLogger("rightsize.http")

# The key under which the app's lifespan hands its timeouts to the server's protocol.
STATE_KEY = "rightsize.client_timeouts"


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    header_s: float
    body_s: float

    @classmethod
    def of(cls, server: ServerSettings) -> ClientTimeouts:
        return cls(header_s=server.header_timeout_s, body_s=server.body_timeout_s)


Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[Any]]


def with_client_timeouts(lifespan: Lifespan, server: ServerSettings) -> Lifespan:
    """The app's lifespan, yielding the timeouts as ASGI lifespan state.

    The server makes one protocol per connection from its own config, and a worker process
    builds the app from the configuration file; the lifespan state is the one channel from
    the app's settings to those protocols (uvicorn passes it to each as `app_state`).
    """

    @asynccontextmanager
    async def serving(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with lifespan(app):
            yield {STATE_KEY: ClientTimeouts.of(server)}

    return serving


class SlowClientProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a deadline for the request headers and one for the body."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        timeouts = app_state.get(STATE_KEY)
        self._timeouts = (
            timeouts
            if isinstance(timeouts, ClientTimeouts)
            else ClientTimeouts.of(ServerSettings())
        )
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._request_begun = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never completes a request holds a socket like a slow one does.
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._request_begun = True
        if self._header_timer is None:  # a kept-alive connection starting its next request
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()
        self._body_timer = self.loop.call_later(self._timeouts.body_s, self._body_too_slow)
        cycle = self.cycle
        if cycle is not None and not isinstance(cycle.transport, OneWritePerTurn):
            cycle.transport = OneWritePerTurn(self.transport, self.loop)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._request_begun = False
        super().on_message_complete()

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self._timeouts.header_s, self._headers_too_slow)

    def _cancel_timers(self) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # Still answering the previous request on this connection: its next request's
            # headers may wait for that answer.
            self._arm_header_timer()
            return
        log.info(
            "closed a connection from %s: no complete request headers within %gs "
            "(server.header_timeout_s)",
            _peer(self.client),
            self._timeouts.header_s,
        )
        if self._request_begun:
            self._write_408(
                f"The request headers did not arrive within {self._timeouts.header_s:g}s "
                "(server.header_timeout_s)"
            )
        self.transport.close()

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self.flow.read_paused:
            # The gateway has stopped reading (the app has not consumed the body yet): the
            # client is not the slow one.
            self._body_timer = self.loop.call_later(self._timeouts.body_s, self._body_too_slow)
            return
        log.info(
            "closed a connection from %s: the request body did not arrive within %gs "
            "(server.body_timeout_s)",
            _peer(self.client),
            self._timeouts.body_s,
        )
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self._write_408(
                f"The request body did not arrive within {self._timeouts.body_s:g}s "
                "(server.body_timeout_s)"
            )
            cycle.response_started = cycle.response_complete = True
        self.transport.close()
        if cycle is not None:
            # The request's task is waiting for more body: it now reads a disconnect.
            cycle.disconnected = True
            cycle.message_event.set()

    def _write_408(self, message: str) -> None:
        body = orjson.dumps(RequestTimedOut(message).body())
        head = [STATUS_LINE[408]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)


class OneWritePerTurn:
    """The transport a response is written through: what it writes in one turn of the event
    loop goes out in one write, at the end of that turn. uvicorn writes a response's status
    line and headers, then its body, each with a write of its own, and a socket write is a
    system call (about 90 µs of CPU on a slow virtual machine: docs/benchmarks.md, "One write
    per response"); a stream's chunks written in the same turn are joined the same way. The
    order of the bytes is kept, and closing writes what is held first."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._held:
            self._loop.call_soon(self._flush)
        # A copy of what a caller might reuse: the bytes are sent after it has returned.
        self._held.append(data if type(data) is bytes else bytes(data))

    def _flush(self) -> None:
        held = self._held
        if not held:
            return
        data = held[0] if len(held) == 1 else b"".join(held)
        held.clear()
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown client"
