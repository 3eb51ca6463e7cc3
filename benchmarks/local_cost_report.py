"""Local GPU-hour costing in the reports: the cost of recomputing busy time from the spend log.

    python benchmarks/local_cost_report.py [--rows 1000000] [--skip-postgres]

The spend log of benchmarks/ledger_bench.py (20 teams, 90 days, in time order), with half its
rows served by one local GPU-hour-priced deployment; times ledger.reports.local_spend over
February 2026 (all of that deployment's rows are read: busy time is every team's), for all
teams and for one, on SQLite and PostgreSQL; best of 3 after a warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from ledger_bench import (  # type: ignore[import-not-found]
    TEAMS,
    ZONE,
    drop_database,
    load_postgres,
    load_sqlite,
    postgres_database,
    spend_rows,
)

from gateway.store import Store
from ledger.reports import local_spend
from policies import Catalog, Deployment, ModelSpec

LOCAL = "local-llama"


def local_deployment() -> Deployment:
    spec = ModelSpec.model_validate(
        {
            "name": LOCAL,
            "model": "hosted_vllm/llama",
            "local": True,
            "gpu_cost": {"usd_per_gpu_hour": "2.50", "gpus": 2, "expected_tokens_per_s": "2000"},
        }
    )
    deployment = Catalog.build([spec], lambda _: None).get(LOCAL)
    assert deployment is not None
    return deployment


def with_local_rows(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    # Column 5 is the deployment (ledger_bench.COLUMNS); every other row goes local.
    return [(*r[:5], LOCAL, *r[6:]) if i % 2 == 0 else r for i, r in enumerate(rows)]


async def time_local(url: str) -> dict[str, tuple[float, int]]:
    store = Store.connect(url)
    month = (date(2026, 2, 1), date(2026, 2, 28))
    local = [local_deployment()]
    results = {}
    try:
        await local_spend(store.engine, ZONE, *month, local)  # warm-up
        for label, team in (("all teams", None), ("one team", TEAMS[3])):
            runs = []
            for _ in range(3):
                started = time.perf_counter()
                report = await local_spend(store.engine, ZONE, *month, local, team=team)
                runs.append(time.perf_counter() - started)
            results[label] = (min(runs), report[0]["requests"])
    finally:
        await store.aclose()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    print(f"# {platform.python_version()} on {platform.machine()}, {os.cpu_count()} CPUs")
    print(f"# load average {os.getloadavg()}")
    rows = with_local_rows(spend_rows(args.rows))
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'report.db'}"
        store = Store.connect(sqlite_url)
        await store.migrate()
        await store.aclose()
        load_sqlite(Path(tmp) / "report.db", rows)
        for label, (seconds, n) in (await time_local(sqlite_url)).items():
            print(f"local_spend sqlite, {label} ({n} rows): {seconds * 1000:.0f} ms")
    if not args.skip_postgres:
        admin, url = await postgres_database()
        try:
            store = Store.connect(url)
            await store.migrate()
            await store.aclose()
            await load_postgres(url, rows)
            for label, (seconds, n) in (await time_local(url)).items():
                print(f"local_spend postgresql, {label} ({n} rows): {seconds * 1000:.0f} ms")
        finally:
            await drop_database(admin, url)
    print(f"# load average {os.getloadavg()}")


if __name__ == "__main__":
    asyncio.run(main())
