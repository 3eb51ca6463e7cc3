"""Score the router's logged estimates against outcomes: `rightsize eval --spend-log`.

The gateway logs the router's estimate on every routed spend row, never the prompt. A team that
learns afterwards how a weak and a strong model did on its requests (graded, judged, or a
user's thumbs) writes one JSON object per line, keyed by the request's id:

    {"request_id": "req_0a1b", "weak": 0.0, "strong": 1.0, "strong_tokens": 412, "group": "a"}

- "request_id": the request's `x-request-id` (the spend log's `request_id`);
- "weak", "strong", "strong_tokens", "group": as in `eval --pairs` (router/training/pairs.py).

The rows are scored with the metrics of `eval --pairs`: the same router estimates give the same
APGR, CPT and token-budget figures. The length baseline ranks by the logged prompt tokens
(`length(tokens)`), since the prompt text is not logged. This module reads no database: the
gateway joins the rows with its spend log (gateway/cli/spend_eval.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from router.training.evaluate import (
    RANDOM_SEEDS,
    average_random,
    budget_cells,
    index_groups,
    routing_cells,
)


class OutcomeFileError(ValueError):
    """An outcomes file row that cannot be scored; the message names its line."""


@dataclass(frozen=True)
class OutcomeRow:
    """What a weak and a strong model scored on one logged request."""

    request_id: str
    weak: float
    strong: float
    strong_tokens: int | None
    group: str


@dataclass(frozen=True)
class LoggedEstimate:
    """The router's estimate of one request as the spend log kept it."""

    reasoning_demand: float
    token_budget_p50: int
    token_budget_p90: int
    prompt_tokens: int


def load_outcomes(path: Path) -> list[OutcomeRow]:
    """Read an outcomes file (JSON lines; blank lines skipped); OutcomeFileError names a bad row."""
    rows: list[OutcomeRow] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            row = _parse(line, where)
            if row.request_id in seen:
                raise OutcomeFileError(
                    f"{where}: request_id {row.request_id!r} is already on line "
                    f"{seen[row.request_id]}"
                )
            seen[row.request_id] = number
            rows.append(row)
    if len(rows) < 2:
        raise OutcomeFileError(f"{path}: needs at least two rows to rank, found {len(rows)}")
    return rows


def evaluate_logged(
    joined: Sequence[tuple[OutcomeRow, LoggedEstimate]],
) -> list[dict[str, object]]:
    """Metric rows per group for the logged estimates, prompt-token length and a random router.

    Scored exactly as `eval --pairs` scores a router's fresh estimates, rows in the given order.
    """
    rows = [outcome for outcome, _ in joined]
    logged = [estimate for _, estimate in joined]
    demand = np.array([e.reasoning_demand for e in logged], dtype=np.float64)
    p50 = np.array([e.token_budget_p50 for e in logged], dtype=np.float64)
    p90 = np.array([e.token_budget_p90 for e in logged], dtype=np.float64)
    weak = np.array([r.weak for r in rows])
    strong = np.array([r.strong for r in rows])
    tokens = np.array([np.nan if r.strong_tokens is None else r.strong_tokens for r in rows])
    methods: list[tuple[str, np.ndarray, bool]] = [
        ("router", demand, True),
        ("length(tokens)", np.log1p([e.prompt_tokens for e in logged]), False),
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
            if len(ix) > 1:  # one request has no order to score
                row.update(routing_cells(score[ix], weak[ix], strong[ix], probability))
            if name == "router" and len(timed):
                row.update(budget_cells(p50[timed], p90[timed], tokens[timed]))
            out.append(row)
    return average_random(out)


def _parse(line: str, where: str) -> OutcomeRow:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise OutcomeFileError(f"{where}: invalid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise OutcomeFileError(f"{where}: a row must be a JSON object")
    request_id = row.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise OutcomeFileError(f"{where}: 'request_id' must be a non-empty string")
    tokens = row.get("strong_tokens")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1
    ):
        raise OutcomeFileError(
            f"{where}: 'strong_tokens' must be a positive integer, got {tokens!r}"
        )
    group = row.get("group", "all")
    if not isinstance(group, str) or not group:
        raise OutcomeFileError(f"{where}: 'group' must be a non-empty string")
    if group == "overall":
        raise OutcomeFileError(f"{where}: 'overall' is the name of the all-rows group")
    return OutcomeRow(
        request_id=request_id,
        weak=_quality(row, "weak", where),
        strong=_quality(row, "strong", where),
        strong_tokens=tokens,
        group=group,
    )


def _quality(row: dict[str, Any], key: str, where: str) -> float:
    value = row.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OutcomeFileError(f"{where}: {key!r} must be a number in [0, 1], got {value!r}")
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise OutcomeFileError(f"{where}: {key!r} must be in [0, 1], got {value!r}")
    return float(value)
