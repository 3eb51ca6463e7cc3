"""Must-show: Redis or the database stopped mid-run gives 503s with retry-after, never 500s; the
accounting is whole once they are back; a dead worker's holds are released by its heartbeat.

Every outage is of a server this test owns: a throwaway redis-server on a free port, a TCP proxy
in front of the shared PostgreSQL that the test cuts (port closed, every connection reset) and
restores, or a `rightsize serve` process it SIGKILLs. The shared servers are never stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy.exc
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gateway.outage import is_outage, unavailable
from gateway.settings import Settings
from gateway.store import Store, from_picousd, to_picousd
from gateway.store.store import PoolLimits
from gateway.tokens import prompt_tokens
from ledger.backend import Admitted, Claim
from ledger.budgets import Amounts, Budget
from ledger.ledger import BudgetUsage, hold_amounts
from ledger.periods import Period
from ledger.redis_backend import RedisCounters
from policies import TokenPrice
from tests.conftest import (
    InProcessGateway,
    LiveServer,
    _empty_tables,
    gateway_config,
    gateway_env,
    in_process_gateway,
    service_unavailable,
    spend_rows,
    write_config,
)
from tests.fake_upstream import RunningUpstream, free_port
from tests.ledger_support import REDIS_URL, redis_prefix
from tests.test_cache_redis_outage import ThrowawayRedis, own_redis

__all__ = ["own_redis", "redis_prefix"]

MESSAGES = [{"role": "user", "content": "Say hello."}]
COST = Decimal("0.0000539")  # the fake's usage (21 prompt, 7 completion) at PRICE_DIRECT
BUDGET = Budget("team", "search", Period.MONTHLY)
# Short beats so that a test sees a dead worker's holds released in seconds.
# Each Redis call's deadline in the hung-Redis tests: the calls before the hang must fit in it
# on a busy CI host (0.3 s did not, once, for a first connect and PING), and the cut must still
# come long before redis-py's own 5 s per try.
HUNG_DEADLINE_S = 1.0
BEATS = {"heartbeat_s": 0.2, "heartbeat_timeout_s": 1.0}


# Helpers


async def ask(gw: InProcessGateway, model: str = "direct", max_tokens: int = 7) -> httpx.Response:
    return await gw.client.post(
        "/v1/chat/completions",
        json={"model": model, "messages": MESSAGES, "max_tokens": max_tokens},
        headers=gw.auth,
    )


async def set_budget(gw: InProcessGateway) -> None:
    body = {"team": "search", "period": "monthly", "limit_usd": "1"}
    response = await gw.client.put("/admin/budgets", json=body, headers=gw.admin.headers)
    assert response.status_code == 200, response.text


async def usage(gw: InProcessGateway) -> BudgetUsage:
    """The team's monthly counter as the gateway's own ledger reads it."""
    [found] = await gw.app.state.gateway.ledger.usage([BUDGET])
    return found


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> float:
    """Seconds until `check()` holds; fails after `timeout_s`."""
    started = time.monotonic()
    while not await check():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def assert_503_in_the_openai_shape(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("service_unavailable", code)
    assert int(response.headers["retry-after"]) >= 1


def redis_config(
    tmp_path: Path, upstream: RunningUpstream, redis_url: str, **ledger: Any
) -> dict[str, Any]:
    config = gateway_config(
        f"sqlite:///{tmp_path / 'rightsize.db'}",
        upstream,
        ledger={"redis_prefix": "rightsize-test:outage:", **BEATS, **ledger},
        # The prompt cache bypasses a dead Redis on its own (tests/test_cache_redis_outage.py).
        cache={"redis_timeout_ms": 500, "redis_retry_after_s": 0.2},
    )
    config["store"]["redis_url"] = redis_url
    return config


# Redis stopped mid-run


@pytest.fixture
async def on_own_redis(
    own_redis: ThrowawayRedis, upstream: RunningUpstream, tmp_path: Path
) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(redis_config(tmp_path, upstream, own_redis.url)) as gw:
        await set_budget(gw)
        for _ in range(3):
            assert (await ask(gw)).status_code == 200
        yield gw


async def test_budgeted_requests_get_503_with_retry_after_while_redis_is_down(
    on_own_redis: InProcessGateway, own_redis: ThrowawayRedis
) -> None:
    own_redis.stop()
    responses = [await ask(on_own_redis) for _ in range(5)]
    for response in responses:
        assert_503_in_the_openai_shape(response, "ledger_unavailable")
        assert "ledger" in response.json()["error"]["message"]


async def test_counters_rebuilt_after_redis_restarts_empty_equal_the_log_without_refusals(
    on_own_redis: InProcessGateway, own_redis: ThrowawayRedis, tmp_path: Path
) -> None:
    own_redis.stop()
    assert {(await ask(on_own_redis)).status_code for _ in range(4)} == {503}
    own_redis.start()  # same port, empty: the counters are gone
    for _ in range(2):
        response = await ask(on_own_redis)
        assert response.status_code == 200, response.text

    rows = await spend_rows(f"sqlite:///{tmp_path / 'rightsize.db'}", 9)
    assert sorted(r.status for r in rows) == [200] * 5 + [503] * 4
    found = await usage(on_own_redis)
    assert found.spent.requests == 5
    assert from_picousd(found.spent.picousd) == sum((r.cost_usd for r in rows), Decimal(0))
    assert from_picousd(found.spent.picousd) == COST * 5
    assert found.reserved.picousd == 0


async def test_a_rebuild_counts_the_rows_still_queued_in_this_processs_writer(
    own_redis: ThrowawayRedis, upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = redis_config(tmp_path, upstream, own_redis.url)
    config["spend_log"]["flush_interval_ms"] = 600_000  # queued rows stay queued for the test
    async with in_process_gateway(config) as gw:
        await set_budget(gw)
        for _ in range(3):
            assert (await ask(gw)).status_code == 200
        store = Store.connect(f"sqlite:///{tmp_path / 'rightsize.db'}")
        try:
            assert await store.spend(team="search") == []  # all three still queued
            own_redis.stop()
            own_redis.start()  # empty: the next request rebuilds the counters from the log
            assert (await ask(gw)).status_code == 200
            found = await usage(gw)
        finally:
            await store.aclose()
    # The three queued rows were written before the rebuild read the log, then the fourth
    # request settled on the rebuilt counter.
    assert found.spent.requests == 4
    assert from_picousd(found.spent.picousd) == COST * 4


async def test_a_redis_that_never_answers_gives_503_within_the_ledger_timeout(
    own_redis: ThrowawayRedis, upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = redis_config(tmp_path, upstream, own_redis.url, redis_timeout_s=HUNG_DEADLINE_S)
    async with in_process_gateway(config) as gw:
        await set_budget(gw)
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # hung: connections open, no answers
        try:
            started = time.monotonic()
            response = await ask(gw)
            elapsed = time.monotonic() - started
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
    assert_503_in_the_openai_shape(response, "ledger_unavailable")
    # The deadline (the prompt cache gives up sooner), the router and a busy host; not
    # redis-py's default of 5 s per try and ten retries.
    assert elapsed < HUNG_DEADLINE_S + 2.5, elapsed


async def test_the_settlements_round_trip_is_not_on_the_answers_path(
    own_redis: ThrowawayRedis,
    upstream: RunningUpstream,
    tmp_path: Path,
    serve: Callable[[dict[str, Any]], LiveServer],
) -> None:
    """Redis hung while the upstream answers: the answer still comes at once (the settlement is
    sent before it, its reply awaited after), and the charge lands once Redis runs again."""
    config = redis_config(tmp_path, upstream, own_redis.url, redis_timeout_s=4.0)
    async with in_process_gateway(config) as admin:  # the same SQLite file and Redis
        await set_budget(admin)
        live = await asyncio.to_thread(serve, config)
        async with httpx.AsyncClient(base_url=live.base_url, timeout=30) as client:

            async def ask_live() -> httpx.Response:
                body = {"model": "direct", "messages": MESSAGES, "max_tokens": 7}
                return await client.post("/v1/chat/completions", json=body, headers=admin.auth)

            assert (await ask_live()).status_code == 200  # connections made, router warm
            upstream.fake.default_delay_s = 0.5
            seen = len(upstream.fake.requests)
            answer = asyncio.create_task(ask_live())
            await eventually(
                lambda: _is(len(upstream.fake.requests) > seen), 10, "the upstream call"
            )
            assert own_redis.process is not None
            own_redis.process.send_signal(signal.SIGSTOP)  # hung until SIGCONT below
            hung = time.monotonic()
            try:
                response = await asyncio.wait_for(answer, timeout=10)
                answered = time.monotonic() - hung
            finally:
                own_redis.process.send_signal(signal.SIGCONT)
                upstream.fake.default_delay_s = 0.0
        assert response.status_code == 200, response.text
        assert Decimal(response.headers["x-rightsize-cost-usd"]) == COST
        # The upstream's 0.5 s and the answer; awaiting the settlement would hold it until
        # Redis answered or the ledger's 4 s deadline cut it.
        assert answered < 2.5, answered

        async def both_charged() -> bool:
            found = await usage(admin)
            return found.spent.picousd == 2 * to_picousd(COST) and found.reserved.requests == 0

        await eventually(both_charged, 10, "both requests charged, nothing held")


async def _is(value: bool) -> bool:
    return value


async def test_a_counter_operation_on_a_hung_redis_is_cut_at_the_ledger_timeout_as_an_outage(
    own_redis: ThrowawayRedis,
) -> None:
    # The ledger's client has no socket timeout (it cost a task per call); each operation has
    # the deadline instead, and past it the error the ledger takes for an outage.
    counters = RedisCounters.connect(own_redis.url, "rs-test-hung:", timeout_s=HUNG_DEADLINE_S)
    claim = Claim("team:t:monthly:2026-12", 10**12, None, None, None)
    amounts = Amounts(1_000, 10, 1)
    try:
        await counters.initialize(claim, Amounts(), 0)
        held = await counters.reserve("owner.h1", [claim], amounts, 0, 60_000)
        assert isinstance(held, Admitted)
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)  # hung: connections open, no answers
        try:
            started = time.monotonic()
            with pytest.raises(redis.exceptions.TimeoutError) as cut:
                await counters.settle("owner.h1", [claim], amounts, amounts)
            elapsed = time.monotonic() - started
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        assert is_outage(cut.value)  # the ledger keeps the settlement for a retry
        assert elapsed < HUNG_DEADLINE_S + 2.5, elapsed
        # Redis back: the ledger's retry (only_held) charges once, whether or not Redis ran
        # the cut call, on a fresh connection.
        (state,) = await counters.settle("owner.h1", [claim], amounts, amounts, only_held=True)
        assert state.spent == amounts
        assert state.reserved == Amounts()
    finally:
        await counters.forget("team:t:")
        await counters.aclose()


@pytest.mark.parametrize("operation", ["forget", "heartbeat", "read"])
async def test_every_counter_operation_on_a_hung_redis_is_cut_at_the_deadline(
    own_redis: ThrowawayRedis, operation: str
) -> None:
    # Creating or deleting a team forgets its counters (a SCAN): an unbounded SCAN on a hung
    # Redis once held a whole test run (2026-12-04).
    counters = RedisCounters.connect(own_redis.url, "rs-test-hung:", timeout_s=HUNG_DEADLINE_S)
    claim = Claim("team:t:monthly:2026-12", 10**12, None, None, None)
    calls = {
        "forget": lambda: counters.forget("team:t:"),
        "heartbeat": lambda: counters.heartbeat("owner", 0),
        "read": lambda: counters.read([claim], 0),
    }
    try:
        await counters.ping()  # connected before Redis hangs
        assert own_redis.process is not None
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(redis.exceptions.TimeoutError) as cut:
                await asyncio.wait_for(calls[operation](), timeout=30)
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        assert is_outage(cut.value)
    finally:
        await counters.aclose()


# fail_open: a bounded allowance while the counters are unreachable


async def test_fail_open_admits_the_allowed_number_of_requests_then_503(
    own_redis: ThrowawayRedis, upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = redis_config(
        tmp_path, upstream, own_redis.url, on_outage="fail_open", outage_allowance_requests=2
    )
    async with in_process_gateway(config) as gw:
        await set_budget(gw)
        assert (await ask(gw)).status_code == 200
        own_redis.stop()
        responses = [await ask(gw) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 503, 503]
    assert_503_in_the_openai_shape(responses[-1], "ledger_unavailable")
    assert "fail-open allowance" in responses[-1].json()["error"]["message"]


async def test_fail_open_admits_up_to_the_allowed_predicted_cost_then_503(
    own_redis: ThrowawayRedis, upstream: RunningUpstream, tmp_path: Path
) -> None:
    # What one request holds: our count of its prompt and max_tokens (1, which also caps the
    # router's prediction) at the deployment's price.
    config = redis_config(tmp_path, upstream, own_redis.url)
    price = Settings.model_validate(config).models[1].price
    assert price is not None
    prompt = prompt_tokens(MESSAGES)
    hold = hold_amounts(TokenPrice.per_million(price), prompt, 1).picousd
    config["ledger"].update(
        on_outage="fail_open", outage_allowance_usd=str(from_picousd(hold * 5 // 2))
    )
    async with in_process_gateway(config) as gw:
        await set_budget(gw)
        own_redis.stop()
        statuses = [(await ask(gw, max_tokens=1)).status_code for _ in range(4)]
    assert statuses == [200, 200, 503, 503]


async def test_fail_open_logs_every_request_it_admits_without_counters_as_an_error(
    own_redis: ThrowawayRedis,
    upstream: RunningUpstream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = redis_config(
        tmp_path, upstream, own_redis.url, on_outage="fail_open", outage_allowance_requests=2
    )
    async with in_process_gateway(config) as gw:
        await set_budget(gw)
        own_redis.stop()
        caplog.set_level(logging.ERROR, logger="rightsize.ledger")
        for _ in range(2):
            assert (await ask(gw)).status_code == 200
    loud = [r for r in caplog.records if "FAIL-OPEN" in r.getMessage()]
    assert len(loud) == 2
    assert all(r.levelno == logging.ERROR and "search" in r.getMessage() for r in loud)


# /readyz and /healthz


async def test_readyz_reports_the_store_redis_and_the_router_up(
    on_own_redis: InProcessGateway,
) -> None:
    response = await on_own_redis.client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready" and body["down"] == []
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "store": "up",
        "redis": "up",
        "router": "loaded",
    }


async def test_readyz_is_503_naming_redis_while_it_is_down_and_healthz_stays_200(
    on_own_redis: InProcessGateway, own_redis: ThrowawayRedis
) -> None:
    own_redis.stop()
    ready = await on_own_redis.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["down"] == ["redis"]
    assert ready.json()["checks"]["store"]["status"] == "up"
    assert (await on_own_redis.client.get("/healthz")).status_code == 200


# The database stopped mid-run: a proxy in front of the shared PostgreSQL, cut and restored


class CuttableProxy:
    """TCP to PostgreSQL through a port of the test's own: `cut()` closes the port and resets
    every connection, as a stopped server would; `restore()` listens again."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._pipe, "127.0.0.1", self.port, reuse_address=True
        )

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        if self._server is not None:
            await self.cut()

    async def _pipe(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            server, to_server = await asyncio.open_connection(*self.target)
        except OSError:
            to_client.transport.abort()
            return
        self._writers |= {to_client, to_server}
        await asyncio.gather(_copy(client, to_server), _copy(server, to_client))
        self._writers -= {to_client, to_server}


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.transport.abort()


@dataclass
class DatabaseOutage:
    gw: InProcessGateway
    proxy: CuttableProxy
    url: str  # the database directly, not through the proxy


@pytest.fixture
async def behind_proxy(
    postgres_database: str | BaseException, upstream: RunningUpstream, tmp_path: Path
) -> AsyncIterator[DatabaseOutage]:
    """PostgreSQL as the store and the ledger's counters (no Redis), reached through a proxy."""
    if isinstance(postgres_database, BaseException):
        service_unavailable("PostgreSQL", postgres_database)
    url = str(postgres_database)
    await _empty_tables(url)
    direct = make_url(url)
    proxy = CuttableProxy(direct.host or "127.0.0.1", direct.port or 5432)
    await proxy.start()
    proxied = direct.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    config = gateway_config(proxied, upstream, ledger=BEATS)
    config["spend_log"] = {
        "flush_interval_ms": 20,
        "fallback_file": str(tmp_path / "spend-log-unwritten.jsonl"),
        "journal_dir": str(tmp_path / "journal"),
        "replay_interval_s": 0.5,
    }
    slow = dict(config["models"][1], name="direct-hang", model="openai/fake-slow", timeout_s=30)
    config["models"].append(slow)  # answers after 3 s: in flight across the cut
    try:
        async with in_process_gateway(config) as gw:
            await set_budget(gw)
            try:
                yield DatabaseOutage(gw, proxy, url)
            finally:
                await proxy.restore()  # the gateway shuts down with its database
    finally:
        await proxy.close()


async def test_every_route_answers_503_not_500_while_the_database_is_down(
    behind_proxy: DatabaseOutage,
) -> None:
    gw = behind_proxy.gw
    assert (await ask(gw)).status_code == 200
    await behind_proxy.proxy.cut()

    chat = await ask(gw)  # the key is still cached: the ledger's counters are what is down
    assert_503_in_the_openai_shape(chat, "ledger_unavailable")
    unknown_key = {"authorization": "Bearer rs-a-key-never-seen"}
    models = await gw.client.get("/v1/models", headers=unknown_key)
    assert_503_in_the_openai_shape(models, "store_unavailable")
    teams = await gw.client.get("/admin/teams", headers=gw.admin.headers)
    assert_503_in_the_openai_shape(teams, "store_unavailable")
    usage_now = await gw.client.get("/admin/teams/search/usage", headers=gw.admin.headers)
    assert usage_now.status_code == 503, usage_now.text


async def test_readyz_is_503_naming_the_store_while_the_database_is_down_and_healthz_200(
    behind_proxy: DatabaseOutage,
) -> None:
    gw = behind_proxy.gw
    assert (await gw.client.get("/readyz")).status_code == 200
    await behind_proxy.proxy.cut()
    ready = await gw.client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["down"] == ["store"]
    assert ready.json()["checks"]["router"]["status"] == "loaded"
    assert (await gw.client.get("/healthz")).status_code == 200
    await behind_proxy.proxy.restore()
    await eventually(
        lambda: _status_is(gw, "/readyz", 200), timeout_s=10, what="/readyz back to 200"
    )


async def _status_is(gw: InProcessGateway, path: str, status: int) -> bool:
    return (await gw.client.get(path)).status_code == status


async def test_after_a_database_outage_no_paid_row_is_lost_holds_are_released_and_counters_equal_the_log(  # noqa: E501
    behind_proxy: DatabaseOutage,
) -> None:
    gw, proxy = behind_proxy.gw, behind_proxy.proxy
    assert (await ask(gw)).status_code == 200
    in_flight = [asyncio.create_task(ask(gw, "direct-hang")) for _ in range(3)]
    await eventually(
        lambda: _reserved_requests_are(gw, 3), timeout_s=10, what="3 holds taken before the cut"
    )
    await proxy.cut()
    refused = [await ask(gw) for _ in range(3)]
    finished = await asyncio.gather(*in_flight)  # they settle while the database is down
    assert [r.status_code for r in finished] == [200, 200, 200]
    assert {r.status_code for r in refused} == {503}
    await asyncio.sleep(3)  # past the spend writer's retries: its rows went to the fallback file
    await proxy.restore()

    async def whole() -> bool:
        try:
            found = await usage(gw)
        except Exception:
            return False
        return found.reserved.requests == 0 and found.spent.requests == 4

    await eventually(whole, timeout_s=30, what="holds released and the 4 paid requests counted")
    rows = await spend_rows(behind_proxy.url, 7)
    paid = [r for r in rows if r.status == 200]
    assert len(paid) == 4  # none lost: the rows written during the outage were replayed
    assert sorted(r.status for r in rows) == [200] * 4 + [503] * 3
    found = await usage(gw)
    assert from_picousd(found.spent.picousd) == sum((r.cost_usd for r in paid), Decimal(0))
    assert from_picousd(found.spent.picousd) == COST * 4
    assert found.reserved.picousd == 0


async def _reserved_requests_are(gw: InProcessGateway, count: int) -> bool:
    return (await usage(gw)).reserved.requests == count


# A worker killed while it holds a hold: its heartbeat stops, another process releases it


@pytest.fixture(params=["sqlite", "redis"])
def shared_ledger(
    request: pytest.FixtureRequest, tmp_path: Path, upstream: RunningUpstream
) -> dict[str, Any]:
    """A config two processes share: the SQLite file (its ledger tables), or Redis as well."""
    ledger = {**BEATS, "reservation_ttl_s": 600}
    config = gateway_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream, ledger=ledger)
    if request.param == "redis":
        try:
            redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
        except redis.RedisError as exc:
            service_unavailable(f"Redis at {REDIS_URL}", exc)
        config["ledger"]["redis_prefix"] = request.getfixturevalue("redis_prefix")
        config["store"]["redis_url"] = REDIS_URL
    slow = dict(config["models"][1], name="direct-hang", model="openai/fake-slow", timeout_s=30)
    config["models"].append(slow)
    return config


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], LiveServer]]:
    servers: list[LiveServer] = []

    def start(config: dict[str, Any]) -> LiveServer:
        config_file = write_config(tmp_path / "rightsize.yaml", config)
        servers.append(LiveServer(config_file, gateway_env(), ready_s=180))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


