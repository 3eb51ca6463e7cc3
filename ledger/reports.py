"""Cost and savings reports: spend-log totals per group, summed by the database.

Days are calendar days in the ledger's time zone. SQL cannot convert zones portably (SQLite
has no zone database), so the range is cut where the zone's UTC offset changes (DST); inside
each piece the offset is fixed and the local day is floor((epoch + offset) / 86400).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Integer, case, cast, extract, func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from ledger.judged import budget_accuracy, judged_section
from ledger.money import from_picousd, to_picousd
from ledger.tables import spend_log
from policies import Deployment, Usage, throughput

GROUPINGS = ("team", "key", "model", "requested_model", "tier", "day")
_COLUMNS = {
    "team": spend_log.c.team,
    "key": spend_log.c.key_id,
    "model": spend_log.c.deployment,
    "requested_model": spend_log.c.requested_model,
    "tier": spend_log.c.tier,
}
_EPOCH = date(1970, 1, 1)

SAVINGS_METHOD = (
    "Counterfactual: every request in the spend log priced at the reference model with the "
    "same token counts (uncached prompt tokens at its input price, cached prompt tokens at its "
    "cached-input price, completion tokens at its output price). Savings = counterfactual - "
    "actual. Actual cost is the spend log's exact cost; requests answered from the prompt "
    "cache (cost 0) count as savings at their token counts. Local models' actual cost is "
    "what the spend log recorded; `local` shows how each local model is priced, and a local "
    "model with no price is listed there as unpriced (its requests count at 0 here)."
)
_MILLION = Decimal(1_000_000)
LATENCY_METHOD = (
    "Latency classes: each request logged as batch or background (cache hits aside) priced "
    "at its own deployment's interactive price from the catalog, at its token counts, against "
    "what it cost. Savings = interactive - actual, per class. A deployment no longer in the "
    "catalog cannot be priced: its requests are listed as unpriced and left out."
)
DEFERRED_CLASSES = ("batch", "background")


async def cost_report(
    engine: AsyncEngine,
    zone: ZoneInfo,
    start: date,
    end: date,
    groups: Sequence[str],
    *,
    team: str | None = None,
    local: Sequence[Deployment] = (),
) -> dict[str, Any]:
    """Requests, tokens and exact cost per group over the days start..end (inclusive); the
    `local` deployments' spend and how it is derived (see local_spend)."""
    totals = await _grouped(engine, zone, start, end, groups, team)
    rows = []
    for key in sorted(totals, key=_sort_key):
        n, prompt, completion, cached, pico = totals[key]
        rows.append(
            {
                **dict(zip(groups, key, strict=True)),
                "requests": n,
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "cached_tokens": cached,
                "cost_usd": _money(from_picousd(pico)),
            }
        )
    columns = [*groups, "requests", "prompt_tokens", "completion_tokens"]
    columns += ["cached_tokens", "cost_usd"]
    total_pico = sum(v[4] for v in totals.values())
    return {
        "report": "costs",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "timezone": zone.key,
        "group_by": list(groups),
        "columns": columns,
        "rows": rows,
        "totals": {
            "requests": sum(v[0] for v in totals.values()),
            "cost_usd": _money(from_picousd(total_pico)),
        },
        "local": await local_spend(engine, zone, start, end, local, team=team),
    }


async def savings_report(
    engine: AsyncEngine,
    zone: ZoneInfo,
    start: date,
    end: date,
    reference: Deployment,
    *,
    team: str | None = None,
    local: Sequence[Deployment] = (),
    catalog: Sequence[Deployment] = (),
) -> dict[str, Any]:
    """Actual cost against the reference model's cost at the same tokens, per team and day;
    and what the latency classes saved against serving everything interactively (`catalog`:
    the deployments whose interactive prices that line uses)."""
    totals = await _grouped(engine, zone, start, end, ("team", "day"), team)
    price = reference.price
    rows = []
    sum_actual = sum_reference = Decimal(0)
    for key in sorted(totals, key=_sort_key):
        n, prompt, completion, cached, pico = totals[key]
        actual = from_picousd(pico)
        counterfactual = (
            (prompt - cached) * price.input
            + cached * price.cached_input
            + completion * price.output
        )
        sum_actual += actual
        sum_reference += counterfactual
        rows.append(
            {
                "team": key[0],
                "day": key[1],
                "requests": n,
                "actual_cost_usd": _money(actual),
                "reference_cost_usd": _money(counterfactual),
                "savings_usd": _money(counterfactual - actual),
                "savings_percent": _percent(counterfactual - actual, counterfactual),
            }
        )
    return {
        "report": "savings",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "timezone": zone.key,
        "reference_model": reference.name,
        "method": SAVINGS_METHOD,
        "columns": [
            "team",
            "day",
            "requests",
            "actual_cost_usd",
            "reference_cost_usd",
            "savings_usd",
            "savings_percent",
        ],
        "rows": rows,
        "totals": {
            "actual_cost_usd": _money(sum_actual),
            "reference_cost_usd": _money(sum_reference),
            "savings_usd": _money(sum_reference - sum_actual),
            "savings_percent": _percent(sum_reference - sum_actual, sum_reference),
        },
        "latency_classes": await latency_savings(engine, zone, start, end, catalog, team=team),
        "local": await local_spend(engine, zone, start, end, local, team=team),
    }


