"""The ledger on both counter backends (SQLite BEGIN IMMEDIATE, Redis Lua), under a frozen clock."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gateway.store import SpendRecord, Store
from ledger.budgets import Amounts, Budget
from ledger.errors import BudgetExceeded
from ledger.ledger import Ledger
from ledger.periods import Period
from tests.ledger_support import FrozenClock, at, open_ledger, redis_prefix

__all__ = ["redis_prefix"]

USD = Decimal("0.000001")  # one micro-dollar: requests below cost a few of them
PICO_PER_MICRO = 10**6


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(at("2026-03-10T12:00:00-04:00"))


@pytest.fixture
async def ledger(
    backend: str, tmp_path: Path, clock: FrozenClock, request: pytest.FixtureRequest
) -> AsyncIterator[Ledger]:
    prefix = request.getfixturevalue("redis_prefix") if backend == "redis" else None
    async with open_ledger(
        backend, tmp_path, prefix, clock, timezone="America/New_York", reservation_ttl_s=30
    ) as built:
        yield built


async def put(ledger: Ledger, **fields: Any) -> Budget:
    budget = Budget(**{"scope": "team", "subject": "search", **fields})
    await ledger.budgets.put(budget)
    ledger.forget_budgets()
    return budget


def micro(n: int) -> Amounts:
    return Amounts(picousd=n * PICO_PER_MICRO, tokens=10 * n, requests=1)


async def log_spend(store_engine: Any, team: str, cost: Decimal, when: Any) -> None:
    store = Store(store_engine)
    record = SpendRecord(
        request_id="r", created_at=when, status=200, team=team, key_id="key_a", deployment="m"
    )
    record.cost_usd, record.prompt_tokens, record.completion_tokens = cost, 3, 4
    await store.insert_spend([record])


async def test_a_team_without_budgets_holds_nothing(ledger: Ledger) -> None:
    assert await ledger.reserve("search", "key_a", micro(5)) is None


async def test_a_hold_is_reserved_then_settled_into_spent(ledger: Ledger) -> None:
    budget = await put(ledger, period=Period.DAILY, limit_usd=100 * USD)
    hold = await ledger.reserve("search", "key_a", micro(10))
    assert hold is not None
    [usage] = await ledger.usage([budget])
    assert (usage.spent, usage.reserved) == (Amounts(), micro(10))
    await ledger.settle(hold, micro(7))
    [usage] = await ledger.usage([budget])
    assert (usage.spent, usage.reserved) == (micro(7), Amounts())


async def test_a_settlement_sent_is_counted_by_the_next_read_before_its_reply_is_awaited(
    ledger: Ledger,
) -> None:
    """Ledger.settle_sent returns with the settlement under way (its command sent); whatever
    this process asks the counters next sees it, on both backends that apply calls in order."""
    budget = await put(ledger, period=Period.DAILY, limit_usd=100 * USD)
    holds = [await ledger.reserve("search", "key_a", micro(10)) for _ in range(3)]
    pending = []
    for hold in holds:
        assert hold is not None
        pending.append(await ledger.settle_sent(ledger.settle(hold, micro(7))))
    # The last one at least is still under way: it returned in the loop turn its command went
    # out, before any reply was read (an earlier one's reply may have been read meanwhile).
    assert all(p is not None for p in pending) and not pending[-1].done()  # type: ignore[union-attr]
    [usage] = await ledger.usage([budget])  # queued behind the three settlements
    assert (usage.spent, usage.reserved) == (Amounts(21 * PICO_PER_MICRO, 210, 3), Amounts())
    await asyncio.gather(*pending)  # type: ignore[arg-type]


async def test_shutdown_waits_for_the_settlements_still_under_way(
    tmp_path: Path, clock: FrozenClock, backend: str, request: pytest.FixtureRequest
) -> None:
    prefix = request.getfixturevalue("redis_prefix") if backend == "redis" else None
    async with open_ledger(backend, tmp_path, prefix, clock) as first:
        budget = await put(first, period=Period.DAILY, limit_usd=100 * USD)
        hold = await first.reserve("search", "key_a", micro(10))
        assert hold is not None
        pending = await first.settle_sent(first.settle(hold, micro(7)))
        assert pending is not None
    assert pending.done()  # type: ignore[attr-defined]
    async with open_ledger(backend, tmp_path, prefix, clock) as second:
        [usage] = await second.usage([budget])
        assert (usage.spent, usage.reserved) == (micro(7), Amounts())


async def test_a_hold_that_does_not_fit_is_refused_naming_the_budget(ledger: Ledger) -> None:
    await put(ledger, period=Period.DAILY, limit_usd=25 * USD)
    first = await ledger.reserve("search", "key_a", micro(10))
    assert first is not None
    await ledger.settle(first, micro(10))
    await ledger.reserve("search", "key_a", micro(10))
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(10))
    error = refused.value
    assert error.status == 429 and error.code == "budget_exceeded"
    detail = error.body()["error"]["budget"]
    assert detail["team"] == "search" and detail["period"] == "daily"
    assert detail["limit_usd"] == "0.000025"
    assert (detail["spent_usd"], detail["reserved_usd"]) == ("0.00001", "0.00001")
    assert detail["remaining_usd"] == "0.000005"
    # 12:00 EDT to the next local midnight is 12 hours.
    assert error.headers() == {"retry-after": str(12 * 3600), "x-should-retry": "false"}
    assert error.message.startswith("Daily budget exceeded for team 'search'")
    assert "resets at 2026-03-11T00:00:00-04:00" in error.message


async def test_a_failed_request_releases_its_whole_hold(ledger: Ledger) -> None:
    budget = await put(ledger, period=Period.MONTHLY, limit_usd=10 * USD)
    hold = await ledger.reserve("search", "key_a", micro(10))
    assert hold is not None
    await ledger.settle(hold, Amounts(requests=1))
    [usage] = await ledger.usage([budget])
    assert usage.spent == Amounts(requests=1) and usage.reserved == Amounts()
    assert await ledger.reserve("search", "key_a", micro(10)) is not None


async def test_an_unsettled_hold_expires_after_its_ttl(ledger: Ledger, clock: FrozenClock) -> None:
    budget = await put(ledger, period=Period.TOTAL, limit_usd=10 * USD)
    assert await ledger.reserve("search", "key_a", micro(10)) is not None
    with pytest.raises(BudgetExceeded):
        await ledger.reserve("search", "key_a", micro(1))
    clock.advance(seconds=31)
    [usage] = await ledger.usage([budget])
    assert usage.reserved == Amounts()
    assert await ledger.reserve("search", "key_a", micro(10)) is not None


async def test_settling_after_the_hold_expired_still_charges_the_spend(
    ledger: Ledger, clock: FrozenClock
) -> None:
    budget = await put(ledger, period=Period.TOTAL, limit_usd=100 * USD)
    hold = await ledger.reserve("search", "key_a", micro(10))
    assert hold is not None
    clock.advance(seconds=60)
    await ledger.reserve("search", "key_a", micro(1))  # purges the expired hold
    await ledger.settle(hold, micro(8))
    [usage] = await ledger.usage([budget])
    assert usage.spent == micro(8) and usage.reserved == micro(1)


async def test_a_free_hold_settles_and_expires_like_any_other(
    ledger: Ledger, clock: FrozenClock
) -> None:
    """A cache hit's hold is 0 dollars, 0 tokens and 1 request: its settlement moves the request
    from reserved to spent, and left to expire it is purged by the next reserve (on Redis, a
    decrement by '-0' is no integer: it failed both)."""
    budget = await put(ledger, period=Period.MONTHLY, limit_usd=10 * USD)
    hit = await ledger.reserve("search", "key_a", Amounts(0, 0, 1))
    assert hit is not None
    await ledger.settle(hit, Amounts(0, 0, 1))
    [usage] = await ledger.usage([budget])
    assert usage.spent == Amounts(0, 0, 1) and usage.reserved == Amounts()
    assert await ledger.reserve("search", "key_a", Amounts(0, 0, 1)) is not None  # unsettled
    clock.advance(seconds=31)
    assert await ledger.reserve("search", "key_a", micro(1)) is not None  # purges it
    [usage] = await ledger.usage([budget])
    assert usage.spent == Amounts(0, 0, 1) and usage.reserved == micro(1)


async def test_a_key_budget_and_its_team_budget_both_bind(ledger: Ledger) -> None:
    await put(ledger, period=Period.DAILY, limit_usd=100 * USD)
    await put(ledger, scope="key", subject="key_a", period=Period.DAILY, limit_usd=5 * USD)
    first = await ledger.reserve("search", "key_a", micro(10))
    assert first is not None and first.amounts.picousd == 5 * PICO_PER_MICRO  # the key's rest
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(10))
    assert refused.value.detail["key_id"] == "key_a"
    assert await ledger.reserve("search", "key_b", micro(10)) is not None


async def test_a_token_budget_refuses_by_tokens(ledger: Ledger) -> None:
    await put(ledger, period=Period.WEEKLY, limit_tokens=150)
    assert await ledger.reserve("search", "key_a", micro(10)) is not None  # 100 tokens
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(10))
    assert refused.value.detail["exceeded"] == "tokens"


async def test_a_requests_per_minute_limit_answers_rate_limit_until_the_next_minute(
    ledger: Ledger, clock: FrozenClock
) -> None:
    await put(ledger, period=Period.MINUTE, limit_requests=2)
    clock.advance(seconds=45)
    for _ in range(2):
        assert await ledger.reserve("search", "key_a", micro(1)) is not None
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(1))
    assert refused.value.code == "rate_limit_exceeded"
    assert refused.value.type == "rate_limit_error"
    assert refused.value.headers() == {"retry-after": "15"}
    clock.advance(seconds=15)
    assert await ledger.reserve("search", "key_a", micro(1)) is not None


async def test_daily_budget_rolls_over_at_local_midnight(
    ledger: Ledger, clock: FrozenClock
) -> None:
    clock.now = at("2026-03-10T23:59:59-04:00")
    await put(ledger, period=Period.DAILY, limit_usd=10 * USD)
    hold = await ledger.reserve("search", "key_a", micro(10))
    assert hold is not None
    await ledger.settle(hold, micro(10))
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(1))
    assert refused.value.headers() == {"retry-after": "1", "x-should-retry": "false"}
    # Midnight in New York is 04:00 UTC: the UTC day has not changed, the budget's day has.
    clock.now = at("2026-03-11T00:00:00-04:00")
    assert await ledger.reserve("search", "key_a", micro(10)) is not None


async def test_daily_budget_on_the_dst_day_lasts_23_hours(
    ledger: Ledger, clock: FrozenClock
) -> None:
    clock.now = at("2026-03-08T00:30:00-05:00")  # clocks go forward at 02:00 that day
    await put(ledger, period=Period.DAILY, limit_usd=10 * USD)
    await ledger.reserve("search", "key_a", micro(10))
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(1))
    assert refused.value.headers() == {
        "retry-after": str(22 * 3600 + 1800),
        "x-should-retry": "false",
    }


async def test_monthly_budget_rolls_over_on_the_first_in_local_time(
    ledger: Ledger, clock: FrozenClock
) -> None:
    clock.now = at("2026-03-31T23:00:00-04:00")  # already April 1st in UTC
    budget = await put(ledger, period=Period.MONTHLY, limit_usd=10 * USD)
    hold = await ledger.reserve("search", "key_a", micro(10))
    assert hold is not None
    await ledger.settle(hold, micro(10))
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(1))
    assert refused.value.detail["window"] == "2026-03"
    assert refused.value.headers() == {"retry-after": "3600", "x-should-retry": "false"}
    clock.advance(hours=1)
    [usage] = await ledger.usage([budget])
    assert usage.window.label == "2026-04" and usage.spent == Amounts()
    assert await ledger.reserve("search", "key_a", micro(10)) is not None


async def test_a_budget_created_mid_period_counts_spend_already_in_the_log(
    ledger: Ledger, clock: FrozenClock
) -> None:
    await log_spend(ledger.budgets.engine, "search", Decimal("0.000008"), at("2026-03-10T01:00Z"))
    await log_spend(ledger.budgets.engine, "search", Decimal("0.000005"), at("2026-03-01T03:00Z"))
    await log_spend(ledger.budgets.engine, "ads", Decimal("0.000005"), at("2026-03-10T03:00Z"))
    # 2026-03-01T03:00Z is still February 28th in New York: not this month.
    budget = await put(ledger, period=Period.MONTHLY, limit_usd=10 * USD)
    [usage] = await ledger.usage([budget])
    assert usage.spent == Amounts(picousd=8 * PICO_PER_MICRO, tokens=7, requests=1)
    last = await ledger.reserve("search", "key_a", micro(3))
    assert last is not None and last.amounts.picousd == 2 * PICO_PER_MICRO  # 10 - 8 logged
    with pytest.raises(BudgetExceeded):
        await ledger.reserve("search", "key_a", micro(3))


async def test_a_soft_budget_past_its_threshold_is_reported_for_the_policy(
    ledger: Ledger,
) -> None:
    await put(ledger, period=Period.DAILY, limit_usd=20 * USD, mode="soft", soft_at_percent=50)
    first = await ledger.reserve("search", "key_a", micro(5))
    assert first is not None and not first.state.degrade
    second = await ledger.reserve("search", "key_a", micro(5))
    assert second is not None and second.state.soft_exceeded == ("team:search:daily",)


async def test_crossing_an_alert_threshold_logs_one_event(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    await put(ledger, period=Period.DAILY, limit_usd=20 * USD, alert_percents=(50, 90))
    caplog.set_level(logging.WARNING, logger="rightsize.ledger")
    for cost in (6, 6, 1):
        hold = await ledger.reserve("search", "key_a", micro(cost))
        assert hold is not None
        await ledger.settle(hold, micro(cost))
    alerts = [r.getMessage() for r in caplog.records if "budget alert" in r.getMessage()]
    assert len(alerts) == 1 and "'percent': 50" in alerts[0]


async def test_the_policy_can_read_soft_budget_state_before_deciding(ledger: Ledger) -> None:
    await put(ledger, period=Period.DAILY, limit_usd=20 * USD, mode="soft", soft_at_percent=50)
    assert not (await ledger.budget_state("search", "key_a")).degrade
    hold = await ledger.reserve("search", "key_a", micro(10))
    assert hold is not None
    assert (await ledger.budget_state("search", "key_a")).soft_exceeded == ("team:search:daily",)


async def test_an_alert_is_posted_to_the_webhook(
    tmp_path: Path, clock: FrozenClock, respx_mock: Any
) -> None:
    route = respx_mock.post("http://hooks.test/budget").respond(204)
    async with open_ledger(
        "sqlite", tmp_path, None, clock, alert_webhook_url="http://hooks.test/budget"
    ) as ledger:
        await put(ledger, period=Period.MONTHLY, limit_usd=10 * USD, alert_percents=(80,))
        hold = await ledger.reserve("search", "key_a", micro(9))
        assert hold is not None
        await ledger.settle(hold, micro(9))
    assert route.call_count == 1
    event = route.calls[0].request.read()
    assert b'"budget":"team:search:monthly"' in event and b'"percent":80' in event


async def test_budget_used_is_the_largest_share_of_any_limit(ledger: Ledger) -> None:
    assert await ledger.budget_used("search", "key_a") is None
    await put(ledger, period=Period.DAILY, limit_usd=40 * USD)
    await put(ledger, scope="key", subject="key_a", period=Period.MONTHLY, limit_tokens=200)
    await ledger.reserve("search", "key_a", micro(10))  # 1/4 of the USD, 1/2 of the tokens
    assert await ledger.budget_used("search", "key_a") == 0.5


# The last stretch of a budget (docs/budgets.md, "How much a request holds")


async def test_sequential_requests_use_the_budget_to_within_one_request_of_its_limit(
    ledger: Ledger,
) -> None:
    # Each request holds 10 (its predicted cost) and costs 3: without the last stretch, the
    # budget of 25 would refuse the eighth request with 4 of it left.
    budget = await put(ledger, period=Period.DAILY, limit_usd=25 * USD)
    admitted = 0
    while True:
        try:
            hold = await ledger.reserve("search", "key_a", micro(10))
        except BudgetExceeded:
            break
        assert hold is not None
        await ledger.settle(hold, micro(3))
        admitted += 1
    [usage] = await ledger.usage([budget])
    limit = 25 * PICO_PER_MICRO
    assert admitted == 9
    assert limit <= usage.spent.picousd < limit + 3 * PICO_PER_MICRO
    assert usage.reserved == Amounts()


async def test_the_last_stretch_is_not_lent_while_another_hold_is_in_flight(
    ledger: Ledger,
) -> None:
    budget = await put(ledger, period=Period.DAILY, limit_usd=25 * USD)
    in_flight = [await ledger.reserve("search", "key_a", micro(10)) for _ in range(2)]
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(10))
    # The refusal names what the request asked for, not the stretch it was denied.
    assert refused.value.detail["remaining_usd"] == "0.000005"
    for hold in in_flight:
        assert hold is not None
        await ledger.settle(hold, micro(10))
    last = await ledger.reserve("search", "key_a", micro(10))
    assert last is not None and last.amounts == Amounts(5 * PICO_PER_MICRO, 100, 1)
    [usage] = await ledger.usage([budget])
    assert usage.spent.picousd + usage.reserved.picousd == 25 * PICO_PER_MICRO
    with pytest.raises(BudgetExceeded):
        await ledger.reserve("search", "key_a", micro(1))


async def test_a_token_budget_lends_its_last_tokens_too(ledger: Ledger) -> None:
    await put(ledger, period=Period.WEEKLY, limit_tokens=150)
    first = await ledger.reserve("search", "key_a", micro(10))  # 100 tokens
    assert first is not None
    await ledger.settle(first, micro(10))
    last = await ledger.reserve("search", "key_a", micro(10))
    assert last is not None and last.amounts.tokens == 50
    assert last.amounts.picousd == 10 * PICO_PER_MICRO  # no USD limit: not cut


async def test_a_request_limit_is_never_stretched(ledger: Ledger) -> None:
    await put(ledger, period=Period.DAILY, limit_requests=1, limit_usd=100 * USD)
    first = await ledger.reserve("search", "key_a", micro(10))
    assert first is not None
    await ledger.settle(first, micro(1))
    with pytest.raises(BudgetExceeded) as refused:
        await ledger.reserve("search", "key_a", micro(1))
    assert refused.value.detail["exceeded"] == "requests"


def test_a_hold_is_the_smaller_of_the_max_tokens_and_the_predicted_p90() -> None:
    from ledger.ledger import output_token_bound

    def bound(predicted: int | None, max_tokens: int | None) -> int:
        return output_token_bound(
            predicted=predicted,
            max_tokens=max_tokens,
            context_window=8000,
            prompt_tokens=7000,
            default_cap=4096,
        )

    assert bound(420, 1000) == 420
    assert bound(420, 100) == 100
    assert bound(420, None) == 420
    assert bound(None, 1000) == 1000
    assert bound(None, None) == 1000  # the default cap, within what the context window leaves


async def test_a_clean_shutdown_releases_the_holds_its_requests_never_settled(
    backend: str, tmp_path: Path, clock: FrozenClock, request: pytest.FixtureRequest
) -> None:
    prefix = request.getfixturevalue("redis_prefix") if backend == "redis" else None
    async with open_ledger(backend, tmp_path, prefix, clock, reservation_ttl_s=3600) as stopping:
        stopping.start()  # its heartbeat: a process that shuts down retires it
        budget = await put(stopping, period=Period.TOTAL, limit_usd=100 * USD)
        assert await stopping.reserve("search", "key_a", micro(10)) is not None  # cancelled
        [usage] = await stopping.usage([budget])
        assert usage.reserved == micro(10)
    # Its aclose (the lifespan's end) released the hold at once, not after the hour's TTL.
    async with open_ledger(backend, tmp_path, prefix, clock, reservation_ttl_s=3600) as other:
        [usage] = await other.usage([budget])
        assert usage.reserved == Amounts()


async def test_requests_in_flight_when_the_budget_cache_lapses_share_one_store_read(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    budget = await put(ledger, period=Period.MONTHLY, limit_usd=100 * USD)
    reads = 0
    for_request = ledger.budgets.for_request

    async def counted(team: str, key_id: str) -> list[Budget]:
        nonlocal reads
        reads += 1
        return await for_request(team, key_id)

    monkeypatch.setattr(ledger.budgets, "for_request", counted)
    found = await asyncio.gather(*(ledger.budgets_for("search", "k1") for _ in range(32)))
    assert all(f == [budget] for f in found)
    assert reads == 1
    await ledger.budgets_for("search", "k1")  # cached, as before
    assert reads == 1
