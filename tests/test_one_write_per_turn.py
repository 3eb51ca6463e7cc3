"""gateway/timeouts.py's OneWritePerTurn: a response's writes in one turn of the event loop go
out as one socket write (uvicorn writes the head and the body apart), in order, nothing held
past the turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.timeouts import OneWritePerTurn
from tests.fake_upstream import free_port


class _Recorded:
    """A transport that records what it is asked to write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.extra = {"peername": ("127.0.0.1", 1)}

    def write(self, data: bytes) -> None:
        assert not self.closed
        self.writes.append(data)

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> Any:
        return self.extra.get(name)


async def test_writes_of_one_turn_go_out_together_at_its_end_in_order() -> None:
    real = _Recorded()
    corked = OneWritePerTurn(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    buffer = bytearray(b"body")
    corked.write(buffer)
    buffer[:] = b"XXXX"  # the caller reuses its buffer: what was written is what goes out
    corked.write(b"")
    assert real.writes == []
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    corked.write(b"next turn")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next turn"]
    assert corked.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is the transport's


async def test_closing_writes_what_is_held_first_and_nothing_goes_to_a_closed_transport() -> None:
    real = _Recorded()
    corked = OneWritePerTurn(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    corked.write(b"last words")
    corked.close()
    assert real.writes == [b"last words"] and real.closed and corked.is_closing()
    other = _Recorded()
    late = OneWritePerTurn(other, asyncio.get_running_loop())  # type: ignore[arg-type]
    late.write(b"too late")
    other.closed = True  # the client went away within the turn
    await asyncio.sleep(0)
    assert other.writes == []


async def _plain(request: Request) -> Response:
    return JSONResponse({"ok": True, "pad": "x" * 3000})


async def _stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"data: one\n\n"
        await asyncio.sleep(0.3)
        yield b"data: two\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


@contextlib.asynccontextmanager
async def _served() -> AsyncIterator[int]:
    app = Starlette(routes=[Route("/plain", _plain), Route("/stream", _stream)])
    port = free_port()
    config = uvicorn.Config(
        app, port=port, http="gateway.timeouts:SlowClientProtocol", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 (uvicorn offers no event to wait on)
        await asyncio.sleep(0.01)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


async def _response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.startswith(b"content-length")
    )
    return head, await reader.readexactly(length)


async def test_each_response_through_uvicorn_is_one_socket_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushed: list[bytes] = []
    flush = OneWritePerTurn._flush

    def recorded(self: OneWritePerTurn) -> None:
        flushed.append(b"".join(self._held))
        flush(self)

    monkeypatch.setattr(OneWritePerTurn, "_flush", recorded)
    async with _served() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(3):  # one kept-alive connection, request after request
            writer.write(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n")
            head, body = await _response(reader)
            assert head.startswith(b"HTTP/1.1 200 OK\r\n")
            assert body == b'{"ok":true,"pad":"' + b"x" * 3000 + b'"}'
        writer.close()
    assert len(flushed) == 3  # head and body together, once a response
    assert all(f.startswith(b"HTTP/1.1 200 OK\r\n") and f.endswith(b'"}') for f in flushed)


async def test_a_streams_head_and_first_chunk_are_not_held_for_the_next_chunk() -> None:
    async with _served() as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /stream HTTP/1.1\r\nhost: x\r\n\r\n")
        async with asyncio.timeout(0.25):  # the second chunk comes 0.3 s later
            head = await reader.readuntil(b"\r\n\r\n")
            first = await reader.readuntil(b"data: one\n\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"chunked" in head
        assert first == b"b\r\ndata: one\n\n"
        rest = await reader.readuntil(b"0\r\n\r\n")
        assert b"data: two" in rest
        writer.close()
