"""Budgets through the gateway: admin API, 429 bodies, usage, and counters rebuilt after a flush."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import httpx

from gateway.store import Store
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream
from tests.ledger_support import REDIS_URL, delete_prefix, redis_prefix

__all__ = ["redis_prefix"]

MESSAGES = [{"role": "user", "content": "Say hello."}]
# "direct" costs (21 * 1.1 + 7 * 4.4) / 1e6 = $0.0000539 per request at the fake's usage.
COST = Decimal("0.0000539")


async def set_budget(gw: InProcessGateway, **body: Any) -> dict[str, Any]:
    response = await gw.client.put("/admin/budgets", json=body, headers=gw.admin.headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def chat(gw: InProcessGateway, **extra: Any) -> Any:
    body = {"model": "direct", "messages": MESSAGES, "max_tokens": 7, **extra}
    return await gw.client.post("/v1/chat/completions", json=body, headers=gw.auth)


async def usage(gw: InProcessGateway, team: str = "search") -> list[dict[str, Any]]:
    response = await gw.client.get(f"/admin/teams/{team}/usage", headers=gw.admin.headers)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


async def logged_cost(store_url: str, team: str = "search") -> Decimal:
    store = Store.connect(store_url)
    try:
        rows = await store.spend(team=team, limit=10_000)
    finally:
        await store.aclose()
    return sum((r.cost_usd for r in rows), Decimal(0))


async def test_budgets_are_set_read_and_deleted_through_the_admin_api(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        created = await set_budget(
            gw, team="search", period="monthly", limit_usd="12.50", alert_percents=[80, 50]
        )
        assert created["id"] == "team:search:monthly"
        assert created["limit_usd"] == "12.5" and created["alert_percents"] == [50, 80]
        listed = await gw.client.get("/admin/budgets?team=search", headers=gw.admin.headers)
        assert [b["id"] for b in listed.json()["data"]] == ["team:search:monthly"]
        url = "/admin/budgets/team:search:monthly"
        assert (await gw.client.get(url, headers=gw.admin.headers)).json() == created
        assert (await gw.client.delete(url, headers=gw.admin.headers)).status_code == 200
        assert (await gw.client.get(url, headers=gw.admin.headers)).status_code == 404


async def test_a_budget_for_an_unknown_team_is_refused(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        body = {"team": "nobody", "period": "daily", "limit_usd": "1"}
        response = await gw.client.put("/admin/budgets", json=body, headers=gw.admin.headers)
        assert response.status_code == 404
        assert response.json()["error"]["param"] == "team"


async def test_budget_exhausted_returns_429_naming_the_budget(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="total", limit_usd=str(COST * 2))
        assert (await chat(gw)).status_code == 200
        assert (await chat(gw)).status_code == 200
        refused = await chat(gw)
        assert refused.status_code == 429
        error = refused.json()["error"]
        assert error["code"] == "budget_exceeded" and error["type"] == "budget_exceeded_error"
        budget = error["budget"]
        assert (budget["team"], budget["period"]) == ("search", "total")
        assert budget["limit_usd"] == "0.0001078" and budget["spent_usd"] == "0.0001078"
        assert (budget["reserved_usd"], budget["remaining_usd"]) == ("0", "0")
        assert "retry-after" not in refused.headers  # a total budget never resets
        assert refused.headers["x-should-retry"] == "false"
        row = await gw.admin.spend(refused.headers["x-request-id"])
        assert (row["status"], row["error_type"]) == (429, "budget_exceeded")


async def test_a_daily_budget_429_carries_retry_after(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="daily", limit_usd="0.00001")
        # The first request gets the budget's last stretch (docs/budgets.md); the second, none.
        assert (await chat(gw)).status_code == 200
        refused = await chat(gw)
        assert refused.status_code == 429
        assert 0 < int(refused.headers["retry-after"]) <= 86400
        assert refused.headers["x-should-retry"] == "false"


async def test_a_requests_per_minute_limit_answers_429_rate_limit(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="minute", limit_requests=1)
        first, second = await chat(gw), await chat(gw)
        if first.status_code == 429:  # the minute turned between budget and request
            first, second = second, await chat(gw)
        assert first.status_code == 200 and second.status_code == 429
        assert second.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(second.headers["retry-after"]) <= 60
        assert "x-should-retry" not in second.headers  # the SDKs' retry after retry-after fits


async def test_usage_shows_spent_reserved_and_remaining_per_budget(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="monthly", limit_usd="1", limit_tokens=1000)
        await set_budget(gw, team="search", period="minute", limit_requests=100)
        assert (await chat(gw)).status_code == 200
        monthly = next(u for u in await usage(gw) if u["period"] == "monthly")
        assert monthly["spent_usd"] == str(COST) and monthly["reserved_usd"] == "0"
        assert monthly["remaining_usd"] == str(1 - COST)
        assert (monthly["spent_tokens"], monthly["remaining_tokens"]) == (28, 972)


async def test_a_failed_upstream_call_charges_nothing(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="daily", limit_usd="1")
        body = {"model": "direct-500", "messages": MESSAGES, "max_tokens": 7}
        response = await gw.client.post("/v1/chat/completions", json=body, headers=gw.auth)
        assert response.status_code == 502
        [daily] = await usage(gw)
        assert (daily["spent_usd"], daily["reserved_usd"], daily["spent_requests"]) == ("0", "0", 1)


async def test_counters_are_rebuilt_from_the_spend_log_after_redis_is_flushed(
    store_url: str, upstream: RunningUpstream, redis_prefix: str
) -> None:
    config = gateway_config(store_url, upstream, ledger={"redis_prefix": redis_prefix})
    config["store"]["redis_url"] = REDIS_URL
    async with in_process_gateway(config) as gw:
        await set_budget(gw, team="search", period="monthly", limit_usd="1")
        for _ in range(3):
            assert (await chat(gw)).status_code == 200
        await gw.admin.spend((await chat(gw)).headers["x-request-id"])  # the log has caught up
        assert delete_prefix(redis_prefix) > 0  # Redis "loses its data"
        assert (await chat(gw)).status_code == 200
        await asyncio.sleep(0.1)  # the batched spend-log writer
        [monthly] = await usage(gw)
        assert monthly["spent_usd"] == str(COST * 5) == str(await logged_cost(store_url))
        assert monthly["spent_requests"] == 5


async def test_a_rebuilt_counter_counts_a_cache_hit_as_the_live_one_did(
    store_url: str, upstream: RunningUpstream, redis_prefix: str
) -> None:
    # One request and no tokens: what the hit's hold counted live, the rebuild counts again.
    config = gateway_config(
        store_url, upstream, ledger={"redis_prefix": redis_prefix}, cache={"backend": "memory"}
    )
    config["store"]["redis_url"] = REDIS_URL
    async with in_process_gateway(config) as gw:
        await set_budget(gw, team="search", period="monthly", limit_usd="1")
        assert (await chat(gw, temperature=0)).headers["x-rightsize-cache"] == "miss"
        hit = await chat(gw, temperature=0)
        assert hit.headers["x-rightsize-cache"] == "hit"
        [live] = await usage(gw)
        await gw.admin.spend(hit.headers["x-request-id"])  # the log has caught up
        assert delete_prefix(redis_prefix) > 0  # Redis "loses its data"
        [rebuilt] = await usage(gw)
    assert (live["spent_requests"], live["spent_tokens"]) == (2, 28)
    assert (rebuilt["spent_requests"], rebuilt["spent_tokens"]) == (2, 28)
    assert rebuilt["spent_usd"] == live["spent_usd"] == str(COST)


async def test_a_streamed_request_is_settled_at_its_actual_cost(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="daily", limit_usd="1")
        response = await chat(gw, stream=True, stream_options={"include_usage": True})
        assert response.status_code == 200 and "[DONE]" in response.text
        [daily] = await usage(gw)
        assert (daily["spent_usd"], daily["reserved_usd"]) == (str(COST), "0")


async def test_a_stream_broken_midway_releases_what_it_did_not_use(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="daily", limit_usd="1")
        body = {"model": "direct-midstream", "messages": MESSAGES, "stream": True}
        response = await gw.client.post("/v1/chat/completions", json=body, headers=gw.auth)
        assert response.status_code == 200
        [daily] = await usage(gw)
        row = await gw.admin.spend(response.headers["x-request-id"])
        assert daily["reserved_usd"] == "0"
        assert Decimal(daily["spent_usd"]) == Decimal(row["cost_usd"])


async def reserved_during_a_slow_call(gw: InProcessGateway) -> tuple[int, httpx.Response]:
    """The tokens held while the `slow-ok` deployment (the fake's 3 s answer) is called under a
    monthly budget, and the response."""
    await set_budget(gw, team="search", period="monthly", limit_usd="100", limit_tokens=10**9)
    body = {"model": "slow-ok", "messages": MESSAGES}
    task = asyncio.create_task(gw.client.post("/v1/chat/completions", json=body, headers=gw.auth))
    reserved = 0
    # The fake upstream holds the call for 3 s: the hold is visible in the meantime.
    deadline = asyncio.get_running_loop().time() + 10
    while not reserved and not task.done() and asyncio.get_running_loop().time() < deadline:
        [monthly] = await usage(gw)
        reserved = int(monthly["reserved_tokens"])
        await asyncio.sleep(0.01)
    response = await task
    return reserved, response


async def test_the_hold_is_the_prompt_plus_the_routers_p90_not_the_worst_case(
    store_url: str, upstream: RunningUpstream
) -> None:
    from gateway.tokens import prompt_tokens

    config = gateway_config(store_url, upstream)
    slow = {**config["models"][0], "name": "slow-ok", "model": "openai/fake-slow",
            "transport": "openai_http", "timeout_s": 30, "tier": None}  # fmt: skip
    config["models"].append(slow)
    async with in_process_gateway(config) as gw:
        reserved, response = await reserved_during_a_slow_call(gw)
    assert response.status_code == 200
    p90 = int(response.headers["x-rightsize-token-budget"].split("/")[1])
    # The prompt as the routing decision counted it: one count per request serves both.
    assert reserved == prompt_tokens(MESSAGES) + p90


async def test_past_the_soft_budget_share_auto_requests_are_capped_at_the_cheaper_tier(
    store_url: str, upstream: RunningUpstream
) -> None:
    config = gateway_config(
        store_url,
        upstream,
        policy={
            "tiers": [
                {"name": "light", "deployments": ["small"]},
                {"name": "standard", "deployments": ["direct"], "min_demand": 0.0001},
            ],
            "soft_budget": {"threshold": 0.5, "cap_tier": "light"},
        },
    )
    async with in_process_gateway(config) as gw:
        await set_budget(gw, team="search", period="monthly", limit_usd="0.0001")
        first = await chat(gw, model="auto")
        assert first.headers["x-rightsize-model"] == "direct"  # 53.9% of the budget
        second = await chat(gw, model="auto")
        assert second.status_code == 200
        assert second.headers["x-rightsize-model"] == "small"
        row = await gw.admin.spend(second.headers["x-request-id"])
    assert "soft budget: 54% used >= 50%, capped at 'light'" in row["route_reason"]


async def test_a_soft_mode_budget_past_its_percent_caps_auto_at_the_cheapest_tier(
    store_url: str, upstream: RunningUpstream
) -> None:
    # No soft_budget section in the policy: the budget's own mode: soft does the capping.
    tiers = [
        {"name": "light", "deployments": ["small"]},
        {"name": "standard", "deployments": ["direct"], "min_demand": 0.0001},
    ]
    config = gateway_config(store_url, upstream, policy={"tiers": tiers})
    async with in_process_gateway(config) as gw:
        await set_budget(
            gw,
            team="search",
            period="monthly",
            limit_usd="0.0001",
            mode="soft",
            soft_at_percent=50,
        )
        first = await chat(gw, model="auto")
        assert first.headers["x-rightsize-model"] == "direct"  # 53.9% of the budget
        second = await chat(gw, model="auto")
        assert second.status_code == 200
        assert second.headers["x-rightsize-model"] == "small"
        assert second.headers["x-rightsize-tier"] == "light"
        row = await gw.admin.spend(second.headers["x-request-id"])
    assert (
        "soft budget: team:search:monthly past its soft_at_percent, capped at 'light'"
        in (row["route_reason"])
    )


async def test_prompt_cache_hits_count_against_the_requests_per_minute_limit(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="minute", limit_requests=2)
        first = await chat(gw, temperature=0)
        second = await chat(gw, temperature=0)
        third = await chat(gw, temperature=0)
        [minute] = await usage(gw)
    assert first.headers["x-rightsize-cache"] == "miss"
    assert second.headers["x-rightsize-cache"] == "hit"
    assert third.status_code == 429
    assert third.json()["error"]["code"] in {"rate_limit_exceeded", "budget_exceeded"}
    assert int(minute["spent_requests"]) == 2
    assert int(minute["spent_tokens"]) == 28, "the hit used no upstream tokens"


async def test_sequential_requests_spend_a_small_daily_budget_to_within_one_request(
    store_url: str, upstream: RunningUpstream
) -> None:
    # No max_tokens: each request holds the router's p90 prediction, over ten times what the
    # fake's answer costs; before the last stretch was lent, this budget refused even the
    # first request, with all of it left.
    limit = COST * Decimal("10.5")
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        await set_budget(gw, team="search", period="daily", limit_usd=str(limit))
        statuses = []
        while len(statuses) < 40 and 429 not in statuses:
            response = await chat(gw, max_tokens=None)
            statuses.append(response.status_code)
        [daily] = await usage(gw)
    assert statuses == [200] * 11 + [429]
    spent = Decimal(daily["spent_usd"])
    assert limit <= spent < limit + COST, spent
    assert Decimal(daily["reserved_usd"]) == 0
    assert await logged_cost(store_url) == spent
