"""Plain (not streamed) POSTs to `http://` upstreams on keep-alive connections of our own.

aiohttp's request path is Python from end to end (session, connector, request and response
objects, timers): this client takes 10 to 18% off a gateway request's CPU (docs/benchmarks.md,
"A fifth run"). A plain call to an upstream on plain HTTP needs little of it: the request line
and headers are built once per URL, the body written in one call, the answer parsed by
httptools (which uvicorn already uses). Streams, TLS and proxies stay on aiohttp.

What it keeps of a client's duties: at most `max_connections` calls out at once; an idle
connection is reused for at most KEEPALIVE_S (the server may be closing it: a POST is not
retried), never after the server closed it or sent anything unasked; a connection whose call
failed, timed out or was cancelled is closed (no late answer is read as the next call's);
bodies by length, chunked or up to the close; gzip and deflate answers decoded (none is asked
for: `accept-encoding: identity`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from dataclasses import dataclass, field
from typing import cast

import httptools
from yarl import URL

from gateway.providers.pooled import KEEPALIVE_S


class UpstreamProtocolError(Exception):
    """The upstream's answer was not HTTP this client can read."""


@dataclass(frozen=True, slots=True)
class PlainTarget:
    """One URL's address and its request head up to the content length's value."""

    host: str
    port: int
    head: bytes = field(repr=False)  # carries the upstream key: never in a log line

    @classmethod
    def build(cls, url: URL, headers: dict[str, str]) -> PlainTarget:
        host = url.raw_host or ""
        port = url.port or 80
        authority = f"[{host}]" if ":" in host else host
        if url.explicit_port is not None:
            authority += f":{url.explicit_port}"
        lines = [f"POST {url.raw_path_qs} HTTP/1.1", f"host: {authority}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines += ["accept-encoding: identity", "content-length: "]
        return cls(host, port, "\r\n".join(lines).encode("latin-1"))


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._answer: asyncio.Future[None] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._body: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._headers_done = False
        self._keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transports are not registered as asyncio.Transport: no isinstance.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        answer = self._answer
        if answer is None or answer.done():
            return
        if self._headers_done and self._ends_at_close():
            answer.set_result(None)  # not reusable: it is closed
        else:
            answer.set_exception(
                ConnectionResetError("the upstream closed the connection before its answer")
            )

    def data_received(self, data: bytes) -> None:
        parser, answer = self._parser, self._answer
        if parser is None or answer is None or answer.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted again
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserError as exc:
            answer.set_exception(UpstreamProtocolError(f"not an HTTP answer: {exc}"))
            self.close()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.lower()] = value

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        assert self._parser is not None and self._answer is not None
        self._keep_alive = self._parser.should_keep_alive()
        if not self._answer.done():
            self._answer.set_result(None)

    # The client's side

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request; its status and decoded body."""
        assert self.transport is not None
        self._parser = httptools.HttpResponseParser(self)
        self._body, self._headers, self._headers_done = [], {}, False
        self._answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        try:
            await self._answer
        finally:
            self._answer = None
        status = self._parser.get_status_code()
        self._parser = None
        return status, self._decoded(b"".join(self._body))

    @property
    def reusable(self) -> bool:
        return self._keep_alive and not self.closed

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nothing to do there
                self.transport.close()

    def _ends_at_close(self) -> bool:
        return (
            b"content-length" not in self._headers
            and b"chunked" not in self._headers.get(b"transfer-encoding", b"").lower()
        )

    def _decoded(self, body: bytes) -> bytes:
        encoding = self._headers.get(b"content-encoding", b"identity").strip().lower()
        if encoding in (b"", b"identity"):
            return body
        try:
            if encoding in (b"gzip", b"x-gzip"):
                return zlib.decompress(body, wbits=16 + zlib.MAX_WBITS)
            if encoding == b"deflate":
                try:
                    return zlib.decompress(body)
                except zlib.error:
                    return zlib.decompress(body, wbits=-zlib.MAX_WBITS)  # raw deflate
        except zlib.error as exc:
            raise UpstreamProtocolError(f"a {encoding.decode()} body that does not decode") from exc
        raise UpstreamProtocolError(f"an answer in content-encoding {encoding.decode()!r}")


class PlainHTTP:
    """Keep-alive connections per host and port, at most `max_connections` calls at once."""

    def __init__(self, max_connections: int) -> None:
        self._max_connections = max_connections
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def post(self, target: PlainTarget, body: bytes, timeout_s: float) -> tuple[int, bytes]:
        """POST `body`; the answer's status and body. TimeoutError past `timeout_s` in all
        (waiting for a slot, connecting, sending, reading); OSError where the connection
        failed; UpstreamProtocolError where the answer was not readable HTTP."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Connections and the semaphore belong to the loop they were made in.
            self._drop_idle()
            self._slots = asyncio.Semaphore(self._max_connections)
            self._loop = loop
        request = target.head + str(len(body)).encode() + b"\r\n\r\n" + body
        async with asyncio.timeout(timeout_s), self._slots:
            connection = self._idle_connection(target) or await self._connect(target)
            try:
                status, content = await connection.exchange(request)
            except BaseException:
                connection.close()
                raise
            if connection.reusable:
                connection.idle_since = time.monotonic()
                self._idle.setdefault((target.host, target.port), []).append(connection)
            else:
                connection.close()
            return status, content

    def _idle_connection(self, target: PlainTarget) -> _Connection | None:
        idle = self._idle.get((target.host, target.port))
        oldest_kept = time.monotonic() - KEEPALIVE_S
        while idle:
            connection = idle.pop()
            if not connection.closed and connection.idle_since >= oldest_kept:
                return connection
            connection.close()
        return None

    async def _connect(self, target: PlainTarget) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, target.host, target.port)
        return connection

    async def aclose(self) -> None:
        self._drop_idle()

    def _drop_idle(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
