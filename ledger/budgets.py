"""Budgets as typed values, and their rows in the SQL store; spend-log totals for rebuilds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import String, and_, case, delete, func, insert, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.money import from_picousd, to_picousd
from ledger.periods import Period, Window
from ledger.tables import budgets, spend_log

Scope = Literal["team", "key"]
Mode = Literal["hard", "soft"]

# Spend-log rows of requests the ledger never admitted: they hold no budget. Refused by a budget
# (429), or by an outage (503) before the ledger admitted them: the counters or the budgets could
# not be reached, or the fail-open allowance was used up.
UNMETERED_ERRORS = (
    "budget_exceeded",
    "rate_limit_exceeded",
    "ledger_unavailable",
    "store_unavailable",
    "service_unavailable",
)


@dataclass(frozen=True, slots=True)
class Amounts:
    """What a request costs or a window holds: integer pico-dollars, tokens and requests."""

    picousd: int = 0
    tokens: int = 0
    requests: int = 0

    def __add__(self, other: Amounts) -> Amounts:
        return Amounts(
            self.picousd + other.picousd,
            self.tokens + other.tokens,
            self.requests + other.requests,
        )


@dataclass(frozen=True, slots=True)
class Budget:
    """A limit on a team's or a key's spend, tokens and/or requests in each window of a period."""

    scope: Scope
    subject: str
    period: Period
    limit_usd: Decimal | None = None
    limit_tokens: int | None = None
    limit_requests: int | None = None
    mode: Mode = "hard"
    soft_at_percent: int | None = None
    alert_percents: tuple[int, ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return budget_id(self.scope, self.subject, self.period)

    @property
    def limit_picousd(self) -> int | None:
        return None if self.limit_usd is None else to_picousd(self.limit_usd)

    def counter(self, window: Window) -> str:
        """The name of this budget's counter for one window."""
        return f"{self.scope}:{self.subject}:{self.period.value}:{window.label}"

    def limits(self) -> tuple[int | None, int | None, int | None]:
        return self.limit_picousd, self.limit_tokens, self.limit_requests


def budget_id(scope: str, subject: str, period: Period | str) -> str:
    return f"{scope}:{subject}:{Period(period).value}"


class BudgetStore:
    """Budgets in the SQL store (SQLite or PostgreSQL), and spend-log totals per window."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def put(self, budget: Budget) -> Budget:
        row = _row(budget)
        async with self.engine.begin() as conn:
            updated = await conn.execute(
                update(budgets).where(budgets.c.id == budget.id).values(**row)
            )
            if updated.rowcount == 0:
                await conn.execute(insert(budgets).values(id=budget.id, **row))
        return budget

    async def get(self, id_: str) -> Budget | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(budgets).where(budgets.c.id == id_))).first()
        return _budget(row._mapping) if row is not None else None

    async def delete(self, id_: str) -> bool:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(budgets).where(budgets.c.id == id_))
        return bool(result.rowcount)

    async def find(self, scope: Scope | None = None, subject: str | None = None) -> list[Budget]:
        query = select(budgets).order_by(budgets.c.id)
        if scope is not None:
            query = query.where(budgets.c.scope == scope)
        if subject is not None:
            query = query.where(budgets.c.subject == subject)
        async with self.engine.connect() as conn:
            return [_budget(r._mapping) for r in await conn.execute(query)]

    async def for_request(self, team: str, key_id: str) -> list[Budget]:
        """The budgets a request of this team and key counts against."""
        query = select(budgets).where(
            or_(
                and_(budgets.c.scope == "team", budgets.c.subject == team),
                and_(budgets.c.scope == "key", budgets.c.subject == key_id),
            )
        )
        async with self.engine.connect() as conn:
            return [_budget(r._mapping) for r in await conn.execute(query)]

    async def archive_team(self, conn: AsyncConnection, name: str, archived_id: str) -> int:
        """Move a deleted team's budgets to its archived id, in the caller's transaction
        (Store.delete_team, Store.create_team): a new team of that name starts without them."""
        moved = await conn.execute(
            update(budgets)
            .where(budgets.c.scope == "team", budgets.c.subject == name)
            .values(
                subject=archived_id,
                id=literal(f"team:{archived_id}:", String) + budgets.c.period,
            )
        )
        return int(moved.rowcount)

    async def spent(self, budget: Budget, window: Window) -> Amounts:
        """What the spend log says this budget's subject used in the window (the rebuild source)."""
        column = spend_log.c.team if budget.scope == "team" else spend_log.c.key_id
        conditions = [
            column == budget.subject,
            spend_log.c.deployment.is_not(None),
            or_(spend_log.c.error_type.is_(None), spend_log.c.error_type.not_in(UNMETERED_ERRORS)),
        ]
        if window.start is not None and window.end is not None:
            # The spend log holds UTC; SQLite would compare local wall-clock text.
            start, end = window.start.astimezone(UTC), window.end.astimezone(UTC)
            conditions += [spend_log.c.created_at >= start, spend_log.c.created_at < end]
        query = select(
            func.coalesce(func.sum(spend_log.c.cost_picousd), 0),
            # A prompt-cache hit counts as a request (rate limits) but uses no upstream tokens.
            func.coalesce(
                func.sum(
                    case(
                        (
                            spend_log.c.cache_hit.is_(False),
                            spend_log.c.prompt_tokens + spend_log.c.completion_tokens,
                        ),
                        else_=0,
                    )
                ),
                0,
            ),
            func.count(),
        ).where(*conditions)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).one()
        return Amounts(int(row[0]), int(row[1]), int(row[2]))


def usd(picousd: int) -> Decimal:
    return from_picousd(picousd)


def _row(budget: Budget) -> dict[str, Any]:
    return {
        "scope": budget.scope,
        "subject": budget.subject,
        "period": budget.period.value,
        "limit_picousd": budget.limit_picousd,
        "limit_tokens": budget.limit_tokens,
        "limit_requests": budget.limit_requests,
        "mode": budget.mode,
        "soft_at_percent": budget.soft_at_percent,
        "alert_percents": list(budget.alert_percents),
        "updated_at": datetime.now(UTC),
    }


def _budget(row: Any) -> Budget:
    pico = row["limit_picousd"]
    return Budget(
        scope=row["scope"],
        subject=row["subject"],
        period=Period(row["period"]),
        limit_usd=from_picousd(pico) if pico is not None else None,
        limit_tokens=row["limit_tokens"],
        limit_requests=row["limit_requests"],
        mode=row["mode"],
        soft_at_percent=row["soft_at_percent"],
        alert_percents=tuple(row["alert_percents"] or ()),
    )


__all__: Sequence[str] = ["Amounts", "Budget", "BudgetStore", "budget_id"]
