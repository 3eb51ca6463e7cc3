"""A burst past a Redis client's connection count waits for a connection, not an outage.

redis-py's default pool raises MaxConnectionsError at 100 connections: under a burst the ledger
took that for Redis being down (503 to budgeted requests) and the cache bypassed Redis.
"""

from __future__ import annotations

import asyncio
import os
from decimal import Decimal

import pytest

from gateway.cache.stores import CacheUnavailable, RedisStore
from ledger.budgets import Amounts, Budget
from ledger.periods import Period
from tests.ledger_support import FrozenClock, at, open_ledger, redis_prefix

__all__ = ["redis_prefix"]

pytestmark = pytest.mark.redis

BURST = 300  # more calls at once than redis-py's default pool has connections (100)
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def test_a_burst_of_holds_past_the_pool_size_is_all_reserved(
    tmp_path: object, redis_prefix: str
) -> None:
    clock = FrozenClock(at("2026-03-10T12:00:00+00:00"))
    async with open_ledger("redis", tmp_path, redis_prefix, clock) as ledger:
        budget = Budget(scope="team", subject="search", period=Period.DAILY, limit_usd=Decimal(1))
        await ledger.budgets.put(budget)
        ledger.forget_budgets()
        one = Amounts(picousd=10**6, tokens=1, requests=1)
        holds = await asyncio.gather(*(ledger.reserve("search", "k", one) for _ in range(BURST)))
        assert all(hold is not None for hold in holds)
        [usage] = await ledger.usage([budget])
        # Every hold is on the Redis counters: none was admitted on the outage allowance.
        assert usage.reserved == Amounts(picousd=BURST * 10**6, tokens=BURST, requests=BURST)


async def test_a_burst_of_cache_lookups_past_the_pool_size_bypasses_none(redis_prefix: str) -> None:
    store = RedisStore(REDIS_URL, redis_prefix, timeout_s=5.0, retry_after_s=1.0)
    try:
        await store.set("team", "k", b"answer", ttl_s=60)
        try:
            found = await asyncio.gather(*(store.get("team", "k") for _ in range(BURST)))
        except CacheUnavailable as exc:  # pragma: no cover - the failure this test guards
            pytest.fail(f"a lookup bypassed Redis under a burst: {exc!r}")
        assert found == [b"answer"] * BURST
    finally:
        await store.aclose()
