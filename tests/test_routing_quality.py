"""Live routing quality (issue 21): the judged section of the routing report and
`calibrate --outcomes`, every number checked against a hand computation, on SQLite and
PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main
from gateway.store import OutcomeRecord, SpendRecord, Store
from ledger.reports import routing_report
from router.training.metrics import routing_scores
from tests.conftest import gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream

UTC_ZONE = ZoneInfo("UTC")
DAY = date(2026, 11, 20)
T0 = datetime(2026, 11, 20, 9, tzinfo=UTC)
THRESHOLD = 0.5  # min_demand of the strong tier, `standard`
TIERS = [
    {"name": "light", "deployments": ["small"]},
    {"name": "standard", "deployments": ["direct"], "min_demand": THRESHOLD},
]

# (reasoning demand, verdict) of team search's judged rows in the day.
JUDGED = [
    (0.9, "strong"),
    (0.8, "strong"),
    (0.7, "tie"),
    (0.4, "light"),
    (0.3, "strong"),
    (0.2, "strong"),
    (0.6, None),  # the judge failed: no verdict, left out and counted
    (None, "tie"),  # judged, but no logged demand: in the win rates, not in the ranking
]


def outcome(i: int, demand: float | None, verdict: str | None, **fields: Any) -> OutcomeRecord:
    values: dict[str, Any] = {
        "request_id": f"q{i}",
        "created_at": T0 + timedelta(minutes=i),
        "prompt_hash": f"{i:064x}",
        "served": "light" if demand is None or demand < THRESHOLD else "strong",
        "light_tier": "light",
        "strong_tier": "standard",
        "team": "search",
        "reasoning_demand": demand,
        "verdict": verdict,
        "error": None if verdict else "judge: 502",
    }
    values.update(fields)
    return OutcomeRecord(**values)


def outcome_rows() -> list[OutcomeRecord]:
    rows = [outcome(i, d, v) for i, (d, v) in enumerate(JUDGED)]
    rows.append(outcome(20, 0.95, "light", team="ads"))  # another team
    rows.append(outcome(21, 0.95, "light", created_at=T0 - timedelta(days=1)))  # the day before
    return rows


def spend(i: int, tier: str, deployment: str, p50: int | None, p90: int | None, answer: int,
          **fields: Any) -> SpendRecord:  # fmt: skip
    record = SpendRecord(
        request_id=f"s{i}",
        created_at=T0 + timedelta(minutes=i),
        status=200,
        team="search",
        tier=tier,
        deployment=deployment,
        token_budget_p50=p50,
        token_budget_p90=p90,
        reasoning_demand=None if p50 is None else 0.5,
    )
    record.completion_tokens = answer
    for name, value in fields.items():
        setattr(record, name, value)
    return record


def spend_rows() -> list[SpendRecord]:
    return [
        spend(0, "light", "small", 100, 300, 80),  # within p50 and p90
        spend(1, "light", "small", 100, 300, 200),  # within p90 only
        spend(2, "light", "small", 100, 300, 400),  # beyond both
        spend(3, "light", "small", 100, 300, 100),  # at p50: within both
        spend(4, "standard", "direct", 50, 60, 55),  # within p90 only
        # Not real answers to the budgets: each is left out.
        spend(5, "light", "small", 100, 300, 10, cache_hit=True),
        spend(6, "light", "small", 100, 300, 10, usage_estimated=True),
        spend(7, "light", "small", 100, 300, 0, status=502),
        spend(8, "light", "small", None, None, 10),  # no estimate
        spend(9, "light", "small", 100, 300, 10, team="ads"),
        spend(10, "light", "small", 100, 300, 10, created_at=T0 - timedelta(days=1)),
    ]


def wilson(k: int, n: int) -> tuple[float, float, float]:
    """The Wilson score interval, written out:
    (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, max(0.0, centre - half), min(1.0, centre + half)


def assert_share(cell: dict[str, float], k: int, n: int) -> None:
    value, low, high = wilson(k, n)
    assert cell == pytest.approx({"value": value, "low": low, "high": high}, abs=1e-6)


# The ranked rows by demand, highest first, as (weak, strong) quality pairs (strong -> 0, 1;
# light -> 1, 0; tie -> 1, 1):  0.9 (0,1)  0.8 (0,1)  0.7 (1,1)  0.4 (1,0)  0.3 (0,1)  0.2 (0,1).
# Light quality 2/6, strong 5/6; the gap is 3/6. Sending the top k up, quality is
# 2/6, 3/6, 4/6, 4/6, 3/6, 4/6, 5/6 for k = 0..6, so PGR = (quality - 2/6) / (3/6) is
# 0, 1/3, 2/3, 2/3, 1/3, 2/3, 1 and its area over shares 0, 1/6, ..., 1 (trapezoids) is
# (1/6)(1/6 + 1/2 + 2/3 + 1/2 + 1/2 + 5/6) = 19/36. CPT(50%), the first share with PGR >= 1/2,
# is 2/6. At min_demand 0.5 the top 3 go up: share 1/2, quality 4/6, PGR 2/3.
APGR = 19 / 36
CPT50 = 2 / 6
WEAK = np.array([0, 0, 1, 1, 0, 0], dtype=np.float64)
STRONG = np.array([1, 1, 1, 0, 1, 1], dtype=np.float64)
DEMAND = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2])


