"""What one prompt-cache call to Redis costs in the gateway's store, against redis-py's defaults.

Drives `RedisStore.get` (an exact hit: one GET of a ~700-byte value) on the Redis at REDIS_URL
in one process, with uvloop as `rightsize serve` runs it, under four client set-ups that differ
in one thing at a time, in interleaved blocks so that a change of host load hits them alike:

- `defaults`: redis-py's defaults as the store used them before (RESP3 handshake, CLIENT
  SETINFO, a 50 ms socket timeout), pure-Python reply parser;
- `+ hiredis`: the same with the compiled reply parser;
- `+ no socket timeout`: and no asyncio.wait_for around each send;
- `store`: and RESP2 without CLIENT SETINFO: the store's own client (what the gateway runs).

"reconnect" times the first call on a dropped connection (what follows every call past the
deadline: the cancelled read drops it). Microseconds.

    python benchmarks/cache_redis_calls.py [--calls 4000] [--blocks 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import uvloop
from redis._parsers.hiredis import _AsyncHiredisParser
from redis._parsers.resp3 import _AsyncRESP3Parser
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.cache.stores import RedisStore  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DEADLINE_S = 0.005
OLD = {"socket_connect_timeout": 0.05, "retry": Retry(NoBackoff(), 0), "health_check_interval": 0}
SETUPS: dict[str, dict[str, Any] | None] = {
    "defaults": {**OLD, "socket_timeout": 0.05, "parser_class": _AsyncRESP3Parser},
    "+ hiredis": {**OLD, "socket_timeout": 0.05, "parser_class": _AsyncHiredisParser},
    "+ no socket timeout": {**OLD, "socket_timeout": None, "parser_class": _AsyncHiredisParser},
    "store": None,  # RedisStore's own client
}


def store_for(setup: dict[str, Any] | None, prefix: str) -> RedisStore:
    store = RedisStore(REDIS_URL, prefix, timeout_s=DEADLINE_S, retry_after_s=0.0)
    if setup is not None:
        store._redis = Redis.from_url(REDIS_URL, **setup)  # the same store over another client
    return store


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    try:
        await call()
    except Exception:
        return float("inf")  # past the deadline (or an error): counted as over it
    return (time.perf_counter() - started) * 1e6


async def main(calls: int, blocks: int) -> None:
    prefix = f"rightsize-bench:{uuid.uuid4().hex[:8]}:"
    stores = {name: store_for(setup, prefix) for name, setup in SETUPS.items()}
    gets: dict[str, list[float]] = {name: [] for name in stores}
    reconnects: dict[str, list[float]] = {name: [] for name in stores}
    # The value is written outside the stores: their 5 ms deadline is for the timed calls only.
    redis.Redis.from_url(REDIS_URL).set(f"{prefix}team:key", b"x" * 700, px=600_000)
    for store in stores.values():
        await store.start()
        for _ in range(200):
            await timed(lambda s=store: s.get("team", "key"))
    for _ in range(blocks):
        for name, store in stores.items():
            for _ in range(calls // blocks):
                gets[name].append(await timed(lambda s=store: s.get("team", "key")))
            for _ in range(10):
                await store._redis.connection_pool.disconnect()
                reconnects[name].append(await timed(lambda s=store: s.get("team", "key")))
    print(f"one GET through RedisStore, deadline {DEADLINE_S * 1000:g} ms, load {os.getloadavg()}")
    print(
        "| client | get p50 | get p90 | get p99 | over deadline | reconnect p50 | reconnect p90 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in stores:
        over = sum(t == float("inf") for t in gets[name])
        print(
            f"| {name} | {percentile(gets[name], 0.5):.0f} | {percentile(gets[name], 0.9):.0f} "
            f"| {percentile(gets[name], 0.99):.0f} | {over}/{len(gets[name])} "
            f"| {percentile(reconnects[name], 0.5):.0f} | {percentile(reconnects[name], 0.9):.0f} |"
        )
    for store in stores.values():
        await store.aclose()
    redis.Redis.from_url(REDIS_URL).delete(f"{prefix}team:key")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=4000, help="GETs per client set-up")
    parser.add_argument("--blocks", type=int, default=8)
    args = parser.parse_args()
    uvloop.run(main(args.calls, args.blocks))