async def test_a_killed_workers_hold_is_released_within_the_heartbeat_timeout(
    shared_ledger: dict[str, Any], serve: Callable[[dict[str, Any]], LiveServer]
) -> None:
    # The surviving process: this test's own gateway, sweeping in the background.
    async with in_process_gateway(shared_ledger) as survivor:
        await set_budget(survivor)
        doomed = await asyncio.to_thread(serve, shared_ledger)

        def hang() -> None:
            body = {"model": "direct-hang", "messages": MESSAGES, "max_tokens": 7}
            with contextlib.suppress(httpx.HTTPError):  # the server dies under it
                httpx.post(
                    doomed.base_url + "/v1/chat/completions",
                    json=body,
                    headers=survivor.auth,
                    timeout=30,
                )

        caller = threading.Thread(target=hang)
        caller.start()
        await eventually(
            lambda: _reserved_requests_are(survivor, 1), timeout_s=20, what="the hold taken"
        )
        doomed.process.kill()  # SIGKILL: no settle, no shutdown
        doomed.process.wait(timeout=10)
        killed = time.monotonic()
        assert (await usage(survivor)).reserved.requests == 1  # reservation_ttl_s is 600

        released = await eventually(
            lambda: _reserved_requests_are(survivor, 0), timeout_s=15, what="the hold released"
        )
        # heartbeat_timeout_s (1 s) after the last beat, found by the next sweep (0.2 s); a
        # busy host's scheduling on top, but nowhere near reservation_ttl_s.
        assert released < 5.0, released
        assert time.monotonic() - killed < 6.0
        await asyncio.to_thread(caller.join, 10)


# Outage or bug: only the first is a 503


def test_a_refused_redis_connection_is_an_outage() -> None:
    client = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.RedisError) as caught:
        client.ping()
    assert is_outage(caught.value)
    error = unavailable(caught.value)
    assert error is not None and error.status == 503 and "Redis" in error.message


async def test_a_bad_query_is_a_bug_not_an_outage(tmp_path: Path) -> None:
    store = Store.connect(f"sqlite:///{tmp_path / 'bad.db'}")
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as caught:  # "no such table"
            async with store.engine.connect() as conn:
                await conn.execute(text("SELECT * FROM no_such_table"))
    finally:
        await store.aclose()
    assert not is_outage(caught.value)
    assert unavailable(caught.value) is None


async def test_a_database_host_that_never_answers_is_an_outage_within_the_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    store = Store.connect(
        f"postgresql://postgres@127.0.0.1:{port}/test", PoolLimits(connect_timeout_s=0.5)
    )
    started = time.monotonic()
    try:
        with pytest.raises(Exception) as raised:
            await store.spend(limit=1)
        # asyncpg's own default would hold the request for 60 s.
        assert time.monotonic() - started < 5
        assert is_outage(raised.value)
    finally:
        await store.aclose()
        server.close()
