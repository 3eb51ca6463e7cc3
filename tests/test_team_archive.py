"""A deleted team is archived under its id; a new team of the same name starts clean.

Each test runs on SQLite and PostgreSQL, with the ledger's counters in the SQL store and in
Redis (issue 17, finding 8).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.store import SpendRecord, Store
from ledger.backend import Claim
from ledger.budgets import Amounts, Budget
from ledger.periods import Period, window_at
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream
from tests.ledger_support import REDIS_URL, FrozenClock, at, open_ledger, redis_prefix

__all__ = ["redis_prefix"]

MESSAGES = [{"role": "user", "content": "Say hello."}]
# "direct" costs (21 * 1.1 + 7 * 4.4) / 1e6 = $0.0000539 per request at the fake's usage.
COST = Decimal("0.0000539")


@pytest.fixture(params=["sql", "redis"])
async def gw(
    request: pytest.FixtureRequest, store_url: str, upstream: RunningUpstream
) -> AsyncIterator[InProcessGateway]:
    """The gateway with team `search` and one of its keys; counters in SQL or in Redis."""
    config = gateway_config(store_url, upstream)
    if request.param == "redis":
        config["store"]["redis_url"] = REDIS_URL
        config["ledger"] = {"redis_prefix": request.getfixturevalue("redis_prefix")}
    async with in_process_gateway(config) as gateway:
        yield gateway


async def admin(gw: InProcessGateway, method: str, url: str, **kwargs: Any) -> Any:
    return await gw.client.request(method, url, headers=gw.admin.headers, **kwargs)


async def chat(gw: InProcessGateway, key: str) -> Any:
    body = {"model": "direct", "messages": MESSAGES, "max_tokens": 7}
    headers = {"authorization": f"Bearer {key}"}
    return await gw.client.post("/v1/chat/completions", json=body, headers=headers)


async def spend_three_requests_then_delete(gw: InProcessGateway) -> str:
    """Team `search` with a monthly budget spends 3 requests and is deleted; its archived id."""
    put = {"team": "search", "period": "monthly", "limit_usd": "1"}
    assert (await admin(gw, "PUT", "/admin/budgets", json=put)).status_code == 200
    for _ in range(3):
        response = await chat(gw, gw.key)
        assert response.status_code == 200, response.text
    await gw.admin.spend(response.headers["x-request-id"])  # the spend log has caught up
    deleted = await admin(gw, "DELETE", "/admin/teams/search")
    assert deleted.status_code == 200, deleted.text
    return str(deleted.json().get("archived_id"))


async def recreate(gw: InProcessGateway) -> str:
    """Team `search` again, with a new key (its secret)."""
    await gw.admin.team("search")
    return str((await gw.admin.key("search"))["key"])


async def cost_report(gw: InProcessGateway, team: str) -> dict[str, Any]:
    today = datetime.now(UTC).date()
    params = {
        "start": (today - timedelta(days=1)).isoformat(),
        "end": (today + timedelta(days=1)).isoformat(),
        "group_by": "team",
        "team": team,
    }
    response = await admin(gw, "GET", "/admin/reports/costs", params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_a_team_created_again_under_a_deleted_name_has_no_budget(
    gw: InProcessGateway,
) -> None:
    await spend_three_requests_then_delete(gw)
    await recreate(gw)
    listed = await admin(gw, "GET", "/admin/budgets", params={"team": "search"})
    assert listed.json()["data"] == []
    usage = await admin(gw, "GET", "/admin/teams/search/usage")
    assert usage.status_code == 200 and usage.json()["data"] == []


async def test_a_new_budget_of_a_recreated_team_starts_at_zero_spent(
    gw: InProcessGateway,
) -> None:
    await spend_three_requests_then_delete(gw)
    key = await recreate(gw)
    put = {"team": "search", "period": "monthly", "limit_usd": "1"}
    assert (await admin(gw, "PUT", "/admin/budgets", json=put)).status_code == 200
    [fresh] = (await admin(gw, "GET", "/admin/teams/search/usage")).json()["data"]
    assert (fresh["spent_usd"], fresh["spent_requests"], fresh["reserved_usd"]) == ("0", 0, "0")
    assert (await chat(gw, key)).status_code == 200
    [after] = (await admin(gw, "GET", "/admin/teams/search/usage")).json()["data"]
    assert (after["spent_usd"], after["spent_requests"]) == (str(COST), 1)


async def test_a_counter_the_old_team_left_after_its_deletion_is_dropped_when_the_name_returns(
    gw: InProcessGateway,
) -> None:
    await spend_three_requests_then_delete(gw)
    # A worker still holding the old team's budget in its cache rebuilds the old counter after
    # the deletion dropped it.
    ledger = gw.app.state.gateway.ledger
    window = window_at(Period.MONTHLY, ledger.clock(), ledger.zone)
    stale = Budget("team", "search", Period.MONTHLY, limit_usd=Decimal(1)).counter(window)
    await ledger.counters.initialize(Claim(stale, None, None, None, None), Amounts(999, 9, 9), 0)
    await recreate(gw)
    put = {"team": "search", "period": "monthly", "limit_usd": "1"}
    assert (await admin(gw, "PUT", "/admin/budgets", json=put)).status_code == 200
    [fresh] = (await admin(gw, "GET", "/admin/teams/search/usage")).json()["data"]
    assert (fresh["spent_usd"], fresh["spent_requests"]) == ("0", 0)


def late_row(team: str) -> SpendRecord:
    """A spend row of `team` as the batched writer flushes it after the team's deletion."""
    return SpendRecord(
        request_id="late",
        created_at=datetime.now(UTC),
        status=200,
        team=team,
        key_id="key_gone",
        deployment="direct",
        cost_usd=COST,
    )


