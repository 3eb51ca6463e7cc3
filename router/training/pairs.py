"""Score the router on your own small-vs-strong outcomes: `rightsize eval --pairs FILE`.

The dev split has weak/strong outcomes for two benchmarks only. A team that has run a small
and a strong model on its own prompts (or holds a public routing benchmark) can measure the
shipped router on them with the same metrics as the dev table. One JSON object per line:

    {"prompt": "...", "weak": 0.0, "strong": 1.0, "strong_tokens": 412, "group": "math"}

- the text: "prompt" (a string) or "messages" (an OpenAI-shaped chat; the router reads what the
  gateway reads, the last user turn);
- "weak", "strong": each model's quality on the prompt in [0, 1] (correctness, or a judge
  score divided by its maximum); the pair label is "weak < 0.5 and strong >= 0.5";
- "strong_tokens" (optional): the strong model's answer length in cl100k tokens, for the
  token-budget columns;
- "group" (optional, default "all"): rows are scored per group, and over all rows as "overall"
  when there is more than one group.

A row that cannot be read stops the run with its line number: a score over silently dropped
rows would not be the score of the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from router.messages import prompt_from_messages
from router.router import Router
from router.training.evaluate import (
    RANDOM_SEEDS,
    average_random,
    budget_cells,
    index_groups,
    routing_cells,
)


class PairFileError(ValueError):
    """A pairs file row that cannot be scored; the message names its line."""


@dataclass(frozen=True)
class PairRow:
    """One prompt with the weak and the strong model's quality on it."""

    prompt: str
    weak: float
    strong: float
    strong_tokens: int | None
    group: str


class Outcome(Protocol):
    """What scoring reads of a row: both models' quality, the strong answer's length, a group."""

    @property
    def weak(self) -> float: ...
    @property
    def strong(self) -> float: ...
    @property
    def strong_tokens(self) -> int | None: ...
    @property
    def group(self) -> str: ...


def json_row(line: str, where: str, error: type[ValueError] = PairFileError) -> dict[str, Any]:
    """One JSON-lines row as an object; `error` names its line otherwise."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise error(f"{where}: a row must be a JSON object")
    return row


def tokens_and_group(
    row: dict[str, Any], where: str, error: type[ValueError] = PairFileError
) -> tuple[int | None, str]:
    """A row's optional `strong_tokens` (a positive integer) and its `group` (default "all")."""
    tokens = row.get("strong_tokens")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        raise error(f"{where}: 'strong_tokens' must be a positive integer, got {tokens!r}")
    group = row.get("group", "all")
    if not isinstance(group, str) or not group:
        raise error(f"{where}: 'group' must be a non-empty string")
    if group == "overall":
        raise error(f"{where}: 'overall' is the name of the all-rows group")
    return tokens, group


def quality(
    row: dict[str, Any], key: str, where: str, error: type[ValueError] = PairFileError
) -> float:
    """A model's quality on the row, a number in [0, 1]."""
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{where}: {key!r} must be a number in [0, 1], got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise error(f"{where}: {key!r} must be in [0, 1], got {value!r}")
    return float(value)


def _prompt(row: dict[str, Any], where: str) -> str:
    if "prompt" in row:
        text = row["prompt"]
        if not isinstance(text, str):
            raise PairFileError(f"{where}: 'prompt' must be a string")
    elif isinstance(row.get("messages"), list):
        text = prompt_from_messages(row["messages"])
    else:
        raise PairFileError(f"{where}: needs 'prompt' (a string) or 'messages' (a list)")
    if not text.strip():
        raise PairFileError(f"{where}: the prompt is empty")
    return text


def _parse(line: str, where: str) -> PairRow:
    row = json_row(line, where)
    tokens, group = tokens_and_group(row, where)
    return PairRow(
        prompt=_prompt(row, where),
        weak=quality(row, "weak", where),
        strong=quality(row, "strong", where),
        strong_tokens=tokens,
        group=group,
    )


def load_pairs(path: Path) -> list[PairRow]:
    """Read a pairs file (JSON lines; blank lines skipped); PairFileError names a bad row."""
    rows: list[PairRow] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                rows.append(_parse(line, f"{path}:{number}"))
    if len(rows) < 2:
        raise PairFileError(f"{path}: needs at least two rows to rank, found {len(rows)}")
    return rows


def evaluate_pairs(
    router: Router, rows: Sequence[PairRow], batch_size: int = 512
) -> list[dict[str, object]]:
    """Metric rows per group for the router, the prompt-length heuristic and a random router.

    The length heuristic ranks by log prompt length and the random router draws uniform demands
    (mean of RANDOM_SEEDS draws); neither has a token budget without training data, so the
    budget columns are the router's only.
    """
    prompts = [r.prompt for r in rows]
    estimates = [
        est
        for start in range(0, len(prompts), batch_size)
        for est in router.estimate_batch(prompts[start : start + batch_size])
    ]
    return score_outcomes(
        rows,
        [(e.reasoning_demand, e.token_budget_p50, e.token_budget_p90) for e in estimates],
        ("length", np.log1p([len(p) for p in prompts])),
    )


def score_outcomes(
    rows: Sequence[Outcome],
    estimates: Sequence[tuple[float, int, int]],
    length: tuple[str, npt.ArrayLike],
) -> list[dict[str, object]]:
    """Metric rows per group for the estimates (demand, p50, p90), a length heuristic (its
    name and score per row) and a random router (mean of RANDOM_SEEDS uniform draws)."""
    demand = np.array([e[0] for e in estimates], dtype=np.float64)
    p50 = np.array([e[1] for e in estimates], dtype=np.float64)
    p90 = np.array([e[2] for e in estimates], dtype=np.float64)
    weak = np.array([r.weak for r in rows])
    strong = np.array([r.strong for r in rows])
    tokens = np.array([np.nan if r.strong_tokens is None else r.strong_tokens for r in rows])
    methods: list[tuple[str, np.ndarray, bool]] = [
        ("router", demand, True),
        (length[0], np.asarray(length[1], dtype=np.float64), False),
    ]
    methods += [
        (f"random(seed={seed})", np.random.default_rng(seed).random(len(rows)), True)
        for seed in range(RANDOM_SEEDS)
    ]
    out: list[dict[str, object]] = []
    keys = [r.group for r in rows]
    for group, idx in index_groups(keys, overall=len(set(keys)) > 1).items():
        ix = np.asarray(idx)
        timed = ix[np.isfinite(tokens[ix])]
        for name, score, probability in methods:
            row: dict[str, object] = {"group": group, "method": name, "n": len(ix)}
            if len(ix) > 1:  # one row has no order to score
                row.update(routing_cells(score[ix], weak[ix], strong[ix], probability))
            if name == "router" and len(timed):
                row.update(budget_cells(p50[timed], p90[timed], tokens[timed]))
            out.append(row)
    return average_random(out)
