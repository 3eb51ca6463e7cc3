"""Live routing quality: the shadow-judged pairs (router_outcomes) and the spend log's budgets.

Each judged row becomes the quality pair of `rightsize eval --pairs` (verdict strong: weak 0,
strong 1; light: weak 1, strong 0; tie: both 1; no verdict: left out and counted), ranked by
the demand the router logged for it, and scored with the router's own metric code
(router/training/metrics.py): APGR and CPT(50%) of that ranking, and at the threshold in force
the share sent to the strong tier and the performance gap recovered (PGR). Win rates carry
Wilson intervals; APGR, CPT and PGR percentile-bootstrap intervals (BOOTSTRAP_DRAWS resamples
of the rows, seed BOOTSTRAP_SEED, so that every run on the same rows prints the same bounds).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger.tables import router_outcomes, spend_log
from router.training.metrics import pgr_curve, routing_scores

Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval
BOOTSTRAP_DRAWS = 1000
BOOTSTRAP_SEED = 0
# The pair each verdict stands for, (weak, strong): which tier's answer was good enough.
VERDICT_PAIRS = {"strong": (0.0, 1.0), "light": (1.0, 0.0), "tie": (1.0, 1.0)}


@dataclass(frozen=True, slots=True)
class JudgedRow:
    """What the report reads of one router_outcomes row."""

    light_tier: str
    strong_tier: str
    verdict: str | None
    reasoning_demand: float | None


def wilson(successes: int, n: int, z: float = Z95) -> dict[str, float] | None:
    """The share successes / n with its Wilson score interval; None when n is 0."""
    if n == 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return {"value": _r(p), "low": _r(max(0.0, centre - half)), "high": _r(min(1.0, centre + half))}


def pair_arrays(rows: Sequence[JudgedRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(demand, weak, strong) of the rows that have both a verdict and a logged demand."""
    kept = [r for r in rows if r.verdict in VERDICT_PAIRS and r.reasoning_demand is not None]
    demand = np.array([r.reasoning_demand for r in kept], dtype=np.float64)
    weak = np.array([VERDICT_PAIRS[str(r.verdict)][0] for r in kept], dtype=np.float64)
    strong = np.array([VERDICT_PAIRS[str(r.verdict)][1] for r in kept], dtype=np.float64)
    return demand, weak, strong


def judged_pair(
    rows: Sequence[JudgedRow], threshold: float | None, *, draws: int = BOOTSTRAP_DRAWS
) -> dict[str, Any]:
    """Win rates and routing metrics of one (light tier, strong tier) pair's judged rows."""
    verdicts = [r.verdict for r in rows]
    judged = sum(1 for v in verdicts if v in VERDICT_PAIRS)
    demand, weak, strong = pair_arrays(rows)
    out: dict[str, Any] = {
        "outcomes": len(rows),
        "judged": judged,
        "no_verdict": len(rows) - judged,
        "strong_wins": verdicts.count("strong"),
        "light_wins": verdicts.count("light"),
        "ties": verdicts.count("tie"),
        "strong_win_rate": wilson(verdicts.count("strong"), judged),
        "light_win_rate": wilson(verdicts.count("light"), judged),
        "tie_rate": wilson(verdicts.count("tie"), judged),
        # Judged rows with a logged demand: those the routing metrics rank.
        "ranked": len(demand),
        "threshold": threshold,
    }
    out.update(_routing(demand, weak, strong, threshold, draws))
    return out


def _routing(
    demand: np.ndarray, weak: np.ndarray, strong: np.ndarray, threshold: float | None, draws: int
) -> dict[str, Any]:
    empty: dict[str, Any] = {
        "light_quality": None,
        "strong_quality": None,
        "apgr": None,
        "cpt50": None,
        "strong_share_at_threshold": None,
        "quality_at_threshold": None,
        "pgr_at_threshold": None,
    }
    if len(demand) == 0:
        return empty
    out = dict(
        empty,
        light_quality=_r(float(weak.mean())),
        strong_quality=_r(float(strong.mean())),
    )
    if threshold is not None:
        up = demand >= threshold
        out["strong_share_at_threshold"] = _r(float(up.mean()))
        out["quality_at_threshold"] = _r(float(np.where(up, strong, weak).mean()))
    point = _metrics(demand, weak, strong, threshold)
    if point is None:  # one row, or both tiers judged alike on every row: no gap to recover
        return out
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    samples = []
    for _ in range(draws):
        idx = rng.integers(0, len(demand), len(demand))
        found = _metrics(demand[idx], weak[idx], strong[idx], threshold)
        if found is not None:  # a resample with no gap has no PGR: left out
            samples.append(found)
    for name, value in point.items():
        drawn = np.array([s[name] for s in samples])
        out[name] = {
            "value": _r(value),
            "low": _r(float(np.percentile(drawn, 2.5))) if len(drawn) else None,
            "high": _r(float(np.percentile(drawn, 97.5))) if len(drawn) else None,
        }
    return out


