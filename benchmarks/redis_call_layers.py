"""What each layer of redis-py's asyncio client costs around one EVALSHA (uvloop, one call at a
time, or `--concurrency` at once): CPU and wall time per call, with the layers taken off one at
a time.

    python benchmarks/redis_call_layers.py [--calls 3000] [--rounds 2] [--concurrency 1]

- `Script() under asyncio.timeout`: the ledger's calls before ledger/redis_direct.py (the
  registered script, its client, the blocking pool, the retry wrapper, a deadline);
- `client.evalsha`: the client and the pool, without the Script layer and the deadline;
- `DirectCommands.script`: what the ledger sends now (ledger/redis_direct.py: pipelined on one
  connection, the calls of one turn of the event loop in one write);
- `held connection`: the packed command on one redis-py connection, no pool at all;
- `raw asyncio protocol`: pre-packed bytes on a bare asyncio protocol (the floor: no parser).
The last two take one call at a time: with `--concurrency` above 1 they are left out.

The 13 arguments and 4 keys are a one-budget reserve's. Redis at REDIS_URL (a script that
reads one key: Redis's own time is the same in every row).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop
from redis.asyncio import BlockingConnectionPool, Redis

from ledger.redis_direct import DirectCommands

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
SCRIPT = "return redis.call('GET', KEYS[1])"
KEYS = [f"rightsize-bench:layers:{k}" for k in ("c:x", "z:x", "c:y", "z:y")]
ARGS = [str(i) for i in range(13)]


def _resp(*parts: object) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Raw(asyncio.Protocol):
    """One reply per call, read as whatever arrives up to its CRLF: enough for a timing."""

    def __init__(self) -> None:
        self.waiting: asyncio.Future[bytes] | None = None
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(data)

    async def call(self, packed: bytes) -> bytes:
        assert self.transport is not None
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(packed)
        return await self.waiting


async def _timed(name: str, call: Callable[[], Awaitable[Any]], n: int, at_once: int) -> None:
    async def batch() -> None:
        if at_once == 1:
            await call()
        else:
            await asyncio.gather(*(call() for _ in range(at_once)))

    for _ in range(200 // at_once + 1):
        await batch()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(n // at_once):
        await batch()
    n = n // at_once * at_once
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"| {name} | {cpu / n * 1e6:.1f} | {wall / n * 1e6:.1f} |", flush=True)


async def measure(n: int, rounds: int, at_once: int) -> None:
    pool = BlockingConnectionPool.from_url(
        REDIS_URL, max_connections=256, protocol=2, driver_info=None, socket_timeout=None
    )
    client = Redis(connection_pool=pool)
    script = client.register_script(SCRIPT)
    direct = DirectCommands(pool)
    held = pool.make_connection()
    raw_transport, raw = await asyncio.get_running_loop().create_connection(
        _Raw, pool.connection_kwargs["host"], pool.connection_kwargs["port"]
    )
    packed = _resp("EVALSHA", script.sha, len(KEYS), *KEYS, *ARGS)
    await script(keys=KEYS, args=ARGS)  # loaded

    async def through_script() -> Any:
        async with asyncio.timeout(5):
            return await script(keys=KEYS, args=ARGS)

    async def on_held() -> Any:
        await held.send_packed_command(
            held.pack_command("EVALSHA", script.sha, len(KEYS), *KEYS, *ARGS), check_health=False
        )
        return await held.read_response()

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "Script() under asyncio.timeout": through_script,
        "client.evalsha": lambda: client.evalsha(script.sha, len(KEYS), *KEYS, *ARGS),
        "DirectCommands.script": lambda: direct.script(script, KEYS, ARGS),
        "held connection": on_held,
        "raw asyncio protocol": lambda: raw.call(packed),
    }
    if at_once > 1:
        del calls["held connection"], calls["raw asyncio protocol"]
    print(
        f"one EVALSHA, {n} calls per row and round, {at_once} at once, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print("| layers | CPU µs per call | wall µs per call |\n|---|---|---|")
    try:
        for _ in range(rounds):
            for name, call in calls.items():
                await _timed(name, call, n, at_once)
    finally:
        raw_transport.close()
        await held.disconnect()
        await direct.aclose()
        await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    uvloop.run(measure(args.calls, args.rounds, args.concurrency))


if __name__ == "__main__":
    main()