def bootstrap_bounds(name: str) -> tuple[float, float]:
    """The documented bootstrap: 1000 resamples of the rows, seed 0, resamples with no gap
    between the tiers left out, the 2.5th and 97.5th percentiles."""
    rng = np.random.default_rng(0)
    drawn = []
    for _ in range(1000):
        idx = rng.integers(0, 6, 6)
        weak, strong, demand = WEAK[idx], STRONG[idx], DEMAND[idx]
        if strong.mean() == weak.mean():
            continue
        if name == "pgr_at_threshold":
            k = int((demand >= THRESHOLD).sum())
            order = np.argsort(-demand, kind="stable")
            # No ties straddle the threshold here: the top k by demand are the ones up.
            quality = (weak.sum() + (strong - weak)[order][:k].sum()) / 6
            drawn.append((quality - weak.mean()) / (strong.mean() - weak.mean()))
        else:
            drawn.append(getattr(routing_scores(demand, weak, strong), name))
    return float(np.percentile(drawn, 2.5)), float(np.percentile(drawn, 97.5))


def assert_report_is_the_hand_computation(report: dict[str, Any]) -> None:
    assert report["thresholds"] == {"light": 0.0, "standard": THRESHOLD}
    [pair] = report["judged"]
    assert (pair["light_tier"], pair["strong_tier"], pair["threshold"]) == (
        "light",
        "standard",
        THRESHOLD,
    )
    counts = ("outcomes", "judged", "no_verdict", "strong_wins", "light_wins", "ties", "ranked")
    assert [pair[c] for c in counts] == [8, 7, 1, 4, 1, 2, 6]
    assert_share(pair["strong_win_rate"], 4, 7)
    assert_share(pair["light_win_rate"], 1, 7)
    assert_share(pair["tie_rate"], 2, 7)
    assert pair["light_quality"] == pytest.approx(2 / 6, abs=1e-6)
    assert pair["strong_quality"] == pytest.approx(5 / 6, abs=1e-6)
    assert pair["strong_share_at_threshold"] == pytest.approx(1 / 2, abs=1e-6)
    assert pair["quality_at_threshold"] == pytest.approx(4 / 6, abs=1e-6)
    for name, value in (("apgr", APGR), ("cpt50", CPT50), ("pgr_at_threshold", 2 / 3)):
        low, high = bootstrap_bounds(name)
        assert pair[name] == pytest.approx({"value": value, "low": low, "high": high}, abs=1e-6)
        assert pair[name]["low"] <= pair[name]["value"] <= pair[name]["high"]

    light, standard = report["budget_accuracy"]
    assert (light["tier"], light["deployment"], light["answers"]) == ("light", "small", 4)
    assert_share(light["within_p50"], 2, 4)  # 80 and 100 of 80, 200, 400, 100
    assert_share(light["within_p90"], 3, 4)
    assert (standard["tier"], standard["deployment"], standard["answers"]) == (
        "standard",
        "direct",
        1,
    )
    assert_share(standard["within_p50"], 0, 1)
    assert_share(standard["within_p90"], 1, 1)


async def seed(store_url: str) -> None:
    store = Store.connect(store_url)
    try:
        await store.migrate()
        await store.insert_outcomes(outcome_rows())
        await store.insert_spend(spend_rows())
    finally:
        await store.aclose()


async def test_routing_report_judged_numbers_equal_the_hand_computation(store_url: str) -> None:
    await seed(store_url)
    store = Store.connect(store_url)
    try:
        report = await routing_report(
            store.engine,
            UTC_ZONE,
            DAY,
            DAY,
            team="search",
            thresholds={"light": 0.0, "standard": THRESHOLD},
        )
        everyone = await routing_report(
            store.engine, UTC_ZONE, DAY, DAY, thresholds={"light": 0.0, "standard": THRESHOLD}
        )
    finally:
        await store.aclose()
    assert_report_is_the_hand_computation(report)
    # Without --team, the ads row (light won at demand 0.95) and the ads answer count too.
    [pair] = everyone["judged"]
    assert (pair["judged"], pair["light_wins"], pair["ranked"]) == (8, 2, 7)
    assert everyone["budget_accuracy"][0]["answers"] == 5


def config_file(tmp_path: Path, store_url: str) -> Path:
    path = tmp_path / "rightsize.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": {"url": store_url},
                "models": [
                    {"name": "small", "model": "openai/small", "local": True},
                    {"name": "direct", "model": "openai/direct", "local": True},
                ],
                "policy": {"tiers": TIERS},
            }
        )
    )
    return path


