"""`rightsize eval --spend-log`: the router scored on logged traffic joined with outcomes.

The prompts of a pairs file go through a live gateway (fake upstream); the outcomes file gives
the same weak/strong results keyed by the requests' ids. Both evals must give the same figures.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.cli.spend_eval import join_outcomes
from gateway.store import Store
from router import Router
from router.training.logged import OutcomeFileError, evaluate_logged, load_outcomes
from router.training.pairs import evaluate_pairs, load_pairs
from tests.conftest import InProcessGateway

# Prompts of several kinds, with made-up but fixed outcomes: weak fails on the hard ones.
PROMPTS = [
    ("Hello! How are you today?", 1.0, 1.0, 20, "chat"),
    ("Say hello in French.", 1.0, 1.0, 12, "chat"),
    ("What is the capital of Australia?", 1.0, 1.0, 15, "chat"),
    ("Thanks, that is all.", 1.0, 1.0, 8, "chat"),
    ("Write a haiku about autumn leaves.", 0.0, 1.0, 30, "chat"),
    ("Prove that there are infinitely many primes, step by step.", 0.0, 1.0, 400, "math"),
    ("Solve x^2 - 5x + 6 = 0 and explain each step.", 1.0, 1.0, 150, "math"),
    (
        "Prove that the square root of 2 is irrational, with a rigorous argument.",
        0.0,
        1.0,
        350,
        "math",
    ),
    ("Compute the integral of x * e^x dx and verify it by differentiation.", 0.0, 1.0, 250, "math"),
    ("How many legs do three spiders and two ants have in total?", 1.0, 0.0, 60, "math"),
    (
        "A train leaves at 3pm at 60 km/h, another at 4pm at 90 km/h on the same track: "
        "when does the second catch up? Show your reasoning.",
        0.0,
        1.0,
        300,
        "math",
    ),
    ("What is 2 + 2?", 1.0, 1.0, 5, "math"),
]


def messages(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]


async def send(gateway: InProcessGateway, prompt: str, **extra: Any) -> str:
    body = {"model": "auto", "messages": messages(prompt), **extra}
    response = await gateway.client.post("/v1/chat/completions", json=body, headers=gateway.auth)
    assert response.status_code == 200, response.text
    return str(response.headers["x-request-id"])


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def pairs_and_outcomes(gateway: InProcessGateway, directory: Path) -> tuple[Path, Path]:
    pairs, outcomes = [], []
    for prompt, weak, strong, tokens, group in PROMPTS:
        request_id = await send(gateway, prompt)
        scored = {"weak": weak, "strong": strong, "strong_tokens": tokens, "group": group}
        pairs.append({"messages": messages(prompt), **scored})
        outcomes.append({"request_id": request_id, **scored})
    return (
        write_jsonl(directory / "pairs.jsonl", pairs),
        write_jsonl(directory / "outcomes.jsonl", outcomes),
    )


async def logged_join(store_url: str, outcomes_path: Path) -> Any:
    outcomes = load_outcomes(outcomes_path)
    store = Store.connect(store_url)
    try:
        # The batched writer flushes every 20 ms in tests; the gateway is still running.
        for _ in range(100):
            records = await store.spend_of_requests([o.request_id for o in outcomes])
            if len(records) >= len(outcomes):
                break
            await asyncio.sleep(0.05)
    finally:
        await store.aclose()
    return join_outcomes(outcomes, records)


def comparable(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rows with NaN (a metric with nothing to score) made equal to itself."""
    return [
        {k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
        for row in rows
    ]


def table(output: str) -> dict[tuple[str, str], list[str]]:
    """Markdown rows by (group, method) -> cells."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 2 and cells[0] not in ("group", "---"):
            rows[(cells[0], cells[1])] = cells[2:]
    return rows


async def test_spend_log_eval_reproduces_pairs_eval_on_the_same_prompts(
    gateway: InProcessGateway, store_url: str, tmp_path: Path
) -> None:
    pairs_path, outcomes_path = await pairs_and_outcomes(gateway, tmp_path)
    joined = await logged_join(store_url, outcomes_path)
    assert (len(joined.pairs), joined.missing, joined.unestimated) == (len(PROMPTS), 0, 0)

    fresh = evaluate_pairs(Router.load(), load_pairs(pairs_path))
    logged = evaluate_logged(joined.pairs)
    # The router's and the random router's rows are the same figures up to their last bits: the
    # gateway estimated each prompt alone, whose sums run in another order than the batch's
    # (tests/router/test_one_row.py). The printed tables below are equal.
    logged_rows = comparable([r for r in logged if r["method"] != "length(tokens)"])
    fresh_rows = comparable([r for r in fresh if r["method"] != "length"])
    assert [sorted(r) for r in logged_rows] == [sorted(r) for r in fresh_rows]
    for got, expected in zip(logged_rows, fresh_rows, strict=True):
        for name, value in expected.items():
            if isinstance(value, float):
                assert got[name] == pytest.approx(value, rel=1e-12, abs=1e-15), (got, name)
            else:
                assert got[name] == value, (got, name)
    assert {r["group"] for r in logged} == {"chat", "math", "overall"}

    runner = CliRunner()
    by_pairs = runner.invoke(main, ["eval", "--pairs", str(pairs_path)])
    assert by_pairs.exit_code == 0, by_pairs.output
    # In a thread: the command runs its own event loop, and this test is inside one.
    by_log = await asyncio.to_thread(
        runner.invoke,
        main,
        ["eval", "--spend-log", "--store", store_url, "--outcomes", str(outcomes_path)],
    )
    assert by_log.exit_code == 0, by_log.output
    pairs_table, log_table = table(by_pairs.stdout), table(by_log.stdout)
    router_rows = [key for key in pairs_table if key[1] == "router"]
    assert len(router_rows) == 3
    for key in router_rows:
        assert log_table[key] == pairs_table[key], key
    assert f"joined {len(PROMPTS)} of {len(PROMPTS)} outcomes" in by_log.stderr
    assert Router.load().artifact_id in by_log.stderr


async def test_outcomes_without_a_logged_estimate_are_counted_and_left_out(
    gateway: InProcessGateway, store_url: str, tmp_path: Path
) -> None:
    first = await send(gateway, "What is 2 + 2?", temperature=0)
    hit = await send(gateway, "What is 2 + 2?", temperature=0)  # answered by the prompt cache
    other = await send(gateway, "Prove Fermat's little theorem.")
    rows = [
        {"request_id": first, "weak": 1, "strong": 1},
        {"request_id": hit, "weak": 1, "strong": 1},
        {"request_id": other, "weak": 0, "strong": 1},
        {"request_id": "req_never_logged", "weak": 0, "strong": 1},
    ]
    outcomes_path = write_jsonl(tmp_path / "outcomes.jsonl", rows)
    joined = await logged_join(store_url, outcomes_path)
    assert [outcome.request_id for outcome, _ in joined.pairs] == [first, other]
    assert [record.request_id for record in joined.records] == [first, other]
    assert (joined.missing, joined.unestimated) == (1, 1)


def test_a_bad_outcomes_row_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.jsonl"
    path.write_text(
        '{"request_id": "a", "weak": 1, "strong": 0}\n\n{"request_id": "b", "weak": 2}\n'
    )
    with pytest.raises(OutcomeFileError, match=r"outcomes.jsonl:3: 'weak' must be in \[0, 1\]"):
        load_outcomes(path)


def test_a_request_id_twice_in_the_outcomes_is_refused(tmp_path: Path) -> None:
    row = '{"request_id": "a", "weak": 1, "strong": 0}\n'
    path = tmp_path / "outcomes.jsonl"
    path.write_text(row + row)
    with pytest.raises(OutcomeFileError, match="already on line 1"):
        load_outcomes(path)


def test_spend_log_options_need_the_flag(tmp_path: Path) -> None:
    outcomes = write_jsonl(tmp_path / "o.jsonl", [{"request_id": "a", "weak": 1, "strong": 0}])
    result = CliRunner().invoke(main, ["eval", "--outcomes", str(outcomes)])
    assert result.exit_code == 2 and "go with --spend-log" in result.output
    result = CliRunner().invoke(main, ["eval", "--spend-log"])
    assert result.exit_code == 2 and "needs --outcomes" in result.output