async def latency_savings(
    engine: AsyncEngine,
    zone: ZoneInfo,
    start: date,
    end: date,
    catalog: Sequence[Deployment],
    *,
    team: str | None = None,
) -> dict[str, Any]:
    """Per deferred latency class: its requests' cost against the same requests served
    interactively (each deployment's catalog price at the requests' tokens)."""
    first, after = utc_range(zone, start, end)
    query = (
        select(
            spend_log.c.latency_class,
            spend_log.c.deployment,
            func.count(),
            func.coalesce(func.sum(spend_log.c.prompt_tokens), 0),
            func.coalesce(func.sum(spend_log.c.completion_tokens), 0),
            func.coalesce(func.sum(spend_log.c.cached_tokens), 0),
            func.coalesce(func.sum(spend_log.c.cache_creation_tokens), 0),
            func.coalesce(func.sum(spend_log.c.cost_picousd), 0),
        )
        .where(
            spend_log.c.created_at >= first,
            spend_log.c.created_at < after,
            spend_log.c.latency_class.in_(DEFERRED_CLASSES),
            spend_log.c.cache_hit.is_(False),
        )
        .group_by(spend_log.c.latency_class, spend_log.c.deployment)
    )
    if team is not None:
        query = query.where(spend_log.c.team == team)
    prices = {d.name: d.price for d in catalog}
    counts = dict.fromkeys(DEFERRED_CLASSES, 0)
    actuals = dict.fromkeys(DEFERRED_CLASSES, Decimal(0))
    interactives = dict.fromkeys(DEFERRED_CLASSES, Decimal(0))
    unpriced: list[dict[str, Any]] = []
    async with engine.connect() as conn:
        for latency, deployment, n, prompt, completion, cached, written, pico in await conn.execute(
            query
        ):
            price = prices.get(deployment)
            if price is None:
                unpriced.append({"latency_class": latency, "deployment": deployment, "requests": n})
                continue
            usage = Usage(int(prompt), int(completion), int(cached), int(written))
            counts[latency] += int(n)
            actuals[latency] += from_picousd(int(pico))
            interactives[latency] += price.cost(usage)
    rows = [
        {
            "latency_class": latency,
            "requests": counts[latency],
            "actual_cost_usd": _money(actuals[latency]),
            "interactive_cost_usd": _money(interactives[latency]),
            "savings_usd": _money(interactives[latency] - actuals[latency]),
        }
        for latency in DEFERRED_CLASSES
    ]
    return {"method": LATENCY_METHOD, "rows": rows, "unpriced": unpriced}


async def local_spend(
    engine: AsyncEngine,
    zone: ZoneInfo,
    start: date,
    end: date,
    deployments: Sequence[Deployment],
    *,
    team: str | None = None,
) -> list[dict[str, Any]]:
    """Each local deployment's spend over the days start..end and how it was derived.

    GPU-hour pricing is recomputed from the period's rows: busy time is the union of the
    rows' [created_at, created_at + upstream_ms] intervals (all teams: the GPUs were busy for
    everyone), throughput = tokens / (busy seconds x GPUs), and the cost of `team`'s tokens is
    tokens x (GPU-second price / throughput). Cache hits and requests refused before the call
    did no GPU work and are left out.
    """
    first, after = utc_range(zone, start, end)
    out = []
    async with engine.connect() as conn:
        for deployment in deployments:
            query = select(
                spend_log.c.created_at,
                spend_log.c.upstream_ms,
                spend_log.c.prompt_tokens + spend_log.c.completion_tokens,
                spend_log.c.cost_picousd,
                spend_log.c.team,
            ).where(
                spend_log.c.deployment == deployment.name,
                spend_log.c.created_at >= first,
                spend_log.c.created_at < after,
                spend_log.c.cache_hit.is_(False),
                spend_log.c.upstream_ms > 0,  # refused before the call: no GPU work
            )
            rows = [
                (_utc(at).timestamp(), float(ms), int(tokens), int(pico), row_team)
                for at, ms, tokens, pico, row_team in await conn.execute(query)
            ]
            out.append(_local_row(deployment, rows, team))
    return out