async def test_a_row_the_deleted_team_logs_after_its_deletion_goes_to_its_archive(
    gw: InProcessGateway,
) -> None:
    archived_id = await spend_three_requests_then_delete(gw)
    await gw.app.state.gateway.store.insert_spend([late_row("search")])
    await recreate(gw)
    assert (await cost_report(gw, "search"))["rows"] == []
    [archived] = (await cost_report(gw, archived_id))["rows"]
    assert (archived["requests"], archived["cost_usd"]) == (4, str(COST * 4))


async def test_a_team_deleted_before_deletions_archived_is_archived_when_its_name_returns(
    gw: InProcessGateway,
) -> None:
    # What a deletion left before revision 0006: rows and a budget under the bare name.
    state = gw.app.state.gateway
    await state.store.insert_spend([late_row("ads")])
    await state.ledger.budgets.put(Budget("team", "ads", Period.MONTHLY, limit_usd=Decimal(1)))
    await gw.admin.team("ads")
    listed = await admin(gw, "GET", "/admin/budgets", params={"team": "ads"})
    assert listed.json()["data"] == []
    assert (await cost_report(gw, "ads"))["rows"] == []
    archived = (await admin(gw, "GET", "/admin/teams", params={"archived": "true"})).json()
    [(archived_id, name)] = [(t["id"], t["name"]) for t in archived["data"]]
    assert name == "ads" and archived_id.startswith("ads~")
    [row] = (await cost_report(gw, archived_id))["rows"]
    assert (row["requests"], row["cost_usd"]) == (1, str(COST))
    kept = await admin(gw, "GET", f"/admin/budgets/team:{archived_id}:monthly")
    assert kept.status_code == 200


async def test_the_report_of_a_recreated_team_holds_only_its_own_requests(
    gw: InProcessGateway,
) -> None:
    await spend_three_requests_then_delete(gw)
    key = await recreate(gw)
    assert (await cost_report(gw, "search"))["rows"] == []
    response = await chat(gw, key)
    await gw.admin.spend(response.headers["x-request-id"])
    report = await cost_report(gw, "search")
    assert [(r["team"], r["requests"], r["cost_usd"]) for r in report["rows"]] == [
        ("search", 1, str(COST))
    ]


async def test_the_report_for_the_archived_id_shows_the_deleted_teams_rows_and_cost(
    gw: InProcessGateway,
) -> None:
    archived_id = await spend_three_requests_then_delete(gw)
    await recreate(gw)
    report = await cost_report(gw, archived_id)
    assert [(r["team"], r["requests"], r["cost_usd"]) for r in report["rows"]] == [
        (archived_id, 3, str(COST * 3))
    ]


async def test_deleted_teams_are_listed_by_their_archived_id(gw: InProcessGateway) -> None:
    archived_id = await spend_three_requests_then_delete(gw)
    await recreate(gw)
    assert archived_id.startswith("search~")
    live = (await admin(gw, "GET", "/admin/teams")).json()["data"]
    archived = (await admin(gw, "GET", "/admin/teams", params={"archived": "true"})).json()
    assert [t["name"] for t in live] == ["search"]
    assert [(t["id"], t["name"]) for t in archived["data"]] == [(archived_id, "search")]
    assert archived["data"][0]["deleted_at"] >= archived["data"][0]["created_at"]