def test_report_routing_cli_json_is_the_hand_computation(store_url: str, tmp_path: Path) -> None:
    asyncio.run(seed(store_url))  # the command runs its own event loop: this test has none
    args = ["report", "routing", "--config", str(config_file(tmp_path, store_url))]
    args += ["--start", DAY.isoformat(), "--end", DAY.isoformat(), "--team", "search"]
    result = CliRunner().invoke(main, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert_report_is_the_hand_computation(json.loads(result.output))
    table = CliRunner().invoke(main, args)
    assert table.exit_code == 0, table.output
    assert "judged light vs standard: 7 judged (1 without a verdict)" in table.output
    assert "at min_demand 0.5: 50.0% to standard" in table.output


async def test_admin_routing_report_is_the_hand_computation(
    store_url: str, upstream: RunningUpstream
) -> None:
    config = gateway_config(store_url, upstream, policy={"tiers": TIERS})
    async with in_process_gateway(config) as gw:
        # After the gateway created team search: a new team's name starts clean, so rows
        # logged before under that name would go to an archive.
        await seed(store_url)
        response = await gw.client.get(
            "/admin/reports/routing",
            params={"start": DAY.isoformat(), "end": DAY.isoformat(), "team": "search"},
            headers=gw.admin.headers,
        )
    assert response.status_code == 200, response.text
    assert_report_is_the_hand_computation(response.json())


def structured_outcomes() -> list[OutcomeRecord]:
    """200 judged prompts, demand evenly spread over [0, 1): the strong tier wins only above
    0.6; below, the light tier's answer is as good (tie). Every 10th row has no verdict."""
    rows = []
    for i in range(200):
        demand = (i + 0.5) / 200
        verdict = None if i % 10 == 3 else ("strong" if demand > 0.6 else "tie")
        rows.append(outcome(100 + i, demand, verdict))
    return rows


async def insert_outcomes(store_url: str, rows: list[OutcomeRecord]) -> None:
    store = Store.connect(store_url)
    try:
        await store.migrate()
        await store.insert_outcomes(rows)
    finally:
        await store.aclose()


def test_calibrate_from_outcomes_finds_where_the_strong_tier_starts_winning(
    store_url: str, tmp_path: Path
) -> None:
    asyncio.run(insert_outcomes(store_url, structured_outcomes()))
    cfg = config_file(tmp_path, store_url)
    out = tmp_path / "calibrated.yaml"
    base = ["calibrate", "--config", str(cfg), "--outcomes", "--team", "search"]
    exact = CliRunner().invoke(main, [*base, "--keep", "1.0", "--output", str(out)])
    assert exact.exit_code == 0, exact.output
    written = yaml.safe_load(out.read_text())["policy"]["tiers"]
    # Every strong win kept: the cut lies between the highest tie (0.5975) and the lowest
    # strong win (0.6025).
    assert written[1] == {"name": "standard", "deployments": ["direct"], "min_demand": 0.6}
    assert written[0]["name"] == "light" and written[0].get("min_demand", 0) == 0
    assert "skipped 20 outcomes without a verdict or a demand" in exact.output

    relaxed = CliRunner().invoke(main, [*base, "--keep", "0.95"])
    assert relaxed.exit_code == 0, relaxed.output
    line = next(x for x in relaxed.output.splitlines() if "standard:" in x)
    # 180 judged: 108 ties and 72 strong wins, all of quality 1 when sent up (strong quality
    # 1); light quality 108/180. Keeping 95% allows 9 wins (5% of 180) to stay light: the 9
    # lowest demands above 0.6 (0.6025 ... 0.6475, past the no-verdict 0.6175), so the cut
    # lies midway between 0.6475 and the next win, 0.6525.
    assert line.split() == ["standard:", "min_demand", "0.6500", "share", "35.0%", "quality",
                            "0.950", "of", "1.000", "(180", "judged", "prompts)"]  # fmt: skip


def test_calibrate_from_outcomes_refuses_a_judged_tier_the_policy_lacks(
    store_url: str, tmp_path: Path
) -> None:
    rows = [outcome(i, i / 10, "strong", strong_tier="reasoning") for i in range(5)]
    asyncio.run(insert_outcomes(store_url, rows))
    cfg = config_file(tmp_path, store_url)
    result = CliRunner().invoke(main, ["calibrate", "--config", str(cfg), "--outcomes"])
    assert result.exit_code == 1
    assert "the outcomes judge tier 'reasoning', which is not a policy tier" in result.output
    both = ["calibrate", "--config", str(cfg), "--outcomes", "--traffic", str(cfg)]
    mixed = CliRunner().invoke(main, [*both, "--max-share", "standard=0.5"])
    assert mixed.exit_code == 2 and "not both" in mixed.output
