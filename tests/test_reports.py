"""Cost and savings reports equal the spend log, row for row, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import itertools
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from gateway.store import SpendRecord, Store
from ledger.reports import (
    GROUPINGS,
    cost_report,
    offset_segments,
    routing_report,
    savings_report,
    to_csv,
)
from policies import Capabilities, Deployment, TokenPrice
from tests.conftest import gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream

ZONE = ZoneInfo("America/New_York")
START, END = date(2026, 3, 6), date(2026, 3, 10)  # clocks go forward on March 8th
ODD_MODEL = 'weird,"model"\nname'
FIELDS = {"team": "team", "key": "key_id", "model": "deployment", "tier": "tier"}
FIELDS["requested_model"] = "requested_model"


def spend_rows(n: int = 400) -> list[SpendRecord]:
    rng = random.Random(5)
    first = datetime(2026, 3, 5, 20, tzinfo=UTC)
    rows = []
    for i in range(n):
        record = SpendRecord(
            request_id=f"r{i}",
            created_at=first + timedelta(minutes=rng.randrange(0, 7 * 24 * 60)),
            status=200,
            team=rng.choice(["search", "ads", "mail"]),
            key_id=rng.choice(["key_a", "key_b"]),
            requested_model=rng.choice(["auto", "light", ODD_MODEL]),
            deployment=rng.choice(["small", "direct", None]),
            tier=rng.choice(["light", "standard", None]),
        )
        record.prompt_tokens = rng.randrange(1, 5000)
        record.cached_tokens = rng.randrange(0, record.prompt_tokens)
        record.completion_tokens = rng.randrange(0, 2000)
        record.cost_usd = Decimal(rng.randrange(0, 10**9)) / Decimal(10**12)
        rows.append(record)
    return rows


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[tuple[Store, list[SpendRecord]]]:
    store = Store.connect(store_url)
    await store.migrate()
    rows = spend_rows()
    await store.insert_spend(rows)
    try:
        yield store, rows
    finally:
        await store.aclose()


def in_range(record: SpendRecord) -> bool:
    return START <= record.created_at.astimezone(ZONE).date() <= END


def group_key(record: SpendRecord, groups: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(
        record.created_at.astimezone(ZONE).date().isoformat()
        if g == "day"
        else getattr(record, FIELDS[g])
        for g in groups
    )


def expected(rows: list[SpendRecord], groups: tuple[str, ...]) -> dict[tuple[Any, ...], Decimal]:
    totals: dict[tuple[Any, ...], Decimal] = {}
    for record in filter(in_range, rows):
        key = group_key(record, groups)
        totals[key] = totals.get(key, Decimal(0)) + record.cost_usd
    return totals


GROUP_SETS = [combo for size in (1, 2, 6) for combo in itertools.combinations(GROUPINGS, size)]


async def test_report_totals_equal_the_spend_log_for_every_grouping(
    store: tuple[Store, list[SpendRecord]],
) -> None:
    engine, rows = store[0].engine, store[1]
    for groups in GROUP_SETS:
        report = await cost_report(engine, ZONE, START, END, groups)
        got = {tuple(r[g] for g in groups): Decimal(r["cost_usd"]) for r in report["rows"]}
        assert got == expected(rows, groups), groups
        assert Decimal(report["totals"]["cost_usd"]) == sum(
            (r.cost_usd for r in rows if in_range(r)), Decimal(0)
        )
        assert report["totals"]["requests"] == sum(1 for r in rows if in_range(r))


async def test_days_are_local_calendar_days_across_a_dst_change(
    store: tuple[Store, list[SpendRecord]],
) -> None:
    report = await cost_report(store[0].engine, ZONE, START, END, ("day",))
    days = {r["day"]: r["requests"] for r in report["rows"]}
    assert list(days) == [(START + timedelta(days=i)).isoformat() for i in range(5)]
    for day, count in days.items():
        assert count == sum(
            1 for r in store[1] if r.created_at.astimezone(ZONE).date().isoformat() == day
        )


def test_a_dst_change_splits_the_range_at_the_exact_instant() -> None:
    first = datetime(2026, 3, 8, 5, tzinfo=UTC)
    pieces = offset_segments(ZONE, first, first + timedelta(days=1))
    assert [(p[1], p[2]) for p in pieces] == [
        (datetime(2026, 3, 8, 7, tzinfo=UTC), -5 * 3600),
        (first + timedelta(days=1), -4 * 3600),
    ]


async def test_a_report_for_one_team_counts_only_that_team(
    store: tuple[Store, list[SpendRecord]],
) -> None:
    report = await cost_report(store[0].engine, ZONE, START, END, ("model",), team="ads")
    assert Decimal(report["totals"]["cost_usd"]) == sum(
        (r.cost_usd for r in store[1] if in_range(r) and r.team == "ads"), Decimal(0)
    )


async def test_savings_price_every_request_at_the_reference_model(
    store: tuple[Store, list[SpendRecord]],
) -> None:
    price = TokenPrice(Decimal("0.0000025"), Decimal("0.00001"), Decimal("0.00000125"))
    reference = Deployment(
        "big", "openai/big", None, None, None, "openai_http", 60, price, Capabilities(), False
    )
    report = await savings_report(store[0].engine, ZONE, START, END, reference)
    rows = [r for r in store[1] if in_range(r)]
    counterfactual = sum(
        (
            (r.prompt_tokens - r.cached_tokens) * price.input
            + r.cached_tokens * price.cached_input
            + r.completion_tokens * price.output
            for r in rows
        ),
        Decimal(0),
    )
    actual = sum((r.cost_usd for r in rows), Decimal(0))
    assert Decimal(report["totals"]["reference_cost_usd"]) == counterfactual
    assert Decimal(report["totals"]["savings_usd"]) == counterfactual - actual
    assert "Counterfactual" in report["method"] and report["reference_model"] == "big"
    assert {(r["team"], r["day"]) for r in report["rows"]} == {
        (r.team, r.created_at.astimezone(ZONE).date().isoformat()) for r in rows
    }


def test_csv_follows_rfc_4180_quoting() -> None:
    report = {
        "columns": ["requested_model", "cost_usd"],
        "rows": [
            {"requested_model": ODD_MODEL, "cost_usd": "0.5"},
            {"requested_model": None, "cost_usd": "1"},
        ],
    }
    text = to_csv(report)
    assert text == 'requested_model,cost_usd\r\n"weird,""model""\nname",0.5\r\n,1\r\n'
    assert list(csv.reader(io.StringIO(text, newline=""))) == [
        ["requested_model", "cost_usd"],
        [ODD_MODEL, "0.5"],
        ["", "1"],
    ]


async def test_the_admin_api_serves_the_cost_report_as_csv(
    store_url: str, upstream: RunningUpstream
) -> None:
    config = gateway_config(store_url, upstream, ledger={"timezone": "America/New_York"})
    async with in_process_gateway(config) as gw:
        store = Store.connect(store_url)
        rows = spend_rows(50)
        await store.insert_spend(rows)
        await store.aclose()
        params = {"group_by": "team,requested_model", "start": START.isoformat()}
        params |= {"end": END.isoformat(), "format": "csv"}
        response = await gw.client.get(
            "/admin/reports/costs", params=params, headers=gw.admin.headers
        )
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(response.text, newline="")))
        assert sum(Decimal(r["cost_usd"]) for r in table) == sum(
            (r.cost_usd for r in rows if in_range(r)), Decimal(0)
        )
        assert {r["requested_model"] for r in table} == {"auto", "light", ODD_MODEL}


async def test_a_report_with_an_unknown_grouping_is_a_400(
    store_url: str, upstream: RunningUpstream
) -> None:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        params = {"group_by": "team,colour", "start": "2026-03-01", "end": "2026-03-31"}
        response = await gw.client.get(
            "/admin/reports/costs", params=params, headers=gw.admin.headers
        )
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "group_by"


async def test_routing_report_counts_tiers_cache_hits_and_demand_as_the_spend_log(
    store_url: str,
) -> None:
    rng = random.Random(7)
    rows = spend_rows(200)
    for record in rows:
        record.cache_hit = rng.random() < 0.3
        record.reasoning_demand = rng.choice([None, 0.0, 0.1, 0.55, 0.9, 0.999, 1.0])
    store = Store.connect(store_url)
    await store.migrate()
    await store.insert_spend(rows)
    try:
        report = await routing_report(store.engine, ZONE, START, END)
    finally:
        await store.aclose()
    seen = [r for r in rows if in_range(r)]
    by_tier = {
        r["tier"]: (r["requests"], r["cache_hits"], Decimal(r["cost_usd"])) for r in report["rows"]
    }
    assert by_tier == {
        tier: (
            sum(1 for r in seen if r.tier == tier),
            sum(1 for r in seen if r.tier == tier and r.cache_hit),
            sum((r.cost_usd for r in seen if r.tier == tier), Decimal(0)),
        )
        for tier in {r.tier for r in seen}
    }
    buckets = [b["requests"] for b in report["demand_histogram"]]
    demands = [r.reasoning_demand for r in seen if r.reasoning_demand is not None]
    assert buckets == [sum(1 for d in demands if min(int(d * 10), 9) == i) for i in range(10)]
    hits = sum(1 for r in seen if r.cache_hit)
    assert report["totals"]["cache_hits"] == hits
    assert Decimal(report["totals"]["cache_hit_rate"]) == (
        Decimal(hits * 100) / len(seen)
    ).quantize(Decimal("0.01"))
