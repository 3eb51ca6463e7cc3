"""`rightsize tune --store`: the shadow-judged outcomes in router_outcomes as tune's pairs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import main
from gateway.cli.outcomes_tune import pair_rows
from gateway.store import OutcomeRecord, Store
from router.artifact import read_manifest

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def outcome(i: int, verdict: str | None, text: str | None, team: str = "search") -> OutcomeRecord:
    return OutcomeRecord(
        request_id=f"r{i}",
        created_at=T0 + timedelta(minutes=i),
        prompt_hash=f"{i:064x}",
        served="light",
        light_tier="light",
        strong_tier="strong",
        team=team,
        prompt_text=text,
        verdict=verdict,
        strong_completion_tokens=40 + i,
        category="reasoning" if i % 2 else None,
    )


def test_verdicts_become_weak_and_strong_quality_and_unusable_rows_are_left_out() -> None:
    rows = pair_rows(
        [
            outcome(1, "strong", "prove it"),
            outcome(2, "light", "say hi"),
            outcome(3, "tie", "name a colour"),
            outcome(4, None, "the judge failed"),
            outcome(5, "strong", None),  # the team keeps no prompt text
        ]
    )
    assert rows == [
        {
            "prompt": "prove it",
            "weak": 0.0,
            "strong": 1.0,
            "strong_tokens": 41,
            "group": "reasoning",
        },
        {"prompt": "say hi", "weak": 1.0, "strong": 0.0, "strong_tokens": 42},
        {
            "prompt": "name a colour",
            "weak": 1.0,
            "strong": 1.0,
            "strong_tokens": 43,
            "group": "reasoning",
        },
    ]


def test_tune_store_reads_one_teams_judged_outcomes_and_writes_an_artifact(
    store_url: str, tmp_path: Path
) -> None:
    verdicts = ["strong", "light", "tie"]
    written = [outcome(i, verdicts[i % 3], f"prompt number {i}") for i in range(12)]
    written += [outcome(20, None, "no verdict"), outcome(21, "strong", None)]
    written += [outcome(30 + i, "strong", f"other team {i}", team="ads") for i in range(5)]

    async def fill() -> None:
        store = Store.connect(store_url)
        try:
            await store.migrate()
            await store.insert_outcomes(written)
        finally:
            await store.aclose()

    asyncio.run(fill())
    out = tmp_path / "tuned"
    args = ["tune", "--store", "--store-url", store_url, "--team", "search", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--date", "2026-12-03"])
    assert result.exit_code == 0, result.output
    assert "12 of 14 judged outcomes usable" in result.output
    tuned = read_manifest(out)["tuned"]
    assert tuned["rows"] == 12 and tuned["date"] == "2026-12-03"


def test_tune_needs_pairs_or_store() -> None:
    result = CliRunner().invoke(main, ["tune", "--out", "x"])
    assert result.exit_code == 2 and "--pairs FILE, --spend-log or --store" in result.output
