"""PlainHTTP (gateway/providers/plain_http.py) against raw HTTP servers on loopback: the answers
it must read, and the connections it must never reuse."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import uvloop
from yarl import URL

from gateway.providers import OpenAIHTTPProvider, plain_http
from gateway.providers.plain_http import PlainHTTP, PlainTarget, UpstreamProtocolError
from tests.fake_upstream import RunningUpstream
from tests.test_openai_http import HELLO, deployment

Answer = Callable[[int], bytes]  # the n-th request the server read -> the bytes sent back


def framed(body: bytes, *headers: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"content-length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Server:
    """A raw HTTP/1.1 server: reads each request whole, answers with `answer`, then does
    what `after` says (close the connection, or keep it)."""

    answer: Answer
    close_after: bool = False
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    closed_by_client: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                self.requests.append(head + await reader.readexactly(length))
                reply = self.answer(len(self.requests) - 1)
                if reply:
                    writer.write(reply)
                    await writer.drain()
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Server], Awaitable[PlainTarget]]]:
    servers: list[asyncio.Server] = []

    async def start(server: Server) -> PlainTarget:
        running = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(running)
        server.port = running.sockets[0].getsockname()[1]
        url = URL(f"http://127.0.0.1:{server.port}/v1/chat/completions")
        return PlainTarget.build(url, {"content-type": "application/json"})

    yield start
    for running in servers:
        running.close()


@pytest.fixture
async def client() -> AsyncIterator[PlainHTTP]:
    plain = PlainHTTP(8)
    yield plain
    await plain.aclose()


async def test_the_request_carries_the_head_built_once_and_the_body(
    serve: Callable[[Server], Awaitable[PlainTarget]], client: PlainHTTP
) -> None:
    server = Server(lambda n: framed(b'{"ok": %d}' % n))
    target = await serve(server)
    assert await client.post(target, b'{"a": 1}', 5) == (200, b'{"ok": 0}')
    assert await client.post(target, b'{"b": 22}', 5) == (200, b'{"ok": 1}')
    assert server.connections == 1  # kept alive
    first = server.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"host: 127.0.0.1:{server.port}\r\n".encode() in first
    assert b"accept-encoding: identity\r\n" in first
    assert first.endswith(b"content-length: 8\r\n\r\n" + b'{"a": 1}')


@pytest.mark.parametrize(
    ("reply", "close_after"),
    [
        # chunked, in pieces
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
            b'4\r\n{"a"\r\n5\r\n: 12}\r\n0\r\n\r\n',
            False,
        ),
        # no length: the body ends where the server closes
        (b'HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n{"a": 12}', True),
        (framed(gzip.compress(b'{"a": 12}'), "content-encoding: gzip"), False),
        (framed(zlib.compress(b'{"a": 12}'), "content-encoding: deflate"), False),
    ],
    ids=["chunked", "until-close", "gzip", "deflate"],
)
async def test_bodies_by_chunks_up_to_the_close_and_compressed_are_read(
    serve: Callable[[Server], Awaitable[PlainTarget]],
    client: PlainHTTP,
    reply: bytes,
    close_after: bool,
) -> None:
    target = await serve(Server(lambda n: reply, close_after=close_after))
    for _ in range(2):  # the second on a kept connection, or a new one after a close
        assert await client.post(target, b"{}", 5) == (200, b'{"a": 12}')


async def test_an_answer_in_an_unknown_encoding_is_refused(
    serve: Callable[[Server], Awaitable[PlainTarget]], client: PlainHTTP
) -> None:
    target = await serve(Server(lambda n: framed(b"xx", "content-encoding: br")))
    with pytest.raises(UpstreamProtocolError, match="br"):
        await client.post(target, b"{}", 5)


@pytest.mark.parametrize(
    "to_idle",
    [
        lambda writer: writer.close(),  # the server's keep-alive ran out
        lambda writer: writer.write(framed(b'{"stray": 1}')),  # an answer nobody asked for
    ],
    ids=["closed-by-the-server", "bytes-sent-unasked"],
)
async def test_an_idle_connection_the_server_closed_or_wrote_on_is_not_reused(
    serve: Callable[[Server], Awaitable[PlainTarget]],
    client: PlainHTTP,
    to_idle: Callable[[asyncio.StreamWriter], None],
) -> None:
    server = Server(lambda n: framed(b"{}"))
    target = await serve(server)
    await client.post(target, b"{}", 5)
    to_idle(server.writers[0])
    await asyncio.sleep(0.05)
    assert await client.post(target, b"{}", 5) == (200, b"{}")
    assert server.connections == 2


async def test_a_connection_idle_past_the_keep_alive_is_not_reused(
    serve: Callable[[Server], Awaitable[PlainTarget]],
    client: PlainHTTP,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(plain_http, "KEEPALIVE_S", 0.05)
    server = Server(lambda n: framed(b"{}"))
    target = await serve(server)
    await client.post(target, b"{}", 5)
    await asyncio.sleep(0.1)  # the server may be closing it now: a POST is not retried
    await client.post(target, b"{}", 5)
    assert server.connections == 2


async def test_a_timed_out_call_closes_its_connection_and_the_next_call_gets_a_new_one(
    serve: Callable[[Server], Awaitable[PlainTarget]], client: PlainHTTP
) -> None:
    # The first request is never answered; the late answer must not be read by the next call.
    server = Server(lambda n: b"" if n == 0 else framed(b'{"n": %d}' % n))
    target = await serve(server)
    with pytest.raises(TimeoutError):
        await client.post(target, b"{}", 0.2)
    assert await client.post(target, b"{}", 5) == (200, b'{"n": 1}')
    await asyncio.sleep(0.05)
    assert server.connections == 2 and server.closed_by_client == 1


async def test_a_server_closing_before_its_answer_is_a_connection_error(
    serve: Callable[[Server], Awaitable[PlainTarget]], client: PlainHTTP
) -> None:
    target = await serve(Server(lambda n: b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{", True))
    with pytest.raises(ConnectionResetError):
        await client.post(target, b"{}", 5)


async def test_an_answer_that_is_not_http_is_a_protocol_error(
    serve: Callable[[Server], Awaitable[PlainTarget]], client: PlainHTTP
) -> None:
    target = await serve(Server(lambda n: b"SSH-2.0-OpenSSH\r\n\r\n"))
    with pytest.raises(UpstreamProtocolError, match="not an HTTP answer"):
        await client.post(target, b"{}", 5)


async def test_the_provider_sends_plain_http_calls_through_it_and_tls_or_proxies_not(
    upstream: RunningUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    provider = OpenAIHTTPProvider({"fake-ok": "sk-x"})
    try:
        plain = provider._target(deployment("fake-ok", upstream.base_url))
        assert plain.plain is not None and plain.plain_embeddings is not None
        assert b"authorization: Bearer sk-x\r\n" in plain.plain.head
        assert "sk-x" not in repr(plain.plain)
        assert (await provider.complete(deployment("fake-ok", upstream.base_url), HELLO))["choices"]
        assert sum(len(idle) for idle in provider._plain._idle.values()) == 1
        assert provider._target(deployment("tls", "https://example.invalid/v1")).plain is None
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
        assert provider._target(deployment("proxied", "http://example.invalid/v1")).plain is None
    finally:
        await provider.aclose()


async def test_an_answer_saying_connection_close_retires_its_connection(
    serve: Callable[[Server], Awaitable[PlainTarget]], client: PlainHTTP
) -> None:
    server = Server(lambda n: framed(b"{}", "connection: close"))  # it says so, closes later
    target = await serve(server)
    await client.post(target, b"{}", 5)
    await client.post(target, b"{}", 5)
    assert server.connections == 2


def test_it_serves_on_uvloop_as_the_gateway_runs_it() -> None:
    """The gateway's loop is uvloop (its transports are not asyncio.Transport instances)."""

    async def scenario() -> tuple[int, int]:
        server = Server(lambda n: framed(b'{"n": %d}' % n))
        running = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        url = URL(f"http://127.0.0.1:{running.sockets[0].getsockname()[1]}/v1/x")
        target = PlainTarget.build(url, {})
        plain = PlainHTTP(2)
        try:
            answers = [await plain.post(target, b"{}", 5) for _ in range(3)]
        finally:
            await plain.aclose()
            running.close()
        assert answers == [(200, b'{"n": %d}' % n) for n in range(3)]
        return server.connections, len(server.requests)

    assert uvloop.run(scenario()) == (1, 3)


def test_a_client_used_from_a_second_event_loop_opens_its_own_connections() -> None:
    """A connection belongs to the loop that made it (a CLI command after another, a test
    after another): a new loop never reuses the idle ones of an old one."""
    plain = PlainHTTP(2)
    server = Server(lambda n: framed(b"{}"))

    async def call() -> tuple[int, bytes]:
        running = await asyncio.start_server(server.handle, "127.0.0.1", server.port)
        server.port = running.sockets[0].getsockname()[1]
        url = URL(f"http://127.0.0.1:{server.port}/v1/x")
        try:
            return await plain.post(PlainTarget.build(url, {}), b"{}", 5)
        finally:
            running.close()

    assert asyncio.run(call()) == (200, b"{}")
    assert asyncio.run(call()) == (200, b"{}")
    assert server.connections == 2
