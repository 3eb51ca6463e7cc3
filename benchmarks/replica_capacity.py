"""What one replica of the scale-out deployment needs: resident memory of its serving process
and the requests per second it answers, on PostgreSQL and Redis as deploy/ runs it.

    python benchmarks/replica_capacity.py [--duration S] [--transport openai_http|litellm]
        [--database-url URL] [--redis-url URL]

One `rightsize serve` (one worker) on a fresh PostgreSQL database and Redis under a prefix of
its own, the router on, a team budget on the Redis ledger, the Redis cache looked up with a new
prompt on every request (no hit helps), against the fake upstream; loaded by
benchmarks/loadgen.py at concurrency 1 and 32 (closed loop). Prints a markdown table
(docs/deploy.md quotes it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_stack import (  # noqa: E402
    create_team,
    new_workdir,
    rightsize_config,
    rss_mib,
    settle,
    start_rightsize,
    start_upstream,
)
from benchmarks.gateway_bench import run_load  # noqa: E402
from benchmarks.loadgen import LoadSpec  # noqa: E402
from tests.fake_upstream import free_port  # noqa: E402

BODY = {"model": "auto", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}


async def _admin_sql(dsn: str, statement: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per load")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1/test"),
    )
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--transport",
        default="openai_http",
        choices=["openai_http", "litellm"],
        help="the models' transport (litellm, the default of a model entry, costs memory)",
    )
    args = parser.parse_args()

    workdir = new_workdir()
    database = f"rightsize_capacity_{uuid.uuid4().hex[:8]}"
    base = args.database_url.rsplit("/", 1)[0]
    asyncio.run(_admin_sql(args.database_url, f'CREATE DATABASE "{database}"'))
    prefix = f"rightsize-capacity:{uuid.uuid4().hex[:8]}:"
    upstream_port, port = free_port(), free_port()
    upstream = start_upstream(upstream_port, workdir)
    config = rightsize_config(
        workdir,
        upstream_port,
        transport=args.transport,
        router=True,
        redis_url=args.redis_url,
        redis_prefix=prefix,
    )
    config["store"]["url"] = f"{base}/{database}"
    gateway = start_rightsize("replica", config, port, workdir)
    load = os.getloadavg()
    try:
        upstream.wait_ready("/_requests")
        gateway.wait_ready("/readyz")
        headers = create_team(gateway, budget_usd="1000000")
        settle(gateway.process.pid)
        rss_start = rss_mib(gateway.process.pid)
        rows = []
        for concurrency in (1, 32):
            spec = LoadSpec(
                port=port,
                path="/v1/chat/completions",
                body=BODY,
                mode="closed",
                duration_s=args.duration,
                headers=headers,
                concurrency=concurrency,
                unique_prompts=True,
            )
            result = run_load(spec)
            rate = len(result.latencies_ms) / result.window_s
            latencies = sorted(result.latencies_ms)
            p50 = latencies[len(latencies) // 2]
            p99 = latencies[int(len(latencies) * 0.99)]
            errors = sum(result.errors.values())
            rows.append((concurrency, rate, p50, p99, errors))
        rss_end = rss_mib(gateway.process.pid)
    finally:
        gateway.stop()
        upstream.stop()
        asyncio.run(
            _admin_sql(args.database_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        )
        import redis

        client = redis.Redis.from_url(args.redis_url)
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)

    after = os.getloadavg()
    print(
        f"`python benchmarks/replica_capacity.py --duration {args.duration:g} "
        f"--transport {args.transport}`, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC. Machine: {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average (1, 5, 15 min) before "
        f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}, after {after[0]:.2f}, {after[1]:.2f}, "
        f"{after[2]:.2f}.\n"
    )
    print("| load | req/s | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|")
    for concurrency, rate, p50, p99, errors in rows:
        print(f"| c={concurrency} | {rate:.0f} | {p50:.2f} | {p99:.2f} | {errors} |")
    print(
        f"\nRSS of the serving process: {rss_start:.0f} MiB after start-up and one request, "
        f"{rss_end:.0f} MiB after the loads."
    )


if __name__ == "__main__":
    main()