def _metrics(
    demand: np.ndarray, weak: np.ndarray, strong: np.ndarray, threshold: float | None
) -> dict[str, float] | None:
    if len(demand) < 2 or abs(float(strong.mean() - weak.mean())) < 1e-12:
        return None
    scores = routing_scores(demand, weak, strong)
    found = {"apgr": scores.apgr, "cpt50": scores.cpt50}
    if threshold is not None:
        # The top k demands go strong, k = rows at or above the threshold; a tie block of
        # demands lies wholly on one side of it, so the curve's point k is that routing's PGR.
        _, pgr = pgr_curve(demand, weak, strong)
        found["pgr_at_threshold"] = float(pgr[int((demand >= threshold).sum())])
    return found


async def judged_section(
    engine: AsyncEngine,
    first: datetime,
    after: datetime,
    thresholds: Mapping[str, float],
    *,
    team: str | None = None,
) -> list[dict[str, Any]]:
    """One entry per compared (light tier, strong tier) over the judged rows in [first, after);
    the threshold in force is the strong tier's min_demand in `thresholds`."""
    query = select(
        router_outcomes.c.light_tier,
        router_outcomes.c.strong_tier,
        router_outcomes.c.verdict,
        router_outcomes.c.reasoning_demand,
    ).where(router_outcomes.c.created_at >= first, router_outcomes.c.created_at < after)
    if team is not None:
        query = query.where(router_outcomes.c.team == team)
    async with engine.connect() as conn:
        rows = [JudgedRow(*r) for r in await conn.execute(query.order_by(router_outcomes.c.id))]
    # The bootstraps are CPU work: off the event loop, which serves the admin API too.
    return await asyncio.to_thread(judged_pairs, rows, thresholds)


def judged_pairs(
    rows: Sequence[JudgedRow], thresholds: Mapping[str, float]
) -> list[dict[str, Any]]:
    """judged_pair of each (light tier, strong tier) among the rows, in name order."""
    pairs: dict[tuple[str, str], list[JudgedRow]] = {}
    for row in rows:
        pairs.setdefault((row.light_tier, row.strong_tier), []).append(row)
    return [
        {"light_tier": light, "strong_tier": strong, **judged_pair(found, thresholds.get(strong))}
        for (light, strong), found in sorted(pairs.items())
    ]


async def budget_accuracy(
    engine: AsyncEngine, first: datetime, after: datetime, *, team: str | None = None
) -> list[dict[str, Any]]:
    """Per tier and deployment, the share of real answers within the predicted p50 and p90.

    Rows: served (2xx), usage counted (not estimated), not cache hits, with a token budget.
    """
    answer = spend_log.c.completion_tokens
    query = (
        select(
            spend_log.c.tier,
            spend_log.c.deployment,
            func.count(),
            func.sum(case((answer <= spend_log.c.token_budget_p50, 1), else_=0)),
            func.sum(case((answer <= spend_log.c.token_budget_p90, 1), else_=0)),
        )
        .where(
            spend_log.c.created_at >= first,
            spend_log.c.created_at < after,
            and_(spend_log.c.status >= 200, spend_log.c.status < 300),
            spend_log.c.usage_estimated.is_(False),
            spend_log.c.cache_hit.is_(False),
            spend_log.c.token_budget_p50.is_not(None),
            spend_log.c.token_budget_p90.is_not(None),
        )
        .group_by(spend_log.c.tier, spend_log.c.deployment)
    )
    if team is not None:
        query = query.where(spend_log.c.team == team)
    async with engine.connect() as conn:
        found = [tuple(r) for r in await conn.execute(query)]
    return [
        {
            "tier": tier,
            "deployment": deployment,
            "answers": int(n),
            "within_p50": wilson(int(p50), int(n)),
            "within_p90": wilson(int(p90), int(n)),
        }
        for tier, deployment, n, p50, p90 in sorted(
            found, key=lambda r: ("" if r[0] is None else r[0], "" if r[1] is None else r[1])
        )
    ]


def _r(value: float) -> float:
    return round(value, 6)
