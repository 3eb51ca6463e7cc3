"""`rightsize tune --spend-log`: token budgets per deployment refitted on real spend-log rows.

Rows go through the store (SQLite and PostgreSQL) with completion tokens that follow a known
shift of the logged p50 per deployment; the tuned artifact must carry that shift, and the
gateway must hold the deployment's p90, not the heads'.
"""

from __future__ import annotations

import asyncio
import math
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from gateway.cli import main
from gateway.store import SpendRecord, Store
from router import Router
from router.artifact import artifact_id, default_artifact_dir, read_manifest, write_manifest
from router.deployment_budgets import ANY_CATEGORY, BudgetShift, DeploymentBudgets
from tests.conftest import gateway_config, in_process_gateway
from tests.fake_upstream import RunningUpstream

SHIFTS = {"big": 0.7, "small": -0.5}  # log(actual / p50) per deployment
CATEGORIES = ("chat", "math", "code", "writing")
PROMPT = "Write a haiku about autumn leaves."
NOW = datetime.now(UTC)
SHIPPED = artifact_id(default_artifact_dir())


def served(deployment: str, shift: float, n: int, seed: int, **fields: object) -> list[SpendRecord]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        p50 = int(rng.integers(40, 600))
        actual = max(1, round(p50 * math.exp(shift + 0.3 * rng.standard_normal())))
        record = SpendRecord(
            request_id=f"req_{uuid.uuid4().hex}",
            created_at=NOW,
            status=200,
            team="tune-a",
            deployment=deployment,
            completion_tokens=actual,
            reasoning_demand=0.4,
            token_budget_p50=p50,
            token_budget_p90=round(p50 * 2.5),
            category=CATEGORIES[i % len(CATEGORIES)],
            router_artifact=SHIPPED,
        )
        for name, value in fields.items():
            setattr(record, name, value)
        rows.append(record)
    return rows


def insert(store_url: str, rows: list[SpendRecord]) -> None:
    async def write() -> None:
        store = Store.connect(store_url)
        try:
            await store.migrate()  # SQLite: a fresh file (PostgreSQL: already at head)
            await store.insert_spend(rows)
        finally:
            await store.aclose()

    asyncio.run(write())


def tune_cli(store_url: str, out: Path, *extra: str) -> tuple[str, str]:
    args = [
        "tune",
        "--spend-log",
        "--store-url",
        store_url,
        "--out",
        str(out),
        "--date",
        "2026-12-04",
    ]
    result = CliRunner().invoke(main, [*args, *extra])
    assert result.exit_code == 0, result.output
    return result.stdout, result.stderr


