"""The shadow-judged outcomes table (revision 0009) on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gateway.store import OutcomeRecord, Store
from tests.migrate import migrate_to, tables

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def outcome(request_id: str, team: str, at: datetime, **fields: object) -> OutcomeRecord:
    values: dict[str, object] = {
        "request_id": request_id,
        "created_at": at,
        "prompt_hash": "ab" * 32,
        "served": "light",
        "light_tier": "light",
        "strong_tier": "strong",
        "team": team,
    }
    values.update(fields)
    return OutcomeRecord(**values)  # type: ignore[arg-type]


async def test_outcomes_are_written_once_and_read_back_exactly_per_team_and_period(
    store_url: str,
) -> None:
    store = Store.connect(store_url)
    await store.migrate()
    full = outcome(
        "r1",
        "search",
        T0,
        prompt_text="why is the sky blue?",
        reasoning_demand=0.625,
        category="reasoning",
        router_artifact="a" * 32,
        light_deployment="small",
        strong_deployment="big",
        light_completion_tokens=12,
        strong_completion_tokens=340,
        verdict="strong",
        judge_deployment="judge",
        shadow_cost_usd=Decimal("0.000123456789"),
        judge_cost_usd=Decimal("0.000000000001"),
    )
    failed = outcome("r2", "search", T0 + timedelta(hours=1), error="judge: 502 from judge")
    other = outcome("r3", "ads", T0 + timedelta(hours=2), verdict="tie")
    try:
        await store.insert_outcomes([full, failed, other])
        await store.insert_outcomes([full])  # a replay writes nothing twice
        everyone = await store.outcomes()
        search = await store.outcomes(team="search")
        later = await store.outcomes(since=T0 + timedelta(minutes=30))
        window = await store.outcomes(since=T0, until=T0 + timedelta(hours=1))
    finally:
        await store.aclose()
    assert [o.request_id for o in everyone] == ["r1", "r2", "r3"]
    assert search[0] == full  # every field, the money exactly
    assert search[1].verdict is None and search[1].error == "judge: 502 from judge"
    assert [o.request_id for o in search] == ["r1", "r2"]
    assert [o.request_id for o in later] == ["r2", "r3"]
    assert [o.request_id for o in window] == ["r1"]


async def test_revision_0009_creates_the_outcomes_table_and_goes_back(store_url: str) -> None:
    store = Store.connect(store_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(migrate_to("0009"))
            assert "router_outcomes" in await conn.run_sync(tables)
            await conn.run_sync(migrate_to("0008", down=True))
            assert "router_outcomes" not in await conn.run_sync(tables)
            assert "spend_log" in await conn.run_sync(tables)
            await conn.run_sync(migrate_to("head"))
            assert "router_outcomes" in await conn.run_sync(tables)
    finally:
        await store.aclose()


async def test_a_deleted_teams_outcomes_are_archived_with_its_spend_rows(store_url: str) -> None:
    store = Store.connect(store_url)
    await store.migrate()
    try:
        await store.create_team("search")
        await store.insert_outcomes([outcome("r1", "search", T0), outcome("r2", "ads", T0)])
        archived = await store.delete_team("search")
        await store.create_team("search")  # the name again: a new team, no judged history
        mine = await store.outcomes(team="search")
        theirs = await store.outcomes(team=archived.id)
        others = await store.outcomes(team="ads")
    finally:
        await store.aclose()
    assert mine == []
    assert [o.request_id for o in theirs] == ["r1"]
    assert [o.request_id for o in others] == ["r2"]
