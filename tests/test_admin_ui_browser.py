"""Must-show (issue 24): the admin page in headless Chromium against `rightsize serve`.

Log in (a wrong key first), see the spend chart of a team with data, drill down into the team,
download the CSV; every number the page shows equals the admin API's for the same period.
Screenshots and the downloaded CSV are kept under test-artifacts/admin-ui/ (or
$RIGHTSIZE_TEST_ARTIFACTS/admin-ui/).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.store import SpendRecord, Store
from tests.conftest import (
    IN_CI,
    MASTER_KEY,
    LiveServer,
    gateway_config,
    gateway_env,
    write_config,
)
from tests.fake_upstream import RunningUpstream

CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; scripts/test.sh installs it
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
ARTIFACTS = Path(os.environ.get("RIGHTSIZE_TEST_ARTIFACTS", "test-artifacts")) / "admin-ui"
Rows = list[list[str]]


def chromium_or_skip() -> Any:
    """Playwright's sync API, or a loud skip (a failure in CI) without it or the browser."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing: str | None = f"playwright is not installed ({exc})"
    else:
        missing = None if CHROMIUM.exists() else f"{CHROMIUM} is missing (apt-get install chromium)"
    if missing:
        if IN_CI:
            pytest.fail(missing)
        pytest.skip("SKIPPED LOUDLY: " + missing)
    return sync_playwright


@pytest.fixture
def server(tmp_path: Path, upstream: RunningUpstream) -> Iterator[LiveServer]:
    store_url = f"sqlite:///{tmp_path / 'rightsize.db'}"
    config = gateway_config(
        store_url,
        upstream,
        router={"enabled": False},
        ledger={"savings_reference_model": "direct"},
    )
    running = LiveServer(write_config(tmp_path / "rightsize.yaml", config), gateway_env())
    try:
        seed(running.base_url, store_url)
        yield running
    finally:
        running.stop()


def seed(base_url: str, store_url: str) -> None:
    """Two teams with keys and budgets, real requests through the gateway (they move the
    budgets' counters) and a week of older spend-log rows (days, tiers, cache hits, demands)."""
    with httpx.Client(base_url=base_url, headers=ADMIN, timeout=30) as admin:
        keys = {}
        for team, limit in (("search", "5"), ("ads", "0.5")):
            assert admin.post("/admin/teams", json={"name": team}).status_code == 201
            keys[team] = admin.post("/admin/keys", json={"team": team, "name": "ci"}).json()
            budget = {"team": team, "period": "monthly", "limit_usd": limit}
            assert admin.put("/admin/budgets", json=budget).status_code == 200
        admin.post("/admin/keys", json={"team": "search", "name": "spare"})
        sent = 0
        for team, model, n in (("search", "direct", 3), ("ads", "small", 2)):
            auth = {"authorization": f"Bearer {keys[team]['key']}"}
            for i in range(n):
                body = {"model": model, "messages": [{"role": "user", "content": f"Hi {i}"}]}
                answer = admin.post("/v1/chat/completions", json=body, headers=auth)
                assert answer.status_code == 200, answer.text
                sent += 1
        deadline = time.monotonic() + 10
        while len(admin.get("/admin/spend").json()["data"]) < sent:
            assert time.monotonic() < deadline, "the spend writer did not flush"
            time.sleep(0.05)
    asyncio.run(_older_rows(store_url, {t: k["id"] for t, k in keys.items()}))


async def _older_rows(store_url: str, key_ids: dict[str, str]) -> None:
    rng = random.Random(24)
    now = datetime.now(UTC)
    rows = []
    for i in range(120):
        team = rng.choice(["search", "search", "ads"])
        model, tier = rng.choice([("small", "light"), ("direct", "standard")])
        hit = rng.random() < 0.25
        record = SpendRecord(
            request_id=f"older-{i}",
            created_at=now - timedelta(days=rng.randint(1, 6), minutes=rng.randint(0, 600)),
            status=200,
            team=team,
            key_id=key_ids[team],
            requested_model="auto",
            deployment=model,
            tier=tier,
            cache_hit=hit,
            reasoning_demand=None if hit else rng.random(),
        )
        record.prompt_tokens = rng.randint(50, 4000)
        record.completion_tokens = rng.randint(10, 1500)
        record.cost_usd = Decimal(0) if hit else Decimal(rng.randint(1, 10**9)) / 10**12
        rows.append(record)
    store = Store.connect(store_url)
    try:
        await store.insert_spend(rows)
    finally:
        await store.aclose()


def table(page: Any, selector: str) -> Rows:
    rows: Rows = page.eval_on_selector_all(
        f"{selector} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))"
    )
    return rows