def _local_row(
    deployment: Deployment, rows: list[tuple[float, float, int, int, str | None]], team: str | None
) -> dict[str, Any]:
    mine = [r for r in rows if team is None or r[4] == team]
    tokens = sum(r[2] for r in mine)
    row: dict[str, Any] = {
        "deployment": deployment.name,
        "pricing": deployment.pricing,
        "requests": len(mine),
        "tokens": tokens,
        "recorded_cost_usd": _money(from_picousd(sum(r[3] for r in mine))),
    }
    cost = deployment.gpu_cost
    if cost is not None:
        measured = throughput(((at, at + ms / 1000, n) for at, ms, n, _, _ in rows), cost.gpus)
        rate = measured.tokens_per_gpu_s
        per_token = cost.usd_per_token(rate) if rate else None
        row.update(
            usd_per_gpu_hour=_money(cost.usd_per_gpu_hour),
            gpus=cost.gpus,
            busy_gpu_seconds=_money(measured.gpu_seconds),
            tokens_per_gpu_s=None if rate is None else str(rate.quantize(Decimal("0.001"))),
            usd_per_mtok=None if per_token is None else _money(_round(per_token * _MILLION)),
            cost_usd=_money(_pico(tokens * per_token)) if per_token is not None else "0",
            derivation=(
                f"{_money(cost.usd_per_gpu_hour)} USD per GPU-hour x {cost.gpus} GPU(s), over "
                f"{_money(measured.gpu_seconds)} busy GPU-seconds serving {measured.tokens} "
                "tokens in the period (all teams)"
            ),
        )
    elif deployment.pricing == "unpriced":
        row.update(
            cost_usd=None,
            derivation="unpriced: no price and no gpu_cost configured; its requests are "
            "recorded at 0 but their cost is unknown",
        )
    else:
        price = deployment.price
        row.update(
            cost_usd=row["recorded_cost_usd"],
            derivation=(
                f"per token ({deployment.pricing}): input {_money(price.input * _MILLION)}, "
                f"output {_money(price.output * _MILLION)} USD per million tokens"
            ),
        )
    return row


DEMAND_BUCKETS = 10  # the router demand histogram: [0, 0.1), [0.1, 0.2), ... [0.9, 1.0]