async def test_an_archived_teams_budgets_are_read_only_history(gw: InProcessGateway) -> None:
    archived_id = await spend_three_requests_then_delete(gw)
    budget_url = f"/admin/budgets/team:{archived_id}:monthly"
    kept = await admin(gw, "GET", budget_url)
    assert kept.status_code == 200 and kept.json()["team"] == archived_id
    put = {"team": archived_id, "period": "daily", "limit_usd": "5"}
    refused = await admin(gw, "PUT", "/admin/budgets", json=put)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "team_archived"
    not_deleted = await admin(gw, "DELETE", budget_url)
    assert not_deleted.status_code == 409
    assert (await admin(gw, "GET", budget_url)).status_code == 200


async def test_a_deleted_teams_keys_stop_working_at_once(gw: InProcessGateway) -> None:
    assert (await chat(gw, gw.key)).status_code == 200  # the key is now in the key cache
    assert (await admin(gw, "DELETE", "/admin/teams/search")).status_code == 200
    assert (await chat(gw, gw.key)).status_code == 401


@pytest.fixture(params=["sqlite", "redis"])
async def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    prefix = request.getfixturevalue("redis_prefix") if request.param == "redis" else None
    clock = FrozenClock(at("2026-03-10T12:00:00+00:00"))
    async with open_ledger(str(request.param), tmp_path, prefix, clock) as built:
        yield built


async def test_forgetting_a_teams_counters_leaves_teams_whose_names_differ_by_case_or_a_wildcard(
    ledger: Any,
) -> None:
    teams = ["a_b", "aXb", "A_b", "a_b2"]
    budgets = [Budget("team", t, Period.MONTHLY, limit_usd=Decimal(1)) for t in teams]
    for budget in budgets:
        await ledger.budgets.put(budget)
        hold = await ledger.reserve(budget.subject, "key_x", Amounts(5, 5, 1))
        await ledger.settle(hold, Amounts(3, 3, 1))
    assert await ledger.counters.forget("team:a_b:") == 1
    spent = {u.budget.subject: u.spent.picousd for u in await ledger.usage(budgets)}
    # The forgotten counter is rebuilt from the (empty) spend log; the others keep their spend.
    assert spent == {"a_b": 0, "aXb": 3, "A_b": 3, "a_b2": 3}


def cli_config(tmp_path: Path) -> str:
    path = tmp_path / "rightsize.yaml"
    path.write_text(f"store:\n  url: sqlite:///{tmp_path / 'rs.db'}\n")
    return str(path)


def test_the_cli_refuses_a_team_name_that_could_be_an_archived_id(tmp_path: Path) -> None:
    cfg = cli_config(tmp_path)
    result = CliRunner().invoke(main, ["teams", "create", "search~0123abcd", "--config", cfg])
    assert result.exit_code == 1 and "team name" in result.output
    listed = CliRunner().invoke(main, ["teams", "list", "--json", "--config", cfg])
    assert json.loads(listed.output) == []


def test_the_cli_deletes_a_team_into_an_archive_that_reports_find_by_id(tmp_path: Path) -> None:
    runner, cfg = CliRunner(), cli_config(tmp_path)
    assert runner.invoke(main, ["teams", "create", "search", "--config", cfg]).exit_code == 0
    record = SpendRecord(
        request_id="r1",
        created_at=datetime(2026, 3, 10, 12, tzinfo=UTC),
        status=200,
        team="search",
        key_id="key_a",
        deployment="small",
        cost_usd=COST,
    )
    _insert(f"sqlite:///{tmp_path / 'rs.db'}", record)
    deleted = runner.invoke(main, ["teams", "delete", "search", "--config", cfg])
    assert deleted.exit_code == 0, deleted.output
    archived_id = deleted.output.split()[-1]
    listed = runner.invoke(main, ["teams", "list", "--archived", "--json", "--config", cfg])
    assert [t["id"] for t in json.loads(listed.output)] == [archived_id]
    args = ["report", "costs", "--start", "2026-03-10", "--end", "2026-03-10", "--format", "json"]
    report = runner.invoke(main, [*args, "--team", archived_id, "--config", cfg])
    assert report.exit_code == 0, report.output
    rows = json.loads(report.output)["rows"]
    assert [(r["team"], r["requests"], r["cost_usd"]) for r in rows] == [
        (archived_id, 1, str(COST))
    ]


def _insert(url: str, record: SpendRecord) -> None:
    import asyncio

    async def run() -> None:
        store = Store.connect(url)
        try:
            await store.insert_spend([record])
        finally:
            await store.aclose()

    asyncio.run(run())
