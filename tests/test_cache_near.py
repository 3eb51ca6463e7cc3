"""Near copies of Redis entries (cache.redis_near_ttl_s): a hot entry is served from the
process's memory, never past its TTL in Redis nor past what a delete made here says, and a
delete made elsewhere reaches the process within the near TTL. On the real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis

from gateway.cache.stores import RedisStore
from tests.cache_support import ask, cached_gateway, delete_prefix, prompt_cache, shared_redis
from tests.fake_upstream import ANSWER, RunningUpstream


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def prefix() -> Iterator[str]:
    url = shared_redis()
    name = f"rightsize-test:{uuid.uuid4().hex[:12]}:"
    yield name
    delete_prefix(url, name)


@pytest.fixture
def server() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(shared_redis(), socket_timeout=2)
    yield client
    client.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(prefix: str, clock: Clock) -> AsyncIterator[RedisStore]:
    near = RedisStore(
        shared_redis(), prefix, timeout_s=0.5, retry_after_s=0.2, near_ttl_s=1.0, clock=clock
    )
    yield near
    await near.aclose()


async def test_an_entry_read_once_is_served_from_memory_until_the_near_ttl(
    store: RedisStore, server: redis.Redis, prefix: str, clock: Clock
) -> None:
    server.set(f"{prefix}search:k", b"answer", px=60_000)  # written by another replica
    assert await store.get("search", "k") == b"answer"
    server.delete(f"{prefix}search:k")  # deleted by another replica: not seen here yet
    clock.now += 0.9
    assert await store.get("search", "k") == b"answer"
    clock.now += 0.2  # past the near TTL: Redis is read again
    assert await store.get("search", "k") is None


async def test_an_entry_written_here_is_served_from_memory(
    store: RedisStore, server: redis.Redis, prefix: str
) -> None:
    await store.set("search", "k", b"answer", ttl_s=60)
    assert server.get(f"{prefix}search:k") == b"answer"  # and in Redis for the others
    server.delete(f"{prefix}search:k")
    assert await store.get("search", "k") == b"answer"


async def test_a_near_copy_never_outlives_the_entry_in_redis(
    store: RedisStore, server: redis.Redis, prefix: str, clock: Clock
) -> None:
    server.set(f"{prefix}search:k", b"answer", px=300)  # 0.3 s left, the near TTL is 1 s
    assert await store.get("search", "k") == b"answer"
    clock.now += 0.31
    await asyncio.sleep(0.31)  # gone from Redis too
    assert await store.get("search", "k") is None


async def test_a_delete_or_invalidation_made_here_is_seen_here_at_once(
    store: RedisStore, server: redis.Redis, prefix: str
) -> None:
    await store.set("search", "a", b"one", ttl_s=60)
    await store.set("search", "b", b"two", ttl_s=60)
    await store.set("ads", "c", b"three", ttl_s=60)
    await store.delete("search", "a")
    assert await store.get("search", "a") is None
    assert await store.invalidate_team("search") == 1
    assert await store.get("search", "b") is None
    assert await store.get("ads", "c") == b"three"
    assert server.exists(f"{prefix}search:a", f"{prefix}search:b") == 0


async def test_a_read_in_flight_across_a_delete_keeps_no_copy(
    store: RedisStore, server: redis.Redis, prefix: str
) -> None:
    server.set(f"{prefix}search:k", b"answer", px=60_000)
    # The read goes out first (Redis answers it before the delete), its reply after the delete.
    read = asyncio.create_task(store.get("search", "k"))
    await asyncio.sleep(0)
    await store.delete("search", "k")
    assert await read == b"answer"  # read before the delete: fine to return
    assert await store.get("search", "k") is None  # but not kept as if still there


async def test_a_write_in_flight_across_a_delete_keeps_no_copy(
    store: RedisStore, server: redis.Redis, prefix: str
) -> None:
    write = asyncio.create_task(store.set("search", "k", b"answer", ttl_s=60))
    await asyncio.sleep(0)
    await store.delete("search", "k")  # its UNLINK goes after the SET, on the same connection
    await write
    assert server.exists(f"{prefix}search:k") == 0
    assert await store.get("search", "k") is None


async def test_without_a_near_ttl_every_lookup_reads_redis(
    prefix: str, server: redis.Redis
) -> None:
    store = RedisStore(shared_redis(), prefix, timeout_s=0.5, retry_after_s=0.2)
    try:
        await store.set("search", "k", b"answer", ttl_s=60)
        server.delete(f"{prefix}search:k")
        assert await store.get("search", "k") is None
    finally:
        await store.aclose()


async def test_a_replica_sees_another_ones_invalidation_within_the_near_ttl(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    shared_redis()
    prefix = f"rightsize-test:{uuid.uuid4().hex[:12]}:"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        cached_gateway(
            "redis", upstream, tmp_path / "a", key_prefix=prefix, redis_near_ttl_s=0.3
        ) as first,
        cached_gateway(
            "redis", upstream, tmp_path / "b", key_prefix=prefix, redis_near_ttl_s=0.3
        ) as second,
    ):
        assert (await ask(first)).headers["x-rightsize-cache"] == "miss"
        assert (await ask(second)).headers["x-rightsize-cache"] == "hit"
        served = len(upstream.fake.requests)
        response = await second.client.delete(
            "/admin/cache/teams/search", headers=second.admin.headers
        )
        assert response.json() == {"team": "search", "deleted": 1}
        hit = await ask(first)  # its near copy, for up to 0.3 s
        assert hit.headers["x-rightsize-cache"] == "hit"
        assert hit.json()["choices"][0]["message"]["content"] == ANSWER
        await asyncio.sleep(0.35)
        assert (await ask(first)).headers["x-rightsize-cache"] == "miss"
        assert len(upstream.fake.requests) == served + 1
        assert prompt_cache(first).metrics.hits == 1