async def routing_report(
    engine: AsyncEngine,
    zone: ZoneInfo,
    start: date,
    end: date,
    *,
    team: str | None = None,
    thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Requests, cache hits and cost per tier over the days start..end, the router's demand
    histogram (requests whose demand was estimated) over the same rows, the shadow-judged
    quality of each compared pair of tiers at the `thresholds` in force (min_demand per tier),
    and the token budgets' coverage of real answers (ledger/judged.py)."""
    first, after = utc_range(zone, start, end)
    demand = spend_log.c.reasoning_demand
    bucket = case(
        *((demand < (i + 1) / DEMAND_BUCKETS, i) for i in range(DEMAND_BUCKETS - 1)),
        else_=DEMAND_BUCKETS - 1,
    ).label("bucket")
    in_range = [spend_log.c.created_at >= first, spend_log.c.created_at < after]
    if team is not None:
        in_range.append(spend_log.c.team == team)
    hit = func.coalesce(func.sum(case((spend_log.c.cache_hit, 1), else_=0)), 0)
    by_tier = (
        select(
            spend_log.c.tier,
            func.count(),
            hit,
            func.coalesce(func.sum(spend_log.c.cost_picousd), 0),
        )
        .where(*in_range)
        .group_by(spend_log.c.tier)
    )
    by_bucket = select(bucket, func.count()).where(*in_range, demand.is_not(None)).group_by(bucket)
    async with engine.connect() as conn:
        tiers = [tuple(r) for r in await conn.execute(by_tier)]
        buckets = {int(b): int(n) for b, n in await conn.execute(by_bucket)}
    rows = [
        {
            "tier": tier,
            "requests": int(n),
            "cache_hits": int(hits),
            "cost_usd": _money(from_picousd(int(pico))),
        }
        for tier, n, hits, pico in sorted(tiers, key=lambda r: _sort_key(r[:1]))
    ]
    requests = sum(r["requests"] for r in rows)
    cache_hits = sum(r["cache_hits"] for r in rows)
    return {
        "report": "routing",
        "start": start.isoformat(),
        "end": end.isoformat(),
        "timezone": zone.key,
        "columns": ["tier", "requests", "cache_hits", "cost_usd"],
        "rows": rows,
        "demand_histogram": [
            {
                "low": f"{i / DEMAND_BUCKETS:.1f}",
                "high": f"{(i + 1) / DEMAND_BUCKETS:.1f}",
                "requests": buckets.get(i, 0),
            }
            for i in range(DEMAND_BUCKETS)
        ],
        "totals": {
            "requests": requests,
            "cache_hits": cache_hits,
            "cache_hit_rate": _percent(Decimal(cache_hits), Decimal(requests)),
        },
        "thresholds": dict(thresholds or {}),
        "judged": await judged_section(engine, first, after, thresholds or {}, team=team),
        "budget_accuracy": await budget_accuracy(engine, first, after, team=team),
    }


def to_csv(report: dict[str, Any]) -> str:
    """The report's rows as RFC 4180 CSV: CRLF line ends, fields quoted when they need it."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    columns = report["columns"]
    writer.writerow(columns)
    for row in report["rows"]:
        writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return out.getvalue()


def utc_range(zone: ZoneInfo, start: date, end: date) -> tuple[datetime, datetime]:
    """[local midnight of start, local midnight after end) as UTC instants."""
    first = datetime.combine(start, time(), tzinfo=zone).astimezone(UTC)
    after = datetime.combine(end + timedelta(days=1), time(), tzinfo=zone).astimezone(UTC)
    return first, after


def offset_segments(
    zone: ZoneInfo, first: datetime, after: datetime
) -> list[tuple[datetime, datetime, int]]:
    """Split [first, after) where the zone's UTC offset changes; (start, end, offset seconds)."""
    segments = []
    seg_start, offset = first, _offset(zone, first)
    probe = first
    while probe < after:
        nxt = min(probe + timedelta(hours=1), after)
        if nxt < after and _offset(zone, nxt) != offset:
            low, high = probe, nxt  # the change lies in (low, high]: bisect to the second
            while high - low > timedelta(seconds=1):
                mid = low + (high - low) / 2
                low, high = (mid, high) if _offset(zone, mid) == offset else (low, mid)
            segments.append((seg_start, high, offset))
            seg_start, offset = high, _offset(zone, high)
        probe = nxt
    segments.append((seg_start, after, offset))
    return segments


async def _grouped(
    engine: AsyncEngine,
    zone: ZoneInfo,
    start: date,
    end: date,
    groups: Sequence[str],
    team: str | None,
) -> dict[tuple[Any, ...], list[int]]:
    first, after = utc_range(zone, start, end)
    pieces = offset_segments(zone, first, after) if "day" in groups else [(first, after, 0)]
    totals: dict[tuple[Any, ...], list[int]] = {}
    async with engine.connect() as conn:
        for seg_start, seg_end, offset in pieces:
            day = _local_day(engine.dialect.name, offset)
            keys = [day if g == "day" else _COLUMNS[g] for g in groups]
            query = (
                select(
                    *keys,
                    func.count(),
                    func.coalesce(func.sum(spend_log.c.prompt_tokens), 0),
                    func.coalesce(func.sum(spend_log.c.completion_tokens), 0),
                    func.coalesce(func.sum(spend_log.c.cached_tokens), 0),
                    func.coalesce(func.sum(spend_log.c.cost_picousd), 0),
                )
                .where(spend_log.c.created_at >= seg_start, spend_log.c.created_at < seg_end)
                .group_by(*keys)
            )
            if team is not None:
                query = query.where(spend_log.c.team == team)
            else:
                # SQLite's planner would skip-scan (team, created_at) and read the table in team
                # order; the time index reads it in insertion (= time) order.
                query = query.with_hint(spend_log, "INDEXED BY ix_spend_log_created", "sqlite")
            for row in await conn.execute(query):
                key = tuple(
                    (_EPOCH + timedelta(days=int(v))).isoformat() if g == "day" else v
                    for g, v in zip(groups, row[: len(groups)], strict=True)
                )
                sums = totals.setdefault(key, [0, 0, 0, 0, 0])
                for i, value in enumerate(row[len(groups) :]):
                    sums[i] += int(value)
    return totals


def _local_day(dialect: str, offset: int) -> ColumnElement[Any]:
    if dialect == "sqlite":
        epoch = cast(func.strftime("%s", spend_log.c.created_at), Integer)
        return ((epoch + offset) // 86400).label("day")  # integer division, not REAL
    epoch_pg = extract("epoch", spend_log.c.created_at)
    return cast(func.floor((epoch_pg + offset) / 86400), Integer).label("day")


def _offset(zone: ZoneInfo, when: datetime) -> int:
    delta = when.astimezone(zone).utcoffset()
    return int(delta.total_seconds()) if delta is not None else 0


def _sort_key(key: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple("" if v is None else str(v) for v in key)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; the spend log writes UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _pico(value: Decimal) -> Decimal:
    return from_picousd(to_picousd(value))


def _round(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.000001"))


def _money(value: Decimal) -> str:
    return format(value.normalize(), "f") if value else "0"


def _percent(part: Decimal, whole: Decimal) -> str | None:
    if not whole:
        return None
    return str((part * 100 / whole).quantize(Decimal("0.01")))
