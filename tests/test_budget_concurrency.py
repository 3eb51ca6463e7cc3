"""Must-show: budgets hold under concurrency across worker processes, and survive a SIGKILL.

Live `rightsize serve` processes against the fake upstream; the ledger on SQLite (embedded) and
on Redis (scale-out, with PostgreSQL as the store).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.ledger_build import open_ledger
from gateway.settings import Settings
from gateway.store import Store, from_picousd
from gateway.tokens import prompt_tokens
from ledger.budgets import Budget
from ledger.ledger import hold_amounts
from ledger.periods import Period
from policies import TokenPrice
from tests.conftest import (
    MASTER_KEY,
    PRICE_DIRECT,
    LiveServer,
    _empty_tables,
    gateway_config,
    gateway_env,
    service_unavailable,
    spend_rows,
    write_config,
)
from tests.fake_upstream import RunningUpstream
from tests.ledger_support import REDIS_URL, redis_prefix

__all__ = ["redis_prefix"]

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
# Long enough that our own count of prompt tokens (27) is above what the fake reports (21).
MESSAGES = [
    {
        "role": "user",
        "content": "Please answer in one short sentence: what is the capital city of France, "
        "and why is it famous for art?",
    }
]
MAX_TOKENS = 7
COST = Decimal("0.0000539")  # the fake's usage (21 prompt, 7 completion) at PRICE_DIRECT


@pytest.fixture(params=["sqlite", "redis"])
def ledger_config(
    request: pytest.FixtureRequest, tmp_path: Path, upstream: RunningUpstream
) -> dict[str, Any]:
    """The embedded store, or PostgreSQL + Redis (a key prefix of this test's own)."""
    if request.param == "sqlite":
        return gateway_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    database = request.getfixturevalue("postgres_database")
    if isinstance(database, BaseException):
        service_unavailable("PostgreSQL", database)
    asyncio.run(_empty_tables(str(database)))
    prefix = request.getfixturevalue("redis_prefix")
    config = gateway_config(str(database), upstream, ledger={"redis_prefix": prefix})
    config["store"]["redis_url"] = REDIS_URL
    return config


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[LiveServer] = []

    def start(config: dict[str, Any], workers: int) -> LiveServer:
        config_file = write_config(tmp_path / "rightsize.yaml", config)
        # Several workers each import litellm: slow on a busy two-core machine.
        servers.append(LiveServer(config_file, gateway_env(), workers=workers, ready_s=180))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def team_key_budget(server: LiveServer, **budget: Any) -> str:
    with httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=30) as client:
        assert client.post("/admin/teams", json={"name": "search"}).status_code == 201
        key = client.post("/admin/keys", json={"team": "search"}).json()["key"]
        response = client.put("/admin/budgets", json={"team": "search", **budget})
        assert response.status_code == 200, response.text
    return str(key)


async def logged(config: dict[str, Any], count: int) -> list[Any]:
    """The team's spend-log rows, once there are `count` of them (the writer batches)."""
    return await spend_rows(config["store"]["url"], count, timeout_s=20)


async def counters(config: dict[str, Any], budget: Budget) -> Any:
    """The budget's counter as a fresh process sees it (expired holds dropped)."""
    settings = Settings.model_validate(config)
    store = Store.connect(settings.store_url())
    ledger = open_ledger(settings, store)
    try:
        [usage] = await ledger.usage([budget])
        return usage
    finally:
        await ledger.aclose()
        await store.aclose()


