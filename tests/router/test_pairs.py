"""eval --pairs: the router scored on a file of your own weak/strong outcomes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from router import Router
from router.cli import eval_cmd
from router.training.pairs import PairFileError, evaluate_pairs, load_pairs

PROMPTS = [
    "Translate 'hello' to French.",
    "Hi! How are you today?",
    "Write a haiku about autumn leaves.",
    "What is the capital of Australia?",
    "Prove that there are infinitely many primes, step by step.",
    "Let f(x) = x^3 - 3x + 1. Find all critical points, classify each, and prove that f has "
    "exactly three real roots, showing every step.",
    "A tank holds 240 litres. Pipe A fills it in 6 hours and pipe B drains it in 8 hours. If "
    "both are open for 2 hours and then B is closed, how long until the tank is full?",
    "Implement a thread-safe LRU cache in Java with O(1) get and put, and prove its invariants.",
    "Summarise this sentence: the cat sat on the mat.",
    "Compute the sum of all integers from 1 to 1000 that are divisible by 3 or 5.",
]


@pytest.fixture(scope="module")
def router() -> Router:
    return Router.load(cache_size=0)


def _write(path: Path, rows: list[object]) -> Path:
    path.write_text(
        "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n",
        encoding="utf-8",
    )
    return path


def _by(rows: list[dict[str, object]], group: str, method: str) -> dict[str, object]:
    return next(r for r in rows if r["group"] == group and r["method"] == method)


def test_a_file_labelled_by_the_routers_own_order_scores_it_as_the_oracle(
    router: Router, tmp_path: Path
) -> None:
    demand = [e.reasoning_demand for e in router.estimate_batch(PROMPTS)]
    cut = sorted(demand)[len(demand) // 2]
    # The weak model fails exactly on the higher-demand half: the router's order is the oracle.
    rows = [
        {"prompt": p, "weak": 0.0 if d >= cut else 1.0, "strong": 1.0, "strong_tokens": 200}
        for p, d in zip(PROMPTS, demand, strict=True)
    ]
    scored = evaluate_pairs(router, load_pairs(_write(tmp_path / "p.jsonl", rows)))
    ours, rand = _by(scored, "all", "router"), _by(scored, "all", "random")
    # Half the prompts fail on 10 rows: the oracle recovers the gap linearly over the first
    # five strong calls, APGR = 0.1 * (0.2 + 0.4 + 0.6 + 0.8 + 1 * 5 + 1 / 2) = 0.75.
    assert float(str(ours["apgr"])) == pytest.approx(0.75)
    assert float(str(ours["auc"])) == 1.0
    assert abs(float(str(rand["apgr"])) - 0.5) < 0.15
    # Reversed labels: the same router now routes the wrong half first.
    flipped = [{**r, "weak": 1.0 - float(str(r["weak"]))} for r in rows]
    scored = evaluate_pairs(router, load_pairs(_write(tmp_path / "f.jsonl", flipped)))
    assert float(str(_by(scored, "all", "router")["apgr"])) == pytest.approx(0.25)


def test_groups_messages_and_budget_columns(router: Router, tmp_path: Path) -> None:
    rows = [
        {
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": p},
            ],
            "weak": float(i % 2),
            "strong": 1.0,
            "group": "odd" if i % 3 else "third",
            **({"strong_tokens": 50 + 10 * i} if i < 6 else {}),
        }
        for i, p in enumerate(PROMPTS)
    ]
    scored = evaluate_pairs(router, load_pairs(_write(tmp_path / "m.jsonl", rows)))
    assert {str(r["group"]) for r in scored} == {"odd", "third", "overall"}
    assert {str(r["method"]) for r in scored} == {"router", "length", "random"}
    overall = _by(scored, "overall", "router")
    assert overall["n"] == len(PROMPTS)
    assert {"apgr", "cpt50", "cpt80", "auc", "ece", "ece_floor", "brier"} <= set(overall)
    assert {"within_2x", "med_log2", "p90_cov"} <= set(overall)  # six rows have a length
    length = _by(scored, "overall", "length")
    assert "ece" not in length and "within_2x" not in length
    # The chat is read as the gateway reads it: the same scores as the bare prompts.
    bare = [
        {**{k: v for k, v in r.items() if k != "messages"}, "prompt": p}
        for r, p in zip(rows, PROMPTS, strict=True)
    ]
    again = evaluate_pairs(router, load_pairs(_write(tmp_path / "b.jsonl", bare)))
    assert _by(again, "overall", "router") == overall


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "invalid JSON"),
        (json.dumps(["a"]), "JSON object"),
        (json.dumps({"weak": 0, "strong": 1}), "'prompt'"),
        (json.dumps({"prompt": "  ", "weak": 0, "strong": 1}), "empty"),
        (json.dumps({"prompt": "q", "weak": 1.5, "strong": 1}), "'weak' must be in [0, 1]"),
        (json.dumps({"prompt": "q", "weak": 0, "strong": True}), "'strong' must be a number"),
        (json.dumps({"prompt": "q", "weak": 0, "strong": 1, "strong_tokens": 0}), "positive"),
        (json.dumps({"prompt": "q", "weak": 0, "strong": 1, "group": "overall"}), "overall"),
    ],
)
def test_a_bad_row_stops_the_run_with_its_line_number(
    tmp_path: Path, line: str, message: str
) -> None:
    good = json.dumps({"prompt": "What is 2 + 2?", "weak": 1, "strong": 1})
    path = _write(tmp_path / "bad.jsonl", [good, "", line, good])
    with pytest.raises(PairFileError) as err:
        load_pairs(path)
    assert f"{path}:3:" in str(err.value) and message in str(err.value)
    result = CliRunner().invoke(eval_cmd, ["--pairs", str(path)])
    assert result.exit_code == 1
    assert f"{path}:3:" in result.output and message in result.output


def test_the_cli_prints_the_table_and_refuses_unclear_arguments(tmp_path: Path) -> None:
    rows = [{"prompt": p, "weak": float(i % 2), "strong": 1.0} for i, p in enumerate(PROMPTS)]
    path = _write(tmp_path / "p.jsonl", rows)
    result = CliRunner().invoke(eval_cmd, ["--pairs", str(path)])
    assert result.exit_code == 0, result.output
    header, _rule, *body = result.output.strip().splitlines()
    assert header.startswith("| group | method | n | apgr |")
    assert [line.split("|")[2].strip() for line in body] == ["router", "length", "random"]
    for args in (
        [],
        ["--pairs", str(path), "--data", str(tmp_path)],
        ["--pairs", str(path), "--loso"],
    ):
        refused = CliRunner().invoke(eval_cmd, args)
        assert refused.exit_code == 2, (args, refused.output)
    one = _write(tmp_path / "one.jsonl", rows[:1])
    assert "at least two rows" in CliRunner().invoke(eval_cmd, ["--pairs", str(one)]).output


def test_a_group_of_one_prompt_gets_a_row_without_routing_scores(
    router: Router, tmp_path: Path
) -> None:
    rows = [
        {"prompt": p, "weak": float(i % 2), "strong": 1.0, "group": "solo" if i == 0 else "rest"}
        for i, p in enumerate(PROMPTS)
    ]
    scored = evaluate_pairs(router, load_pairs(_write(tmp_path / "s.jsonl", rows)))
    solo = _by(scored, "solo", "router")
    assert solo["n"] == 1 and "apgr" not in solo
    assert "apgr" in _by(scored, "rest", "router") and "apgr" in _by(scored, "overall", "router")
