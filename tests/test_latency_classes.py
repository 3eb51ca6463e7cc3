"""Latency classes (issue 26): resolved per request (header > key > team > policy >
interactive), logged on the spend row (revision 0010), and Must show 4: the savings report's
batch line against a hand computation, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import openai
import pytest

from gateway.store import SpendRecord, Store
from ledger.reports import savings_report
from policies import Capabilities, Deployment, TokenPrice
from tests.conftest import InProcessGateway, gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream
from tests.migrate import migrate_to as _migrate
from tests.migrate import spend_columns as _columns

LATENCY_COLUMNS = ("spend_log", "teams", "api_keys")


def _latency_columns(connection: Any) -> set[str]:
    from sqlalchemy import inspect

    return {
        table
        for table in LATENCY_COLUMNS
        if "latency_class" in {c["name"] for c in inspect(connection).get_columns(table)}
    }


async def test_revision_0010_adds_latency_classes_to_existing_rows_and_goes_back(
    store_url: str,
) -> None:
    from sqlalchemy import text

    store = Store.connect(store_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(_migrate("0009"))
            await conn.run_sync(_migrate("0009", down=True))
            assert not await conn.run_sync(_latency_columns)
            assert "api" in await conn.run_sync(_columns)  # 0009 and before stay
            await conn.execute(
                text(
                    "INSERT INTO spend_log (request_id, created_at, status, prompt_tokens, "
                    "completion_tokens, cached_tokens, usage_estimated, cost_picousd, stream, "
                    "cache_hit, saved_picousd, attempts, record_id) VALUES ('req_0008', "
                    ":at, 200, 1, 2, 0, false, 5, false, false, 0, 1, 'old0008')"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )
            await conn.execute(
                text("INSERT INTO teams (name, created_at) VALUES ('old-team', :at)"),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )
            await conn.execute(
                text(
                    "INSERT INTO api_keys (id, team, key_hash, key_hint, created_at) VALUES "
                    "('key_old', 'old-team', 'hash-old', 'sk-old', :at)"
                ),
                {"at": datetime(2026, 12, 1, tzinfo=UTC)},
            )
        await store.migrate()
        (old,) = await store.spend(request_id="req_0008")
        assert old.latency_class is None  # older rows do not say
        (key,) = await store.list_keys("old-team")
        assert (key.latency_class, key.team_latency_class) == (None, None)
        async with store.engine.begin() as conn:
            assert await conn.run_sync(_latency_columns) == set(LATENCY_COLUMNS)
            await conn.run_sync(_migrate("0009", down=True))
            assert not await conn.run_sync(_latency_columns)
            # Going back keeps the team and its key (no cascade from recreating a table).
            keys = await conn.execute(text("SELECT id FROM api_keys WHERE team = 'old-team'"))
            assert [r[0] for r in keys] == ["key_old"]
            await conn.run_sync(_migrate("head"))
    finally:
        await store.aclose()


async def test_team_and_key_defaults_and_the_spend_rows_class_are_stored(store_url: str) -> None:
    store = Store.connect(store_url)
    try:
        await store.migrate()
        await store.create_team("night", latency_class="batch")
        key = await store.create_key("key_n1", "night", "hash-n1", "sk-n1", None, None)
        assert (key.latency_class, key.team_latency_class) == (None, "batch")
        key = await store.set_key_latency_class("key_n1", "background")
        assert (key.latency_class, key.team_latency_class) == ("background", "batch")
        team = await store.set_team_latency_class("night", None)
        assert team.latency_class is None
        found = await store.find_key("hash-n1")
        assert found is not None and found[0].team_latency_class is None
        record = SpendRecord("r-bg", datetime(2026, 12, 1, tzinfo=UTC), 200, team="night")
        record.latency_class = "background"
        await store.insert_spend([record])
        (row,) = await store.spend(request_id="r-bg")
        assert row.latency_class == "background"
    finally:
        await store.aclose()


@pytest.fixture
async def gw(tmp_path: Path, upstream: RunningUpstream) -> Any:
    config = gateway_config(
        f"sqlite:///{tmp_path / 'gw.db'}",
        upstream,
        router={"enabled": False},
        policy={"teams": {"ops": {"latency_class": "background"}}},
    )
    async with in_process_gateway(config) as running:
        yield running


async def _class_of(gw: InProcessGateway, key: str, **headers: str) -> tuple[str, str]:
    client = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=key, http_client=gw.client, max_retries=0
    )
    raw = await client.chat.completions.with_raw_response.create(
        model="small", messages=[{"role": "user", "content": "hi"}], extra_headers=headers
    )
    row = await gw.admin.spend(raw.headers["x-request-id"])
    return row["latency_class"], row["route_reason"]


async def _patch(gw: InProcessGateway, path: str, latency_class: str | None) -> dict[str, Any]:
    response = await gw.client.patch(
        path, json={"latency_class": latency_class}, headers=gw.admin.headers
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_without_any_default_a_request_is_interactive(gw: InProcessGateway) -> None:
    latency, reason = await _class_of(gw, gw.key)
    assert latency == "interactive"
    assert "latency class" not in reason


async def test_the_policy_team_rule_then_the_team_then_the_key_then_the_header_decide(
    gw: InProcessGateway,
) -> None:
    await gw.admin.team("ops")
    ops = (await gw.admin.key("ops"))["key"]
    latency, reason = await _class_of(gw, ops)
    assert latency == "background"
    assert "latency class 'background' (policy team rule)" in reason
    assert "answered synchronously and priced interactively" in reason

    await _patch(gw, "/admin/teams/ops", "batch")
    latency, reason = await _class_of(gw, ops)
    assert (latency, "latency class 'batch' (team default)" in reason) == ("batch", True)

    response = await gw.client.post(
        "/admin/keys",
        json={"team": "ops", "latency_class": "interactive"},
        headers=gw.admin.headers,
    )
    assert response.status_code == 201 and response.json()["latency_class"] == "interactive"
    interactive_key = response.json()["key"]
    latency, reason = await _class_of(gw, interactive_key)
    assert (latency, "latency class 'interactive' (key default)" in reason) == (
        "interactive",
        True,
    )

    latency, reason = await _class_of(gw, interactive_key, **{"x-rightsize-latency": "Batch"})
    assert latency == "batch"
    assert "latency class 'batch' (x-rightsize-latency header)" in reason


async def test_a_key_default_set_later_applies_at_once(gw: InProcessGateway) -> None:
    keys = (await gw.client.get("/admin/keys", headers=gw.admin.headers)).json()["data"]
    key_id = keys[0]["id"]
    assert (await _class_of(gw, gw.key))[0] == "interactive"  # the key is cached now
    assert (await _patch(gw, f"/admin/keys/{key_id}", "background"))["latency_class"] == (
        "background"
    )
    assert (await _class_of(gw, gw.key))[0] == "background"
    await _patch(gw, f"/admin/keys/{key_id}", None)
    assert (await _class_of(gw, gw.key))[0] == "interactive"


async def test_a_bad_latency_header_is_a_400_naming_the_allowed_values(
    gw: InProcessGateway,
) -> None:
    client = openai.AsyncOpenAI(
        base_url="http://gateway/v1", api_key=gw.key, http_client=gw.client, max_retries=0
    )
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model="small",
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-rightsize-latency": "whenever"},
        )
    error = raised.value.body
    assert isinstance(error, dict)
    assert error["code"] == "invalid_latency_class"
    assert "interactive, batch, background" in error["message"]


async def test_the_admin_api_refuses_an_unknown_class_and_an_unknown_team(
    gw: InProcessGateway,
) -> None:
    bad = await gw.client.post(
        "/admin/teams", json={"name": "later", "latency_class": "soon"}, headers=gw.admin.headers
    )
    assert bad.status_code in (400, 422) and "latency_class" in bad.text
    missing = await gw.client.patch(
        "/admin/teams/nobody", json={"latency_class": "batch"}, headers=gw.admin.headers
    )
    assert missing.status_code == 404
    created = await gw.client.post(
        "/admin/teams", json={"name": "later", "latency_class": "batch"}, headers=gw.admin.headers
    )
    assert created.status_code == 201 and created.json()["latency_class"] == "batch"


# Must show 4: the batch line by hand.
ZONE = ZoneInfo("UTC")
DAY = date(2026, 12, 2)
SMALL = Deployment(
    "small-batch",
    "openai/small",
    None,
    None,
    None,
    "openai_http",
    60,
    TokenPrice(Decimal("0.000001"), Decimal("0.000004"), Decimal("0.00000025")),
    Capabilities(),
    False,
)


def _row(
    n: int,
    latency_class: str | None,
    prompt: int,
    completion: int,
    cached: int,
    cost: str,
    deployment: str = "small-batch",
    cache_hit: bool = False,
) -> SpendRecord:
    record = SpendRecord(
        f"lat{n}",
        datetime(2026, 12, 2, 12, n, tzinfo=UTC),
        200,
        team="search",
        deployment=deployment,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cost_usd=Decimal(cost),
        cache_hit=cache_hit,
    )
    record.latency_class = latency_class
    return record


async def test_the_savings_reports_batch_line_equals_a_hand_computation(store_url: str) -> None:
    store = Store.connect(store_url)
    try:
        await store.migrate()
        await store.insert_spend(
            [
                # Two batch requests at half the interactive price (as a batch API bills).
                _row(1, "batch", 1000, 200, 0, "0.0009"),
                _row(2, "batch", 3000, 500, 1000, "0.00185"),
                _row(3, "background", 2000, 0, 0, "0.001"),
                _row(4, "interactive", 9999, 9999, 0, "0.05"),  # not deferred: not counted
                _row(5, None, 9999, 9999, 0, "0.05"),  # before revision 0010: not counted
                _row(6, "batch", 500, 500, 0, "0", cache_hit=True),  # the cache's saving
                _row(7, "batch", 100, 100, 0, "0.0001", deployment="retired"),
            ]
        )
        report = await savings_report(store.engine, ZONE, DAY, DAY, SMALL, catalog=[SMALL])
    finally:
        await store.aclose()
    lines = {r["latency_class"]: r for r in report["latency_classes"]["rows"]}
    # By hand, at 1 / 4 / 0.25 USD per million input / output / cached input tokens:
    # row 1: 1000 x 1e-6 + 200 x 4e-6 = 0.0018; row 2: 2000 x 1e-6 + 1000 x 0.25e-6
    # + 500 x 4e-6 = 0.00425. Interactive 0.00605, actual 0.0009 + 0.00185 = 0.00275.
    assert lines["batch"] == {
        "latency_class": "batch",
        "requests": 2,
        "actual_cost_usd": "0.00275",
        "interactive_cost_usd": "0.00605",
        "savings_usd": "0.0033",
    }
    # Background: 2000 x 1e-6 = 0.002 interactively, 0.001 paid.
    assert lines["background"]["savings_usd"] == "0.001"
    assert report["latency_classes"]["unpriced"] == [
        {"latency_class": "batch", "deployment": "retired", "requests": 1}
    ]


def test_the_command_line_creates_a_team_with_a_default_class(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    cfg = tmp_path / "rightsize.yaml"
    cfg.write_text(f"store:\n  url: sqlite:///{tmp_path / 'rs.db'}\n")
    runner = CliRunner()
    made = runner.invoke(
        main, ["teams", "create", "nightly", "--latency-class", "batch", "--config", str(cfg)]
    )
    assert made.exit_code == 0, made.output
    listed = runner.invoke(main, ["teams", "list", "--json", "--config", str(cfg)])
    assert '"latency_class": "batch"' in listed.output
    bad = runner.invoke(
        main, ["teams", "create", "x", "--latency-class", "soon", "--config", str(cfg)]
    )
    assert bad.exit_code != 0
