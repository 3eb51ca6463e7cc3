"""What the durable spend log adds to each request: `SpendWriter.record` (fit, journal, queue).

    python benchmarks/spend_record.py [--records 5000] [--rounds 7]

Times `record()` on a writer whose store is never reached (the batches are written after the
timing, off the request path), with and without the write-ahead journal, and its parts: fitting
the row to the schema and encoding its journal line. Best of `--rounds`, microseconds per call.
Results: docs/benchmarks.md, "Spend log: the cost of a durable row".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from gateway.spend import SpendWriter, encode
from gateway.store import SpendRecord, Store
from gateway.store.records import fit_spend_record


def _record(i: int) -> SpendRecord:
    return SpendRecord(
        request_id=f"req_{i:032x}",
        created_at=datetime.now(UTC),
        status=200,
        team="search",
        key_id="key_0123456789abcdef",
        requested_model="auto",
        deployment="gpt-4o-mini",
        tier="light",
        prompt_tokens=812,
        completion_tokens=164,
        cost_usd=Decimal("0.0002202"),
        upstream_ms=412.5,
        overhead_ms=1.9,
        route_reason="demand 0.212 -> tier 'light' (< min_demand 0.476 of 'standard')",
        reasoning_demand=0.2123456789,
        token_budget_p50=180,
        token_budget_p90=420,
        category="chat",
        router_artifact="5e2c602681c1fb62",
        config_hash="0123456789abcdef",
    )


def _best_us(call: Callable[[SpendRecord], object], records: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        batch = [_record(i) for i in range(records)]
        started = time.perf_counter()
        for record in batch:
            call(record)
        best = min(best, (time.perf_counter() - started) / records * 1e6)
    return best


async def _writer_cost(directory: Path, journal: bool, records: int, rounds: int) -> float:
    url = f"sqlite:///{directory / 'rightsize.db'}"
    store = Store.connect(url)
    await store.migrate()
    writer = SpendWriter(
        lambda: Store.connect(url),
        flush_interval_s=3600,  # nothing is written while the timing runs
        batch_size=500,
        fallback_file=directory / "spend-log-unwritten.jsonl",
        journal_dir=directory / "journal" if journal else None,
    )
    try:
        return _best_us(writer.record, records, rounds)
    finally:
        await writer.aclose()
        await store.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(f"records={args.records} rounds={args.rounds} cpus={os.cpu_count()} load={load:.2f}")
    print("| step | best µs per request |")
    print("|---|---|")
    parts = (("fit the row to the schema", fit_spend_record), ("encode its journal line", encode))
    for name, call in parts:
        print(f"| {name} | {_best_us(call, args.records, args.rounds):.2f} |")
    for journal in (False, True):
        with tempfile.TemporaryDirectory() as directory:
            cost = asyncio.run(_writer_cost(Path(directory), journal, args.records, args.rounds))
        what = "with the journal" if journal else "without the journal"
        print(f"| `record()`, {what} | {cost:.2f} |")


if __name__ == "__main__":
    main()
