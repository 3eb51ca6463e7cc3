"""The Redis ledger's reserve + settle alone, as the gateway calls them (uvloop, one team budget),
or the prompt cache store's GET of a hit and SET (`--what cache`), for two or more source trees
in alternating rounds: CPU time per pair (or call) and latency.

    python benchmarks/ledger_redis_calls.py --tree before=/tmp/base --tree after=. \\
        [--what ledger|cache] [--rounds 6] [--pairs 2000]

Each round runs each tree's code in a fresh process (its directory first on the path), the
trees in a rotated order, so that a shared machine's drift falls on all of them alike. A
process reports its own CPU seconds (time.process_time) over the timed pairs: what the calls
cost the gateway's process, which the machine's load does not inflate as it does latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


async def _pairs(n: int, directory: Path) -> dict[str, float]:
    from gateway.ledger_build import open_ledger
    from gateway.settings import Settings
    from gateway.store import Store
    from ledger.budgets import Amounts, Budget
    from ledger.periods import Period

    url = f"sqlite:///{directory / 'ledger.db'}"
    prefix = f"rightsize-bench:{uuid.uuid4().hex[:8]}:"
    settings = Settings.model_validate(
        {"store": {"url": url, "redis_url": REDIS_URL}, "ledger": {"redis_prefix": prefix}}
    )
    store = Store.connect(url)
    await store.migrate()
    ledger = open_ledger(settings, store)
    await ledger.budgets.put(Budget("team", "bench", Period.MONTHLY, limit_usd=Decimal(1_000_000)))
    amounts = Amounts(picousd=53_900_000, tokens=28, requests=1)
    timings = []
    try:
        for _ in range(200):  # connections, scripts loaded, the counter built
            hold = await ledger.reserve("bench", "key_bench", amounts)
            assert hold is not None
            await ledger.settle(hold, amounts)
        cpu = time.process_time()
        for _ in range(n):
            started = time.perf_counter()
            hold = await ledger.reserve("bench", "key_bench", amounts)
            assert hold is not None
            await ledger.settle(hold, amounts)
            timings.append((time.perf_counter() - started) * 1000)
        cpu = time.process_time() - cpu
    finally:
        redis = ledger.counters.redis  # type: ignore[attr-defined]
        keys = [k async for k in redis.scan_iter(match=prefix + "*")]
        if keys:
            await redis.delete(*keys)
        await ledger.aclose()
        await store.aclose()
    return {"cpu_us": cpu / n * 1e6, "p50_ms": statistics.median(timings)}


async def _cache_calls(n: int) -> dict[str, float]:
    from gateway.cache.stores import RedisStore

    prefix = f"rightsize-bench:{uuid.uuid4().hex[:8]}:"
    store = RedisStore(REDIS_URL, prefix, timeout_s=0.05, retry_after_s=1.0)
    value = b"x" * 700  # about an answer's entry
    figures: dict[str, float] = {}
    try:
        await store.start()
        await store.set("bench", "k", value, 60)
        for _ in range(200):
            await store.get("bench", "k")
        for name, call in (
            ("get", lambda: store.get("bench", "k")),
            ("set", lambda: store.set("bench", "k", value, 60)),
        ):
            timings = []
            cpu = time.process_time()
            for _ in range(n):
                started = time.perf_counter()
                await call()
                timings.append((time.perf_counter() - started) * 1000)
            figures[f"{name}_cpu_us"] = (time.process_time() - cpu) / n * 1e6
            figures[f"{name}_p50_ms"] = statistics.median(timings)
    finally:
        await store.delete("bench", "k")
        await store.aclose()
    return figures


def _child(what: str, n: int) -> None:
    import uvloop

    with tempfile.TemporaryDirectory() as scratch:
        figures = uvloop.run(_pairs(n, Path(scratch)) if what == "ledger" else _cache_calls(n))
        print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR, repeatable")
    parser.add_argument("--what", choices=["ledger", "cache"], default="ledger")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()
    trees = [
        (name, Path(path).resolve()) for name, _, path in (t.partition("=") for t in args.tree)
    ]
    found: dict[str, list[dict[str, float]]] = {name: [] for name, _ in trees}
    loads = []
    for round_ in range(args.rounds):
        shift = round_ % len(trees)
        for name, tree in trees[shift:] + trees[:shift]:
            loads.append(os.getloadavg()[0])
            env = {**os.environ, "PYTHONPATH": str(tree)}
            command = [sys.executable, str(Path(__file__).resolve()), "--child", args.what]
            command.append(str(args.pairs))
            done = subprocess.run(command, cwd=tree, env=env, capture_output=True, check=True)
            figures = json.loads(done.stdout.decode().strip().splitlines()[-1])
            found[name].append(figures)
            print(f"round {round_ + 1} {name:<10} {figures}", flush=True)
    calls = "reserve + settle pairs" if args.what == "ledger" else "cache GETs and SETs each"
    print(
        f"\n{args.pairs} {calls} x {args.rounds} rounds per tree; "
        f"load average (1 min) {min(loads):.2f} to {max(loads):.2f}\n"
    )
    # The least of the rounds is the one the machine's other work disturbed least: contention
    # only ever adds CPU time (cache misses, migrations), so min is the steadier comparison.
    names = list(found[trees[0][0]][0])
    print("| tree | " + " | ".join(f"{n}, min / median of rounds" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for name, _ in trees:
        cells = []
        for figure in names:
            values = [f[figure] for f in found[name]]
            digits = 3 if figure.endswith("_ms") else 0
            cells.append(f"{min(values):.{digits}f} / {statistics.median(values):.{digits}f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