async def fire(base_url: str, key: str, n: int) -> list[httpx.Response]:
    body = {"model": "direct", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        headers = {"authorization": f"Bearer {key}"}
        return await asyncio.gather(
            *(client.post("/v1/chat/completions", json=body, headers=headers) for _ in range(n))
        )


def test_200_concurrent_requests_from_4_workers_never_overspend_the_budget(
    ledger_config: dict[str, Any], serve: Any
) -> None:
    limit = COST * 50  # affords about 50 of the 200 requests
    server = serve(ledger_config, workers=4)
    key = team_key_budget(server, period="total", limit_usd=str(limit))

    responses = asyncio.run(fire(server.base_url, key, 200))

    admitted = [r for r in responses if r.status_code == 200]
    denied = [r for r in responses if r.status_code != 200]
    for response in denied:
        assert response.status_code == 429, response.text
        error = response.json()["error"]
        assert error["code"] == "budget_exceeded"
        budget = error["budget"]
        assert (budget["team"], budget["period"]) == ("search", "total")
        assert Decimal(budget["limit_usd"]) == limit
        assert {"spent_usd", "reserved_usd", "remaining_usd"} <= budget.keys()
    rows = asyncio.run(logged(ledger_config, 200))
    assert len(rows) == 200
    settled = sum((r.cost_usd for r in rows), Decimal(0))
    # The exact bound (docs/budgets.md): every admitted request fitted its hold within the
    # limit, so the spend can pass the limit only by what requests used beyond their holds. The
    # hold is our count of the prompt plus max_tokens; the fake reports fewer prompt tokens and
    # exactly max_tokens, so no full hold was passed. The one exception is the last stretch of
    # the budget, lent to one request at a time when nothing else is held: it may pass the
    # limit by that request's cost beyond what was left, so the bound is limit + COST.
    price = Settings.model_validate(ledger_config).models[1].price
    assert price is not None and str(price.input_per_mtok) == PRICE_DIRECT["input_per_mtok"]
    counted = prompt_tokens(MESSAGES)

    hold = from_picousd(hold_amounts(TokenPrice.per_million(price), counted, MAX_TOKENS).picousd)
    assert hold >= COST
    overrun = sum((max(r.cost_usd - hold, Decimal(0)) for r in rows if r.status == 200), Decimal(0))
    assert overrun == 0
    assert settled <= limit + overrun + COST
    # Here the limit is exactly 50 requests' cost: whatever was left when the stretch was lent
    # was a whole request's cost, so not even the stretch passed the limit.
    assert settled <= limit
    assert len(admitted) == sum(1 for r in rows if r.status == 200)
    assert 40 <= len(admitted) <= 50, len(admitted)
    # Counters equal the spend log, and nothing is left held.
    usage = asyncio.run(counters(ledger_config, Budget("team", "search", Period.TOTAL)))
    assert from_picousd(usage.spent.picousd) == settled
    assert usage.reserved.picousd == 0


def test_a_worker_killed_mid_request_loses_no_spend_and_its_hold_expires(
    ledger_config: dict[str, Any], serve: Any
) -> None:
    ledger_config["ledger"] = {**ledger_config.get("ledger", {}), "reservation_ttl_s": 2}
    hang = dict(ledger_config["models"][1], name="direct-hang", timeout_s=30)
    hang["model"] = "openai/fake-slow"  # answers after 3 s
    ledger_config["models"].append(hang)
    server = serve(ledger_config, workers=1)
    key = team_key_budget(server, period="monthly", limit_usd="1")
    assert all(r.status_code == 200 for r in asyncio.run(fire(server.base_url, key, 3)))
    assert len(asyncio.run(logged(ledger_config, 3))) == 3

    def hang_request() -> None:
        body = {"model": "direct-hang", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        headers = {"authorization": f"Bearer {key}"}
        try:
            httpx.post(server.base_url + "/v1/chat/completions", json=body, headers=headers)
        except httpx.HTTPError:
            pass  # the server dies under it

    caller = threading.Thread(target=hang_request)
    caller.start()
    budget = Budget("team", "search", Period.MONTHLY)
    deadline = time.monotonic() + 10
    while asyncio.run(counters(ledger_config, budget)).reserved.picousd == 0:
        assert time.monotonic() < deadline, "the hanging request never took its hold"
        time.sleep(0.05)
    server.process.kill()  # SIGKILL: no shutdown, no settle
    server.process.wait(timeout=10)
    caller.join(timeout=10)

    held = asyncio.run(counters(ledger_config, budget))
    assert held.reserved.picousd > 0
    time.sleep(2.1)
    after = asyncio.run(counters(ledger_config, budget))
    rows = asyncio.run(logged(ledger_config, 3))
    assert after.reserved.picousd == 0
    assert from_picousd(after.spent.picousd) == sum((r.cost_usd for r in rows), Decimal(0))
    assert from_picousd(after.spent.picousd) == COST * 3
    assert after.spent.requests == len(rows) == 3
