"""Commands on the request path, pipelined on one connection per event loop, past redis-py's layers.

A command through redis-py's asyncio client takes a connection from the pool (its lock and
condition, a check that the connection has no stray data, connection-count metrics), runs
under the client's retry wrapper, and a script call adds `Script.__call__`'s own layer; on a
2-core machine that was 80 to 110 µs of CPU a call above sending the same packed command on a
held connection (docs/benchmarks.md, "Redis calls past the client's layers"). The ledger's
reserve and settle and the prompt cache's lookup and store are four such calls per request.

`DirectCommands` keeps the parts that matter and drops the rest. A connection is opened by
redis-py (`pool.make_connection()`: the same URL, TLS, AUTH/SELECT, connect timeout), then its
socket is driven here by an asyncio protocol: commands are written in the order they are
called, those called in one turn of the event loop in one write, and Redis's replies, read by
hiredis with redis-py's error classes, go to their commands in that same order (Redis answers
a connection's commands in order). So every command of one event loop is applied in the
order it was called, and the CPU and system calls of a round trip are shared by the
concurrent requests (docs/benchmarks.md, "Redis commands pipelined").

A call cut by its caller's deadline or cancellation leaves its place in the line: its reply,
when it comes, is dropped, and the connection carries on. A connection whose oldest command
has waited `stale_after_s` without a reply is taken for dead (a hung server, a lost link):
closed, and every command still on it fails with redis-py's TimeoutError (never retried:
Redis may have run it); on a connection the server closes or that fails, with its
ConnectionError. The next call opens a new connection.
Callers bound each call themselves (asyncio.timeout).
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from typing import Any

import hiredis
from redis._parsers.base import BaseParser
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError


def pack(*args: Any) -> bytes:
    """The command in RESP, as redis-py's `pack_command` writes it (its encoder's rules: str as
    UTF-8, int and float by repr, bytes as they are, a bool refused) in one bytes object, at
    about half its CPU (docs/benchmarks.md, "Redis calls past the client's layers"). The command
    name is one word (ours are: EVALSHA, EVAL, GET, SET, UNLINK, PING).

    A command of ASCII strings, ints and floats (the ledger's scripts, the cache's keys) is
    written as one str and encoded once, where a character is a byte: half the time of the
    general path (12 against 24 µs for a reserve's 21 arguments on a slow host)."""
    text = [f"*{len(args)}\r\n"]
    for arg in args:
        kind = type(arg)
        if kind is str and arg.isascii():
            word = arg
        elif kind is int or kind is float:
            word = repr(arg)
        else:
            return _pack_bytes(args)
        text.append(f"${len(word)}\r\n{word}\r\n")
    return "".join(text).encode()


def _pack_bytes(args: tuple[Any, ...]) -> bytes:
    """pack() of any command: each argument encoded on its own."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes | bytearray | memoryview):
            data = bytes(arg)
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise DataError(
                f"Invalid input of type: '{type(arg).__name__}'. "
                "Convert to a bytes, string, int or float first."
            )
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class DirectCommands:
    """Commands and their replies, pipelined on a connection of this object's own per event
    loop (redis-py's connections and their futures belong to the loop that made them)."""

    def __init__(
        self, pool: ConnectionPool, *, retries: int = 0, stale_after_s: float = 5.0
    ) -> None:
        self._pool = pool  # a factory of connections: this object never takes one from it
        self._pipes: dict[asyncio.AbstractEventLoop, _Pipe] = {}
        # Connection errors retried on a new connection: a connection that died with a
        # restarted Redis fails the commands written on it. Never a timeout (Redis may have
        # run it).
        self._retries = retries
        self._stale_after_s = stale_after_s

    async def call(self, *args: Any) -> Any:
        """Send one command; its reply, or redis-py's exception for it."""
        packed = pack(*args)
        retries = self._retries
        while True:
            try:
                return await self._pipe().send(packed)
            except RedisConnectionError:
                if retries == 0:
                    raise
                retries -= 1

    async def calls(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Send several commands in one write, never retried; their replies in order, or the
        exception of the first that failed."""
        pipe = self._pipe()
        futures = [pipe.send(pack(*command)) for command in commands]
        try:
            return [await future for future in futures]
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()  # the caller was cut: the late reply is nobody's
                elif not future.cancelled():
                    future.exception()  # retrieved: a failure after the first is no warning

    async def script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL where Redis does not have the script (a flushed or new server),
        which also loads it for the next EVALSHA."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.script, len(keys), *keys, *args)

    def _pipe(self) -> _Pipe:
        loop = asyncio.get_running_loop()
        pipe = self._pipes.get(loop)
        if pipe is None or pipe.closed or pipe.stale(self._stale_after_s):
            if pipe is not None:
                # A timeout, not a connection error: those are retried, and Redis may have run
                # the commands it has not answered.
                stale = f"no reply from Redis in {self._stale_after_s:g} s: connection closed"
                pipe.close(RedisTimeoutError(stale))
            pipe = self._pipes[loop] = _Pipe(loop, self._pool)
        return pipe

    async def aclose(self) -> None:
        """Close this event loop's connection (the others' belong to loops of their own, each
        closed with its loop)."""
        for loop, pipe in list(self._pipes.items()):
            if loop is asyncio.get_running_loop() or loop.is_closed():
                pipe.close(RedisConnectionError("connection closed by the gateway"))
                del self._pipes[loop]


class _Pipe(asyncio.Protocol):
    """One connection: commands out in the order sent, replies to them in the same order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: ConnectionPool) -> None:
        self._loop = loop
        self._reader = hiredis.Reader(protocolError=InvalidResponse, replyError=_reply_error)
        self._waiting: deque[tuple[asyncio.Future[Any], float]] = deque()
        # Written at the end of the loop's turn (a flush is due while it holds anything), or
        # once connected.
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._failure: BaseException | None = None
        self.closed = False
        self._opening = loop.create_task(self._open(pool.make_connection()))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """The command's reply, to await; its bytes go out with this turn's others."""
        future = self._loop.create_future()
        self._waiting.append((future, self._loop.time()))
        self._out.append(packed)
        if self._transport is not None and len(self._out) == 1:
            self._loop.call_soon(self._flush)
        return future

    def stale(self, after_s: float) -> bool:
        return bool(self._waiting) and self._loop.time() - self._waiting[0][1] > after_s

    async def _open(self, connection: AbstractConnection) -> None:
        try:
            await connection.connect()  # redis-py's: TLS, AUTH and SELECT as the URL says
            writer = connection._writer  # the socket is driven from here on
            assert writer is not None
            transport = writer.transport
            # Detached, or redis-py's finaliser would close the socket under this protocol; the
            # stream writer is kept as long as this connection is, as its finaliser would too.
            connection._writer = connection._reader = None
            self._writer = writer
        except Exception as exc:
            self.close(exc)
            return
        if self.closed:
            transport.close()
            return
        encoding = connection.encoder.encoding if connection.encoder.decode_responses else None
        if encoding is not None:
            self._reader = hiredis.Reader(
                protocolError=InvalidResponse, replyError=_reply_error, encoding=encoding
            )
        transport.set_protocol(self)
        self._transport = transport  # type: ignore[assignment]
        self._flush()

    def _flush(self) -> None:
        if self._out and self._transport is not None:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self._transport.write(data)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if not self._waiting:
                    raise InvalidResponse("Redis sent a reply no command asked for")
                future, _ = self._waiting.popleft()
                if future.done():  # its caller was cut: the reply is nobody's
                    continue
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except InvalidResponse as exc:
            self.close(RedisConnectionError(f"Redis connection broken: {exc}"))

    def eof_received(self) -> bool:
        return False  # the transport closes itself: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(RedisConnectionError(f"Connection closed by server ({exc!r})."))

    def close(self, failure: BaseException) -> None:
        """Closed for good; every command still waiting fails with `failure`."""
        self.closed = True
        if self._failure is None:
            self._failure = failure
        if self._transport is not None:
            self._transport.close()
        elif asyncio.current_task(self._loop) is not self._opening:
            self._opening.cancel()  # still connecting: its socket is closed as it is cut
        self._out.clear()
        while self._waiting:
            future, _ = self._waiting.popleft()
            if not future.done():
                # One exception each: a raised exception collects its raiser's traceback.
                future.set_exception(copy.copy(self._failure))


def _reply_error(message: str) -> ResponseError:
    """An error reply as redis-py raises it (NOSCRIPT as NoScriptError, and so on)."""
    error: ResponseError = BaseParser.parse_error(message)
    return error
