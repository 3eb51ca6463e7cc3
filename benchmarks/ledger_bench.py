"""Ledger and report benchmark: numbers for docs/benchmarks.md.

    python benchmarks/ledger_bench.py [--requests 2000] [--rows 1000000] [--skip-postgres]

1. reserve + settle per request (one process, sequential) with a team budget and a
   requests-per-minute limit, on the embedded SQLite ledger and on Redis; p50 and p99.
2. Cost reports over a spend log of --rows rows (20 teams, 90 days): one team's month grouped by
   team, model, tier and day, and every team's month, on SQLite and PostgreSQL.
Uses REDIS_URL / DATABASE_URL (defaults as in the tests), a Redis key prefix and a database of
its own, and removes them afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.ledger_build import open_ledger
from gateway.settings import Settings
from gateway.store import Store
from ledger.budgets import Amounts, Budget
from ledger.periods import Period
from ledger.reports import cost_report

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
ZONE = ZoneInfo("Europe/Berlin")
TEAMS = [f"team{i:02d}" for i in range(20)]
FIRST_DAY = datetime(2026, 1, 1, tzinfo=UTC)
COLUMNS = (
    "request_id, created_at, team, key_id, requested_model, deployment, tier, prompt_tokens, "
    "completion_tokens, cached_tokens, usage_estimated, cost_picousd, upstream_ms, overhead_ms, "
    "stream, cache_hit, status, error_type"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench_ledger(backend: str, requests: int, directory: Path) -> tuple[float, float]:
    url = f"sqlite:///{directory / f'ledger-{backend}.db'}"
    store_settings: dict[str, object] = {"url": url}
    prefix = f"rightsize-bench:{uuid.uuid4().hex[:8]}:"
    if backend == "redis":
        store_settings["redis_url"] = REDIS_URL
    settings = Settings.model_validate(
        {"store": store_settings, "ledger": {"redis_prefix": prefix, "timezone": ZONE.key}}
    )
    store = Store.connect(url)
    await store.migrate()
    ledger = open_ledger(settings, store)
    await ledger.budgets.put(Budget("team", "bench", Period.MONTHLY, limit_usd=Decimal(1_000_000)))
    await ledger.budgets.put(Budget("team", "bench", Period.MINUTE, limit_requests=10**9))
    hold_amounts = Amounts(picousd=53_900_000, tokens=28, requests=1)
    timings = []
    try:
        for i in range(requests + 50):
            started = time.perf_counter()
            hold = await ledger.reserve("bench", "key_bench", hold_amounts)
            assert hold is not None
            await ledger.settle(hold, hold_amounts)
            if i >= 50:  # warm-up: connections, script loading, counter rebuilds
                timings.append((time.perf_counter() - started) * 1000)
    finally:
        if backend == "redis":
            redis = ledger.counters.redis  # type: ignore[attr-defined]
            keys = [k async for k in redis.scan_iter(match=prefix + "*")]
            if keys:
                await redis.delete(*keys)
        await ledger.aclose()
        await store.aclose()
    return statistics.median(timings), percentile(timings, 0.99)


def spend_rows(n: int) -> list[tuple[object, ...]]:
    rng = random.Random(1)
    span = 90 * 24 * 3600
    rows = []
    # The log is append-only: rows arrive in time order, as in production.
    moments = sorted(rng.randrange(span) for _ in range(n))
    for i, second in enumerate(moments):
        created = FIRST_DAY + timedelta(seconds=second)
        prompt, completion = rng.randrange(10, 4000), rng.randrange(1, 1500)
        rows.append(
            (
                f"req_{i}",
                created,
                rng.choice(TEAMS),
                f"key_{rng.randrange(100)}",
                rng.choice(("auto", "light", "standard")),
                rng.choice(("gpt-4o-mini", "gpt-4o", "o4-mini", "claude-haiku-4-5")),
                rng.choice(("light", "standard", "reasoning")),
                prompt,
                completion,
                0,
                False,
                prompt * 150_000 + completion * 600_000,
                100.0,
                2.0,
                False,
                False,
                200,
                None,
            )
        )
    return rows


def load_sqlite(path: Path, rows: list[tuple[object, ...]]) -> None:
    conn = sqlite3.connect(path)
    text_rows = [
        (r[0], r[1].strftime("%Y-%m-%d %H:%M:%S.%f"), *r[2:])  # type: ignore[attr-defined]
        for r in rows
    ]
    marks = ", ".join("?" * 18)
    conn.executemany(f"INSERT INTO spend_log ({COLUMNS}) VALUES ({marks})", text_rows)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


async def load_postgres(url: str, rows: list[tuple[object, ...]]) -> None:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        columns = [c.strip() for c in COLUMNS.split(",")]
        await conn.copy_records_to_table("spend_log", records=rows, columns=columns)
        await conn.execute("ANALYZE spend_log")
    finally:
        await conn.close()


async def time_reports(url: str) -> dict[str, float]:
    store = Store.connect(url)
    groups = ("team", "model", "tier", "day")
    month = (date(2026, 2, 1), date(2026, 2, 28))
    results = {}
    try:
        await cost_report(store.engine, ZONE, *month, groups, team=TEAMS[0])  # warm-up
        for label, team in (("one team, one month", TEAMS[3]), ("all teams, one month", None)):
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                report = await cost_report(store.engine, ZONE, *month, groups, team=team)
                runs.append(time.perf_counter() - started)
            assert report["rows"]
            results[label] = min(runs)
    finally:
        await store.aclose()
    return results


async def postgres_database() -> tuple[str, str]:
    import asyncpg
    from sqlalchemy.engine import make_url

    base = make_url(DATABASE_URL).set(drivername="postgresql")
    name = f"rightsize_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(base.render_as_string(hide_password=False))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return base.render_as_string(hide_password=False), base.set(database=name).render_as_string(
        hide_password=False
    )


async def drop_database(admin: str, url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
    await conn.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    print(f"# {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for backend in ("sqlite", "redis"):
            p50, p99 = await bench_ledger(backend, args.requests, directory)
            print(f"reserve+settle {backend:6s}: p50 {p50:.3f} ms, p99 {p99:.3f} ms")
        rows = spend_rows(args.rows)
        sqlite_url = f"sqlite:///{directory / 'report.db'}"
        store = Store.connect(sqlite_url)
        await store.migrate()
        await store.aclose()
        load_sqlite(directory / "report.db", rows)
        for label, seconds in (await time_reports(sqlite_url)).items():
            print(f"report on {args.rows} rows, sqlite, {label}: {seconds * 1000:.0f} ms")
        if not args.skip_postgres:
            admin, url = await postgres_database()
            try:
                store = Store.connect(url)
                await store.migrate()
                await store.aclose()
                await load_postgres(url, rows)
                for label, seconds in (await time_reports(url)).items():
                    print(
                        f"report on {args.rows} rows, postgresql, {label}: {seconds * 1000:.0f} ms"
                    )
            finally:
                await drop_database(admin, url)


if __name__ == "__main__":
    asyncio.run(main())
