"""What shadow evaluation adds to the client's requests: p50 and p99, shadowing on vs off.

    python benchmarks/shadow_overhead.py [--requests 200] [--rounds 5]

Two apps in one process against the fake upstream (tests/fake_upstream.py, on loopback),
router and cache off, SQLite, `auto` routed to the light tier: shadowing off; shadowing on at
sample rate 1.0 (every request's strong tier and the judge, twice, called in the background on
the same event loop, each held against the shadow budget and written to the spend log and
router_outcomes). The cases take turns, `--requests` sequential requests each per round, so
that load on a shared host touches them alike; after each round the shadow queue is drained, so
that no case's round runs beside the other's backlog. Prints the client's wall time p50 and p99 per
case and what the on case adds, and the shadow loop's counts. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.app import create_app  # noqa: E402
from gateway.settings import Settings  # noqa: E402
from tests.conftest import PRICE_DIRECT, Admin, gateway_config, gateway_env  # noqa: E402
from tests.fake_upstream import RunningUpstream  # noqa: E402

BODY = {"model": "auto", "messages": [{"role": "user", "content": "Say hello in one word."}]}
CASES = ("shadow off", "shadow on")


def _config(
    directory: Path, upstream: RunningUpstream, on: bool, rate: float = 1.0
) -> dict[str, Any]:
    config = gateway_config(f"sqlite:///{directory / 'rs.db'}", upstream, router={"enabled": False})
    config["cache"] = {"enabled": False}
    for name, upstream_id in (("strongm", "fake-long"), ("judge", "fake-judge")):
        config["models"].append(
            {
                "name": name,
                "model": f"openai/{upstream_id}",
                "api_base": upstream.base_url,
                "api_key_env": "FAKE_UPSTREAM_KEY",
                "transport": "openai_http",
                "price": PRICE_DIRECT,
            }
        )
    shadow = {"enabled": on, "sample_rate": rate, "budget": "bench-shadow", "judge": "judge"}
    config["policy"] = {
        "tiers": [
            {"name": "light", "deployments": ["direct"]},
            {"name": "strong", "deployments": ["strongm"], "min_demand": 0.5},
        ],
        "default_tier": "light",
        "shadow": {"default": {**shadow, "daily_usd_cap": "1000"}},
    }
    return config


async def _client(
    stack: AsyncExitStack, case: str, upstream: RunningUpstream, directory: Path, rate: float
) -> tuple[Any, httpx.AsyncClient, dict[str, str]]:
    config = _config(directory, upstream, on=case != "shadow off", rate=rate)
    app = create_app(Settings.model_validate(config), environ=gateway_env())
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    client = await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30)
    )
    admin = Admin(client)
    await admin.team("search")
    key = (await admin.key("search"))["key"]
    return app, client, {"authorization": f"Bearer {key}"}


async def _run(requests: int, rounds: int, rate: float = 1.0) -> tuple[dict[str, list[float]], Any]:
    results: dict[str, list[float]] = {c: [] for c in CASES}
    with RunningUpstream() as upstream, tempfile.TemporaryDirectory() as tmp:
        async with AsyncExitStack() as stack:
            clients = {}
            for i, case in enumerate(CASES):
                directory = Path(tmp) / str(i)
                directory.mkdir()
                clients[case] = await _client(stack, case, upstream, directory, rate)
            runner = clients[CASES[1]][0].state.gateway.shadow
            for _ in range(rounds):
                for case in CASES:
                    _, client, auth = clients[case]
                    for _ in range(requests):
                        started = time.perf_counter()
                        response = await client.post(
                            "/v1/chat/completions", json=BODY, headers=auth
                        )
                        results[case].append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 200, response.text
                    # The round's shadow work, still queued, is not left to run during the
                    # next case's round (the on case's own requests do run beside it).
                    await runner.drain(timeout_s=600)
            counts = runner.counts
    return results, counts


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=1.0, help="the shadow sample rate")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"sample rate {args.rate}; load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} cores")
    results, counts = asyncio.run(_run(args.requests, args.rounds, args.rate))
    base = results[CASES[0]]
    b50, b99 = statistics.median(base), _p99(base)
    print(f"{'case':<22} {'p50 ms':>8} {'added':>8} {'p99 ms':>8} {'added':>8}")
    for case in CASES:
        p50, p99 = statistics.median(results[case]), _p99(results[case])
        print(f"{case:<22} {p50:>8.3f} {p50 - b50:>+8.3f} {p99:>8.3f} {p99 - b99:>+8.3f}")
    print(
        f"shadow loop: {counts.sampled} sampled, {counts.written} rows, "
        f"{counts.dropped} dropped (queue full), {counts.failed} with an error"
    )


if __name__ == "__main__":
    main()