def report_rows(stdout: str) -> dict[str, list[str]]:
    rows = {}
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("deployment", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def test_tune_recovers_each_deployments_shift_and_writes_a_loadable_artifact(
    store_url: str, tmp_path: Path
) -> None:
    insert(
        store_url, served("big", SHIFTS["big"], 240, 0) + served("small", SHIFTS["small"], 240, 1)
    )
    # Rows a refit must not learn from, each with an answer far off the known shift.
    wild = {"completion_tokens": 50_000}
    insert(
        store_url,
        served("big", 0, 3, 2, cache_hit=True, **wild)
        + served("big", 0, 2, 3, status=502, error_type="upstream_error", **wild)
        + served("big", 0, 2, 4, usage_estimated=True, **wild)
        + served("big", 0, 4, 5, router_artifact="0123456789abcdef", **wild),
    )
    out = tmp_path / "tuned"
    stdout, stderr = tune_cli(store_url, out)

    assert "480 of 491 logged estimates usable" in stderr
    assert "3 cache hits, 2 errors, 4 other router artifacts, 2 usage estimated" in stderr
    assert "[1/2] big: 240 rows, tuned" in stderr and "[2/2] small: 240 rows, tuned" in stderr
    report = report_rows(stdout)
    assert set(report) == {"big", "small"}
    assert report["big"][:2] == ["240", "tuned"]
    assert all("[" in cell for cell in report["big"][2:])  # point [low, high]

    tuned = Router.load(out)
    base = Router.load()
    estimate = tuned.estimate(PROMPT)
    assert estimate == base.estimate(PROMPT)  # the heads are the base's
    for name, shift in SHIFTS.items():
        found = tuned.deployment_budgets.shift(name, estimate.category)
        assert found is not None and abs(found.p50 - shift) < 0.12, (name, found)
        budget = tuned.budget_for(estimate, name)
        assert budget.token_budget_p50 == round(estimate.token_budget_p50 * math.exp(found.p50))
    assert tuned.budget_for(estimate, "unseen") == estimate

    manifest = read_manifest(out)
    block = manifest["tuned_budgets"]
    assert block["base_artifact"] == SHIPPED
    assert (block["rows"], block["date"]) == (480, "2026-12-04")
    assert block["source"]["excluded"]["cache hits"] == 3
    card = (out / "MODEL_CARD.md").read_text()
    assert "## Budgets per deployment, from the spend log (2026-12-04)" in card
    assert "Rows: 480 logged answers" in card


def test_with_five_rows_the_output_keeps_the_base_budgets(store_url: str, tmp_path: Path) -> None:
    insert(store_url, served("big", 1.5, 5, 0))
    out = tmp_path / "tuned"
    stdout, stderr = tune_cli(store_url, out)
    assert "[1/1] big: 5 rows, 5 rows, fewer than 30: base budgets kept" in stderr
    assert report_rows(stdout)["big"][:2] == ["5", "base kept"]
    assert read_manifest(out)["deployment_budgets"] == {}
    tuned = Router.load(out)
    estimate = tuned.estimate(PROMPT)
    assert tuned.budget_for(estimate, "big") == estimate


def test_the_filters_choose_the_rows_by_time_team_and_deployment(
    store_url: str, tmp_path: Path
) -> None:
    old = datetime(2026, 1, 1, tzinfo=UTC)
    insert(
        store_url,
        served("big", SHIFTS["big"], 120, 0)
        + served("small", SHIFTS["small"], 120, 1)
        + served("big", -2.0, 120, 2, created_at=old)
        + served("big", -2.0, 120, 3, team="tune-b"),
    )
    out = tmp_path / "tuned"
    since = NOW.strftime("%Y-%m-%d")
    _, stderr = tune_cli(
        store_url, out, "--since", since, "--team", "tune-a", "--deployment", "big"
    )
    assert "120 of 120 logged estimates usable" in stderr
    budgets = Router.load(out).deployment_budgets
    assert set(budgets.shifts) == {"big"}
    found = budgets.shift("big", "chat")
    assert found is not None and abs(found.p50 - SHIFTS["big"]) < 0.15
    assert read_manifest(out)["tuned_budgets"]["source"]["team"] == "tune-a"


def test_spend_log_options_need_the_flag(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["tune", "--team", "a", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "go with --spend-log" in result.output
    both = CliRunner().invoke(
        main, ["tune", "--spend-log", "--pairs", __file__, "--out", str(tmp_path / "o")]
    )
    assert both.exit_code == 2 and "not both" in both.output


def test_no_usable_rows_is_an_error_naming_the_artifact(store_url: str, tmp_path: Path) -> None:
    insert(store_url, served("big", 0.0, 40, 0, router_artifact="0123456789abcdef"))
    args = ["tune", "--spend-log", "--store-url", store_url, "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "40 other router artifacts" in result.stderr
    assert "--artifact DIR" in result.output


async def test_the_hold_is_the_deployments_p90_from_the_tuned_artifact(
    store_url: str, upstream: RunningUpstream, tmp_path: Path
) -> None:
    from gateway.tokens import prompt_tokens
    from tests.test_budgets_api import MESSAGES, reserved_during_a_slow_call

    artifact = tmp_path / "artifact"
    shutil.copytree(default_artifact_dir(), artifact)
    manifest = read_manifest(artifact)
    budgets = DeploymentBudgets({"slow-ok": {ANY_CATEGORY: BudgetShift(0.0, math.log(3.0))}})
    manifest["deployment_budgets"] = budgets.as_manifest()
    write_manifest(artifact, manifest)
    config = gateway_config(store_url, upstream, router={"artifact": str(artifact)})
    slow = {**config["models"][0], "name": "slow-ok", "model": "openai/fake-slow",
            "transport": "openai_http", "timeout_s": 30, "tier": None}  # fmt: skip
    config["models"].append(slow)
    async with in_process_gateway(config) as gw:
        reserved, response = await reserved_during_a_slow_call(gw)
    assert response.status_code == 200
    # The header and the spend log keep the heads' budget; the hold is the deployment's.
    p50, p90 = map(int, response.headers["x-rightsize-token-budget"].split("/"))
    assert reserved == prompt_tokens(MESSAGES) + max(p50, round(p90 * 3.0))


def test_tune_help_lists_the_spend_log_options_beside_pairs() -> None:
    result = CliRunner().invoke(main, ["tune", "--help"])
    assert result.exit_code == 0
    for option in (
        "--pairs",
        "--spend-log",
        "--since",
        "--team",
        "--deployment",
        "--store",
        "--store-url",
    ):
        assert option in result.output
