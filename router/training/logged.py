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

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from router.training.pairs import json_row, quality, score_outcomes, tokens_and_group


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
    return score_outcomes(
        rows,
        [(e.reasoning_demand, e.token_budget_p50, e.token_budget_p90) for e in logged],
        ("length(tokens)", np.log1p([e.prompt_tokens for e in logged])),
    )


def _parse(line: str, where: str) -> OutcomeRow:
    row = json_row(line, where, OutcomeFileError)
    request_id = row.get("request_id")
    if not isinstance(request_id, str) or not request_id:
        raise OutcomeFileError(f"{where}: 'request_id' must be a non-empty string")
    tokens, group = tokens_and_group(row, where, OutcomeFileError)
    return OutcomeRow(
        request_id=request_id,
        weak=quality(row, "weak", where, OutcomeFileError),
        strong=quality(row, "strong", where, OutcomeFileError),
        strong_tokens=tokens,
        group=group,
    )
