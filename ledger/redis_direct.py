"""Commands on the request path sent on redis-py connections held here, past the client's layers.

A command through redis-py's asyncio client takes a connection from the pool (its lock and
condition, a check that the connection has no stray data, connection-count metrics), runs
under the client's retry wrapper, and a script call adds `Script.__call__`'s own layer; on a
2-core machine that was 80 to 110 µs of CPU a call above sending the same packed command on a
held connection (docs/benchmarks.md, "Redis calls past the client's layers"). The ledger's
reserve and settle and the prompt cache's lookup and store are four such calls per request.

`DirectCommands` keeps the parts that matter and drops the rest: connections are redis-py's
own (`pool.make_connection()`: the same URL, connect timeout and hiredis reply parser), a
reply error is redis-py's exception, a cut or failed call leaves its connection disconnected
(redis-py's `send_packed_command`/`read_response` do that) and the next use reconnects. What
is dropped is the pool's bookkeeping: idle connections are a list, and at most
`max_connections` are out at once (past them a call waits for one, under the caller's
deadline, as with the blocking pool). Callers bound each call themselves (asyncio.timeout).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError


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
    """One command, one reply, on a connection of this object's own."""

    def __init__(self, pool: ConnectionPool, max_connections: int, *, retries: int = 0) -> None:
        self._pool = pool  # a factory of connections: this object never takes one from it
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[AbstractConnection] = []
        self._all: set[AbstractConnection] = set()
        # Connection errors retried on a fresh connection: a pooled connection that died with
        # a restarted Redis fails its first write. Never a timeout (Redis may have run it).
        self._retries = retries

    async def call(self, *args: Any) -> Any:
        """Send one command; its reply, or redis-py's exception for it."""
        async with self._slots:
            connection = self._idle.pop() if self._idle else self._new()
            retries = self._retries
            while True:
                try:
                    await connection.send_packed_command(pack(*args), check_health=False)
                    reply = await connection.read_response()
                except ResponseError:
                    self._idle.append(connection)  # Redis answered: the connection is sound
                    raise
                except RedisConnectionError:
                    # redis-py disconnected it; the next send on it connects afresh.
                    if retries == 0:
                        self._idle.append(connection)
                        raise
                    retries -= 1
                    continue
                except BaseException:
                    # A cut (deadline, cancellation) mid-command. redis-py disconnects on a cut
                    # write or read; disconnecting here as well covers a cut inside the connect,
                    # so that no late reply can be read as the next command's.
                    await connection.disconnect(nowait=True)
                    self._idle.append(connection)
                    raise
                self._idle.append(connection)
                return reply

    async def script(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, or EVAL where Redis does not have the script (a flushed or new server),
        which also loads it for the next EVALSHA."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.call("EVAL", script.script, len(keys), *keys, *args)

    def _new(self) -> AbstractConnection:
        connection: AbstractConnection = self._pool.make_connection()
        self._all.add(connection)
        return connection

    async def aclose(self) -> None:
        for connection in self._all:
            await connection.disconnect()
        self._all.clear()
        self._idle.clear()
