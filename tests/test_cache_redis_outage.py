"""Redis stopped or slow under the prompt cache: requests succeed, it is logged, caching resumes;
and what the store's connection costs (no handshake, no task per call, connected at start).

These tests run their own throwaway redis-server on a free port; the shared one is never touched.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.utils

from gateway.cache import CacheUnavailable, RedisStore
from tests.cache_support import ask, cached_gateway, prompt_cache
from tests.conftest import IN_CI, InProcessGateway
from tests.fake_upstream import ANSWER, RunningUpstream, free_port


class ThrowawayRedis:
    """A redis-server of this test alone: no persistence, stopped and restarted at will."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.2) as probe:
                    probe.ping()  # closed after: tests count this server's connections
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("the throwaway redis-server did not start") from None
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


@pytest.fixture
def own_redis() -> Iterator[ThrowawayRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed; the outage tests start their own"
        if IN_CI:
            pytest.fail(message)
        pytest.skip("SKIPPED LOUDLY: " + message)
    server = ThrowawayRedis(binary)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def gw(
    own_redis: ThrowawayRedis, upstream: RunningUpstream, tmp_path: Path
) -> AsyncIterator[InProcessGateway]:
    # No near copies: every lookup reads Redis, which these tests take away.
    async with cached_gateway(
        "redis",
        upstream,
        tmp_path,
        redis_url=own_redis.url,
        redis_retry_after_s=0.2,
        redis_near_ttl_s=0,
    ) as running:
        await ask(running)
        assert (await ask(running)).headers["x-rightsize-cache"] == "hit"
        yield running


async def test_requests_succeed_while_redis_is_stopped(
    gw: InProcessGateway, own_redis: ThrowawayRedis
) -> None:
    own_redis.stop()
    for _ in range(3):
        response = await ask(gw)
        assert response.status_code == 200, response.text
        assert response.headers["x-rightsize-cache"] == "miss"
        assert response.json()["choices"][0]["message"]["content"] == ANSWER
    assert prompt_cache(gw).metrics.bypassed.total() >= 3


async def test_redis_stopping_is_logged_once_as_a_warning(
    gw: InProcessGateway, own_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rightsize.cache")
    own_redis.stop()
    for _ in range(3):
        await ask(gw)
    warnings = [
        r for r in caplog.records if r.name == "rightsize.cache" and r.levelno == logging.WARNING
    ]
    assert len(warnings) == 1
    assert "bypass the cache" in warnings[0].getMessage()


async def test_caching_resumes_when_redis_returns(
    gw: InProcessGateway, own_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="rightsize.cache")
    own_redis.stop()
    await ask(gw)
    own_redis.start()  # same port, empty: it kept nothing
    await asyncio.sleep(0.3)  # past redis_retry_after_s
    # The first call after the window probes Redis; allow a few requests for the probe.
    answers = [(await ask(gw)).headers["x-rightsize-cache"] for _ in range(5)]
    assert answers[-1] == "hit", answers
    assert any("Redis is back" in r.getMessage() for r in caplog.records)


async def _blackhole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts a connection and never answers: Redis as slow as it gets."""
    try:
        while await reader.read(65536):
            pass
    finally:
        writer.close()


async def test_slow_redis_is_bypassed_within_its_deadline(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    server = await asyncio.start_server(_blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with cached_gateway(
            "redis",
            upstream,
            tmp_path,
            redis_url=f"redis://127.0.0.1:{port}/0",
            redis_timeout_ms=20,
            clean_redis=False,
        ) as gw:
            response = await ask(gw)
            assert response.status_code == 200
            assert response.headers["x-rightsize-cache"] == "miss"
            assert prompt_cache(gw).metrics.bypassed["timeout"] >= 1
    finally:
        server.close()


async def test_invalidation_while_redis_is_stopped_is_503_in_the_openai_shape(
    gw: InProcessGateway, own_redis: ThrowawayRedis
) -> None:
    own_redis.stop()
    response = await gw.client.delete("/admin/cache/teams/search", headers=gw.admin.headers)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "cache_unavailable"


# The connection: what a call and a reconnect cost


def _server(own_redis: ThrowawayRedis) -> redis.Redis:
    return redis.Redis(port=own_redis.port, socket_timeout=2)


def _store(own_redis: ThrowawayRedis) -> RedisStore:
    return RedisStore(own_redis.url, "rightsize-test:", timeout_s=0.5, retry_after_s=0.2)


async def test_a_redis_connection_opens_without_a_handshake(own_redis: ThrowawayRedis) -> None:
    # A reconnect follows every call past its deadline; with HELLO and CLIENT SETINFO it took
    # milliseconds and missed the deadline in turn. Now it is the TCP connect alone.
    server = _server(own_redis)
    server.config_resetstat()
    store = _store(own_redis)
    try:
        await store.get("search", "k")
    finally:
        await store.aclose()
    commands = set(server.info("commandstats")) - {"cmdstat_config|resetstat", "cmdstat_info"}
    assert commands == {"cmdstat_get"}
    assert server.info("errorstats") == {}


async def test_redis_store_connects_at_start_not_on_the_first_request(
    own_redis: ThrowawayRedis,
) -> None:
    server = _server(own_redis)
    server.ping()
    store = _store(own_redis)
    try:
        await store.start()
        connections = server.info("stats")["total_connections_received"]
        await store.get("search", "k")
        assert server.info("stats")["total_connections_received"] == connections
    finally:
        await store.aclose()


async def test_redis_store_starts_without_redis_and_warns(
    own_redis: ThrowawayRedis, caplog: pytest.LogCaptureFixture
) -> None:
    own_redis.stop()
    store = _store(own_redis)
    try:
        await store.start()
    finally:
        await store.aclose()
    assert any("did not answer at start" in r.getMessage() for r in caplog.records)


async def test_a_redis_call_creates_no_task(own_redis: ThrowawayRedis) -> None:
    # asyncio.wait_for (redis-py's socket timeout) runs each send as a task of its own.
    store = _store(own_redis)
    loop = asyncio.get_running_loop()
    created: list[object] = []

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)

    try:
        await store.start()
        await store.set("search", "k", b"value", 60)
        loop.set_task_factory(counting_factory)
        try:
            assert await store.get("search", "k") == b"value"
        finally:
            loop.set_task_factory(None)
    finally:
        await store.aclose()
    assert created == []


def test_redis_replies_are_parsed_by_hiredis() -> None:
    assert redis.utils.HIREDIS_AVAILABLE


# The deadline counts Redis's time, not the event loop's own stalls


def _stall_the_loop_soon(seconds: float) -> None:
    """Block the event loop a turn from now: while a call that starts now is waiting on Redis."""

    async def stall() -> None:
        await asyncio.sleep(0)
        time.sleep(seconds)  # noqa: ASYNC251 (blocking the loop is the point)

    asyncio.get_running_loop().create_task(stall())


async def test_a_stall_of_the_event_loop_is_not_blamed_on_redis(own_redis: ThrowawayRedis) -> None:
    store = RedisStore(own_redis.url, "rightsize-test:", timeout_s=0.02, retry_after_s=0.2)
    try:
        await store.start()
        await store.set("search", "k", b"value", 60)
        for _ in range(5):
            # Three deadlines of stall while the GET is out; Redis answers meanwhile.
            _stall_the_loop_soon(0.06)
            assert await store.get("search", "k") == b"value"
    finally:
        await store.aclose()


async def test_a_slow_redis_is_still_cut_one_deadline_after_a_stall() -> None:
    server = await asyncio.start_server(_blackhole, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = RedisStore(f"redis://127.0.0.1:{port}/0", "t:", timeout_s=0.02, retry_after_s=0)
    try:
        _stall_the_loop_soon(0.06)
        started = time.monotonic()
        with pytest.raises(CacheUnavailable):
            await store.get("search", "k")
        assert time.monotonic() - started < 0.5
    finally:
        await store.aclose()
        server.close()


# A slow answer is not an outage


async def _slow_spell(own_redis: ThrowawayRedis, ms: int) -> asyncio.Task[None]:
    """Redis holds every command for `ms` from now (CLIENT PAUSE: slow, not down); the task
    ends when it answers again."""
    _server(own_redis).client_pause(ms)
    return asyncio.create_task(asyncio.sleep(ms / 1000 + 0.05))


def _patient_store(own_redis: ThrowawayRedis) -> RedisStore:
    # A long retry window: a store that decided to skip Redis would still be skipping it.
    return RedisStore(own_redis.url, "rightsize-test:", timeout_s=0.05, retry_after_s=30)


async def _cut(store: RedisStore) -> str:
    with pytest.raises(CacheUnavailable) as cut:
        await store.get("search", "k")
    return cut.value.reason


async def test_one_slow_redis_call_bypasses_only_itself(own_redis: ThrowawayRedis) -> None:
    store = _patient_store(own_redis)
    try:
        await store.set("search", "k", b"value", 60)
        spell = await _slow_spell(own_redis, 200)
        assert await _cut(store) == "timeout"
        await spell
        assert await store.get("search", "k") == b"value"
    finally:
        await store.aclose()


async def test_calls_held_up_by_the_same_slow_spell_count_as_one_slow_call(
    own_redis: ThrowawayRedis,
) -> None:
    # 32 requests in flight on a busy host: all cut together, and Redis is not skipped.
    store = _patient_store(own_redis)
    try:
        await store.set("search", "k", b"value", 60)
        spell = await _slow_spell(own_redis, 200)
        reasons = await asyncio.gather(*(_cut(store) for _ in range(32)))
        await spell
        assert set(reasons) == {"timeout"}
        assert await store.get("search", "k") == b"value"
    finally:
        await store.aclose()


async def test_three_slow_calls_one_after_another_skip_redis_for_the_retry_window(
    own_redis: ThrowawayRedis,
) -> None:
    store = _patient_store(own_redis)
    try:
        await store.set("search", "k", b"value", 60)
        for _ in range(3):
            spell = await _slow_spell(own_redis, 200)
            assert await _cut(store) == "timeout"
            await spell
        assert await _cut(store) == "unavailable"  # Redis answers again, but is not asked
    finally:
        await store.aclose()
