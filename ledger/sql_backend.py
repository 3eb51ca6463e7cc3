"""Ledger counters in PostgreSQL (no Redis configured): one transaction per operation.

The counter rows are locked (SELECT ... FOR UPDATE, in key order, so two transactions never wait
on each other in a cycle). The embedded SQLite store has its own backend (sqlite_backend.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.backend import Admitted, Claim, CounterState, NeedsRebuild, Refused
from ledger.budgets import Amounts
from ledger.tables import ledger_counters as counters
from ledger.tables import ledger_reservations as holds
from ledger.tables import ledger_workers as workers


class SQLCounters:
    """The ledger backend on PostgreSQL without Redis."""

    applies_in_order = False  # a call waits for a pooled connection: a later one may overtake it

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def reserve(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        amounts: Amounts,
        now_ms: int,
        expires_at_ms: int,
    ) -> Admitted | Refused | NeedsRebuild:
        keys = [c.counter for c in claims]
        async with self.engine.begin() as conn:
            spent = await self._lock(conn, keys)
            missing = tuple(i for i, key in enumerate(keys) if key not in spent)
            if missing:
                return NeedsRebuild(missing)
            await conn.execute(
                delete(holds).where(holds.c.counter.in_(keys), holds.c.expires_at_ms <= now_ms)
            )
            reserved = await _reserved(conn, keys)
            states = []
            for index, claim in enumerate(claims):
                state = CounterState(claim.counter, spent[claim.counter], reserved[claim.counter])
                if not fits(claim, state, amounts):
                    return Refused(index, state)
                states.append(state)
            await conn.execute(
                insert(holds),
                [
                    {
                        "hold_id": hold_id,
                        "counter": key,
                        "picousd": amounts.picousd,
                        "tokens": amounts.tokens,
                        "requests": amounts.requests,
                        "expires_at_ms": expires_at_ms,
                    }
                    for key in keys
                ],
            )
        return Admitted(
            tuple(CounterState(s.counter, s.spent, s.reserved + amounts) for s in states)
        )

    async def settle(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        actual: Amounts,
        reserved: Amounts,
        *,
        only_held: bool = False,
    ) -> tuple[CounterState, ...]:
        keys = [c.counter for c in claims]
        async with self.engine.begin() as conn:
            await self._lock(conn, keys)
            released = await conn.execute(
                delete(holds).where(holds.c.hold_id == hold_id).returning(holds.c.counter)
            )
            holding = {row[0] for row in released}
            charged = [k for k in keys if k in holding] if only_held else keys
            await conn.execute(
                update(counters)
                .where(counters.c.key.in_(charged))
                .values(
                    spent_picousd=counters.c.spent_picousd + actual.picousd,
                    spent_tokens=counters.c.spent_tokens + actual.tokens,
                    spent_requests=counters.c.spent_requests + actual.requests,
                )
            )
            spent = await self._lock(conn, keys)
            held = await _reserved(conn, keys)
        return tuple(CounterState(k, spent.get(k, Amounts()), held[k]) for k in keys)

    async def initialize(self, claim: Claim, spent: Amounts, now_ms: int) -> None:
        async with self.engine.begin() as conn:
            # Two requests may rebuild the same counter at once: the insert decides which one
            # does (the other waits on the unique key, then inserts nothing).
            inserted = await conn.scalar(
                pg_insert(counters)
                .values(
                    key=claim.counter,
                    spent_picousd=spent.picousd,
                    spent_tokens=spent.tokens,
                    spent_requests=spent.requests,
                    expires_at_ms=claim.expires_at_ms,
                )
                .on_conflict_do_nothing(index_elements=[counters.c.key])
                .returning(counters.c.key)
            )
            if inserted is None:
                return
            # Holds of a counter that had vanished belong to the lost state.
            await conn.execute(delete(holds).where(holds.c.counter == claim.counter))
            # Counters of past windows are never read again.
            await conn.execute(delete(counters).where(counters.c.expires_at_ms < now_ms))

    async def read(self, claims: Sequence[Claim], now_ms: int) -> tuple[CounterState | None, ...]:
        keys = [c.counter for c in claims]
        async with self.engine.begin() as conn:
            spent = await self._lock(conn, keys)
            await conn.execute(
                delete(holds).where(holds.c.counter.in_(keys), holds.c.expires_at_ms <= now_ms)
            )
            held = await _reserved(conn, keys)
        return tuple(CounterState(k, spent[k], held[k]) if k in spent else None for k in keys)

    async def heartbeat(self, owner: str, now_ms: int) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(
                pg_insert(workers)
                .values(owner=owner, seen_at_ms=now_ms)
                .on_conflict_do_update(
                    index_elements=[workers.c.owner], set_={"seen_at_ms": now_ms}
                )
            )

    async def sweep(self, stale_before_ms: int, limit: int) -> int:
        async with self.engine.begin() as conn:
            # SKIP LOCKED: two processes sweeping at once split the dead owners between them.
            silent = list(
                await conn.scalars(
                    select(workers.c.owner)
                    .where(workers.c.seen_at_ms < stale_before_ms)
                    .order_by(workers.c.seen_at_ms)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                )
            )
            released = 0
            for owner in silent:
                result = await conn.execute(delete(holds).where(holds.c.hold_id.like(f"{owner}.%")))
                released += result.rowcount
            if silent:
                await conn.execute(delete(workers).where(workers.c.owner.in_(silent)))
        return released

    async def retire(self, owner: str) -> int:
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(holds).where(holds.c.hold_id.like(f"{owner}.%")))
            await conn.execute(delete(workers).where(workers.c.owner == owner))
        return int(result.rowcount)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def aclose(self) -> None:
        """Nothing to close: the engine is the store's, and the store disposes of it."""

    async def _lock(self, conn: AsyncConnection, keys: list[str]) -> dict[str, Amounts]:
        query = (
            select(
                counters.c.key,
                counters.c.spent_picousd,
                counters.c.spent_tokens,
                counters.c.spent_requests,
            )
            .where(counters.c.key.in_(keys))
            .order_by(counters.c.key)
            .with_for_update()
        )
        rows = await conn.execute(query)
        return {r.key: Amounts(r.spent_picousd, r.spent_tokens, r.spent_requests) for r in rows}

    async def forget(self, counter_prefix: str) -> int:
        async with self.engine.begin() as conn:
            # autoescape: a team name's `_` (and `%`) match only themselves in the LIKE.
            await conn.execute(
                delete(holds).where(holds.c.counter.startswith(counter_prefix, autoescape=True))
            )
            result = await conn.execute(
                delete(counters).where(counters.c.key.startswith(counter_prefix, autoescape=True))
            )
        return int(result.rowcount)


async def _reserved(conn: AsyncConnection, keys: list[str]) -> dict[str, Amounts]:
    rows = await conn.execute(
        select(
            holds.c.counter,
            func.sum(holds.c.picousd),
            func.sum(holds.c.tokens),
            func.sum(holds.c.requests),
        )
        .where(holds.c.counter.in_(keys))
        .group_by(holds.c.counter)
    )
    found = {r[0]: Amounts(int(r[1]), int(r[2]), int(r[3])) for r in rows}
    return {k: found.get(k, Amounts()) for k in keys}


def fits(claim: Claim, state: CounterState, amounts: Amounts) -> bool:
    for limit, spent, held, amount in (
        (claim.limit_picousd, state.spent.picousd, state.reserved.picousd, amounts.picousd),
        (claim.limit_tokens, state.spent.tokens, state.reserved.tokens, amounts.tokens),
        (claim.limit_requests, state.spent.requests, state.reserved.requests, amounts.requests),
    ):
        if limit is not None and amount > 0 and spent + held + amount > limit:
            return False
    return True