def test_admin_page_shows_the_reports_numbers_drills_down_and_downloads_the_csv(
    server: LiveServer,
) -> None:
    sync_playwright = chromium_or_skip()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    api = httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=30)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True
        )
        try:
            context = browser.new_context(
                accept_downloads=True, viewport={"width": 1400, "height": 1000}
            )
            page = context.new_page()
            urls: list[str] = []
            page.on("request", lambda request: urls.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))

            page.goto(server.base_url + "/admin/ui")
            page.screenshot(path=ARTIFACTS / "01-login.png")

            # A wrong key: refused, nothing of the dashboard filled.
            page.fill("#master-key", "not-the-master-key")
            page.click("#login")
            page.wait_for_selector("#login-error:not([hidden])")
            assert "Incorrect master key" in page.inner_text("#login-error")
            assert page.is_hidden("#dashboard") and page.is_hidden("#session")
            assert table(page, "#team-table") == []
            page.screenshot(path=ARTIFACTS / "02-wrong-key.png")

            page.fill("#master-key", MASTER_KEY)
            page.click("#login")
            page.wait_for_selector("body[data-loaded]", state="attached")
            assert page.is_hidden("#load-error"), page.inner_text("#load-error")
            assert page.is_visible("#session") and page.is_hidden("#login-view")
            page.screenshot(path=ARTIFACTS / "03-dashboard.png", full_page=True)
            period = {"start": page.input_value("#start"), "end": page.input_value("#end")}

            # Spend per team: the table is the costs report; the chart plots the same days.
            costs = api.get("/admin/reports/costs", params={**period, "group_by": "team"}).json()
            assert {r["team"] for r in costs["rows"]} == {"search", "ads"}
            assert table(page, "#team-table") == [
                [r["team"], str(r["requests"]), str(r["prompt_tokens"]),
                 str(r["completion_tokens"]), r["cost_usd"]]
                for r in costs["rows"]
            ]  # fmt: skip
            assert page.inner_text("#total-requests") == str(costs["totals"]["requests"])
            assert page.inner_text("#total-cost") == costs["totals"]["cost_usd"]
            plotted = page.evaluate(
                "() => Object.fromEntries(Chart.getChart('spend-by-team').data.datasets"
                ".map(d => [d.label, d.data.reduce((a, b) => a + b, 0)]))"
            )
            for row in costs["rows"]:
                assert plotted[row["team"]] == pytest.approx(float(row["cost_usd"]), rel=1e-9)
            assert len(page.evaluate("() => Chart.getChart('spend-by-model').data.labels")) >= 6

            # Routing mix, cache hit rate, demand histogram, savings: the routing and savings
            # reports of the same period.
            routing = api.get("/admin/reports/routing", params=period).json()
            assert table(page, "#tier-table") == [
                [r["tier"], str(r["requests"]), str(r["cache_hits"]), r["cost_usd"]]
                for r in routing["rows"]
            ]
            assert page.inner_text("#cache-hit-rate") == routing["totals"]["cache_hit_rate"] + "%"
            histogram = page.evaluate(
                "() => Chart.getChart('demand-histogram').data.datasets[0].data"
            )
            assert histogram == [b["requests"] for b in routing["demand_histogram"]]
            assert sum(histogram) > 50
            # This gateway has no local engine: the section says so rather than showing zeros.
            assert api.get("/admin/local-engines").json() == {"data": []}
            assert table(page, "#engine-table") == []
            assert page.inner_text("#engines-note") == "No local engines configured."
            savings = api.get("/admin/reports/savings", params=period).json()["totals"]
            assert page.inner_text("#savings-total").startswith(savings["savings_usd"] + " USD")

            # Spend against budget: each team's monthly window as /admin/teams/{team}/usage has it.
            budgets = table(page, "#budget-table")
            for team in ("ads", "search"):
                usage = api.get(f"/admin/teams/{team}/usage").json()["data"][0]
                row = next(r for r in budgets if r[0] == team)
                assert row[1:6] == [
                    usage["id"], usage["window"], usage["spent_usd"], usage["limit_usd"],
                    usage["remaining_usd"],
                ]  # fmt: skip
                assert Decimal(usage["spent_usd"]) > 0

            # Drill down: the team's keys (with their spend) and its recent requests.
            page.click("#team-table button[data-team='search']")
            page.wait_for_selector("#team-detail:not([hidden])")
            keys = api.get("/admin/keys", params={"team": "search"}).json()["data"]
            by_key = api.get(
                "/admin/reports/costs", params={**period, "group_by": "key", "team": "search"}
            ).json()
            spent = {r["key"]: r["cost_usd"] for r in by_key["rows"]}
            assert [(r[0], r[1], r[4]) for r in table(page, "#detail-keys")] == [
                (k["id"], k["name"], spent.get(k["id"], "0")) for k in keys
            ]
            recent = api.get("/admin/spend", params={"team": "search", "limit": 50}).json()
            assert [r[1] for r in table(page, "#detail-requests")] == [
                r["request_id"] for r in recent["data"]
            ]
            assert [r[10] for r in table(page, "#detail-requests")] == [
                r["cost_usd"] for r in recent["data"]
            ]
            page.screenshot(path=ARTIFACTS / "04-team-search.png", full_page=True)

            # The CSV: byte for byte the API's report for the same period and grouping.
            page.select_option("#csv-group-by", "day,team")
            with page.expect_download() as download:
                page.click("#download-csv")
            saved = ARTIFACTS / download.value.suggested_filename
            download.value.save_as(saved)
            expected = api.get(
                "/admin/reports/costs", params={**period, "group_by": "day,team", "format": "csv"}
            )
            assert saved.read_bytes() == expected.content
            assert expected.content.count(b"\r\n") > 7

            assert not errors, errors
            assert urls and not [u for u in urls if MASTER_KEY in u]  # the key never in a URL
        finally:
            browser.close()
            api.close()
