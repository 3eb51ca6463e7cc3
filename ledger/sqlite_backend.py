"""Ledger counters in the embedded SQLite file: each operation is one BEGIN IMMEDIATE transaction.

BEGIN IMMEDIATE takes the database's write lock before the first read, so a check and its
increment cannot interleave with another process's. The whole transaction runs in one call on a
dedicated thread (one hop off the event loop instead of one per statement).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from ledger.backend import Admitted, Claim, CounterState, NeedsRebuild, Refused
from ledger.budgets import Amounts
from ledger.sql_backend import fits

_T = TypeVar("_T")
_BUSY_TIMEOUT_S = 30.0


class SQLiteCounters:
    """The embedded ledger backend: tables ledger_counters and ledger_reservations."""

    applies_in_order = True  # one thread runs the operations in the order they are submitted

    def __init__(self, path: Path) -> None:
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        self._conn: sqlite3.Connection | None = None

    async def _call(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._transaction, operation)

    def _transaction(self, operation: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._conn is None:
            self._conn = sqlite3.connect(
                self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = operation(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return result

    async def reserve(
        self,
        hold_id: str,
        claims: Sequence[Claim],
        amounts: Amounts,
        now_ms: int,
        expires_at_ms: int,
    ) -> Admitted | Refused | NeedsRebuild:
        keys = [c.counter for c in claims]

        def run(conn: sqlite3.Connection) -> Admitted | Refused | NeedsRebuild:
            spent = _spent(conn, keys)
            missing = tuple(i for i, key in enumerate(keys) if key not in spent)
            if missing:
                return NeedsRebuild(missing)
            _purge(conn, keys, now_ms)
            held = _reserved(conn, keys)
            states = []
            for index, claim in enumerate(claims):
                state = CounterState(claim.counter, spent[claim.counter], held[claim.counter])
                if not fits(claim, state, amounts):
                    return Refused(index, state)
                states.append(CounterState(state.counter, state.spent, state.reserved + amounts))
            conn.executemany(
                "INSERT INTO ledger_reservations (hold_id, counter, picousd, tokens, requests, "
                "expires_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (hold_id, k, amounts.picousd, amounts.tokens, amounts.requests, expires_at_ms)
                    for k in keys
                ],
            )
            return Admitted(tuple(states))

        return await self._call(run)

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

        def run(conn: sqlite3.Connection) -> tuple[CounterState, ...]:
            holding = {
                row[0]
                for row in conn.execute(
                    "SELECT counter FROM ledger_reservations WHERE hold_id = ?", (hold_id,)
                )
            }
            conn.execute("DELETE FROM ledger_reservations WHERE hold_id = ?", (hold_id,))
            charged = [k for k in keys if k in holding] if only_held else keys
            conn.executemany(
                "UPDATE ledger_counters SET spent_picousd = spent_picousd + ?, "
                "spent_tokens = spent_tokens + ?, spent_requests = spent_requests + ? "
                "WHERE key = ?",
                [(actual.picousd, actual.tokens, actual.requests, k) for k in charged],
            )
            spent, held = _spent(conn, keys), _reserved(conn, keys)
            return tuple(CounterState(k, spent.get(k, Amounts()), held[k]) for k in keys)

        return await self._call(run)

    async def initialize(self, claim: Claim, spent: Amounts, now_ms: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            if conn.execute(
                "SELECT 1 FROM ledger_counters WHERE key = ?", (claim.counter,)
            ).fetchone():
                return
            conn.execute("DELETE FROM ledger_reservations WHERE counter = ?", (claim.counter,))
            conn.execute(
                "INSERT INTO ledger_counters (key, spent_picousd, spent_tokens, spent_requests, "
                "expires_at_ms) VALUES (?, ?, ?, ?, ?)",
                (claim.counter, spent.picousd, spent.tokens, spent.requests, claim.expires_at_ms),
            )
            # Counters of past windows are never read again.
            conn.execute("DELETE FROM ledger_counters WHERE expires_at_ms < ?", (now_ms,))

        await self._call(run)

    async def read(self, claims: Sequence[Claim], now_ms: int) -> tuple[CounterState | None, ...]:
        keys = [c.counter for c in claims]

        def run(conn: sqlite3.Connection) -> tuple[CounterState | None, ...]:
            spent = _spent(conn, keys)
            _purge(conn, keys, now_ms)
            held = _reserved(conn, keys)
            return tuple(CounterState(k, spent[k], held[k]) if k in spent else None for k in keys)

        return await self._call(run)

    async def heartbeat(self, owner: str, now_ms: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO ledger_workers (owner, seen_at_ms) VALUES (?, ?) "
                "ON CONFLICT (owner) DO UPDATE SET seen_at_ms = excluded.seen_at_ms",
                (owner, now_ms),
            )

        await self._call(run)

    async def sweep(self, stale_before_ms: int, limit: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            silent = [
                row[0]
                for row in conn.execute(
                    "SELECT owner FROM ledger_workers WHERE seen_at_ms < ? "
                    "ORDER BY seen_at_ms LIMIT ?",
                    (stale_before_ms, limit),
                )
            ]
            released = 0
            for owner in silent:
                released += conn.execute(
                    "DELETE FROM ledger_reservations WHERE hold_id LIKE ?", (f"{owner}.%",)
                ).rowcount
                conn.execute("DELETE FROM ledger_workers WHERE owner = ?", (owner,))
            return released

        return await self._call(run)

    async def retire(self, owner: str) -> int:
        def run(conn: sqlite3.Connection) -> int:
            released = conn.execute(
                "DELETE FROM ledger_reservations WHERE hold_id LIKE ?", (f"{owner}.%",)
            ).rowcount
            conn.execute("DELETE FROM ledger_workers WHERE owner = ?", (owner,))
            return int(released)

        return int(await self._call(run))

    async def ping(self) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("SELECT 1").fetchone()

        await self._call(run)

    async def aclose(self) -> None:
        def close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        await asyncio.get_running_loop().run_in_executor(self._thread, close)
        self._thread.shutdown(wait=True)

    async def forget(self, counter_prefix: str) -> int:
        # SQLite's LIKE ignores ASCII case (team `Search` is not `search`): compare the prefix.
        def run(conn: sqlite3.Connection) -> int:
            size = len(counter_prefix)
            conn.execute(
                "DELETE FROM ledger_reservations WHERE substr(counter, 1, ?) = ?",
                (size, counter_prefix),
            )
            deleted = conn.execute(
                "DELETE FROM ledger_counters WHERE substr(key, 1, ?) = ?", (size, counter_prefix)
            )
            return deleted.rowcount

        return await self._call(run)


def _marks(keys: Sequence[str]) -> str:
    return ", ".join("?" * len(keys))


def _spent(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, Amounts]:
    rows = conn.execute(
        "SELECT key, spent_picousd, spent_tokens, spent_requests FROM ledger_counters "
        f"WHERE key IN ({_marks(keys)})",
        list(keys),
    )
    return {r[0]: Amounts(r[1], r[2], r[3]) for r in rows}


def _reserved(conn: sqlite3.Connection, keys: Sequence[str]) -> dict[str, Amounts]:
    rows = conn.execute(
        "SELECT counter, SUM(picousd), SUM(tokens), SUM(requests) FROM ledger_reservations "
        f"WHERE counter IN ({_marks(keys)}) GROUP BY counter",
        list(keys),
    )
    found = {r[0]: Amounts(int(r[1]), int(r[2]), int(r[3])) for r in rows}
    return {k: found.get(k, Amounts()) for k in keys}


def _purge(conn: sqlite3.Connection, keys: Sequence[str], now_ms: int) -> None:
    conn.execute(
        f"DELETE FROM ledger_reservations WHERE counter IN ({_marks(keys)}) AND expires_at_ms <= ?",
        [*keys, now_ms],
    )
