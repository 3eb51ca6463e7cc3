"""What shadow evaluation adds to the client's requests: p50 and p99, shadowing on vs off.

    python benchmarks/shadow_overhead.py [--requests 200] [--rounds 5] [--rate 1.0]
        [--upstream-ms 0]

Three kinds of process on loopback, as in production: the fake upstream
(benchmarks/bench_stack.py; every answer after `--upstream-ms`, 0 by default: the worst
case, a gateway kept busy back to back), two `rightsize serve` (one worker each, router and
cache off, SQLite, `auto` served by the light tier on `openai_http`) — shadowing off, and
shadowing on at `--rate` (each drawn request's strong tier and the judge, twice, called in the
background after the client's answer, held against the shadow budget, written to the spend log and
router_outcomes) — and this client, sending sequential requests over one keep-alive connection.
(An in-process ASGI client would be wrong here: httpx's ASGITransport returns only once the app
has finished, background work included, so it would time the shadow offer as client latency.)
The cases take turns, `--requests` requests each per round; after each of the on case's rounds
the client waits until the router_outcomes table stops growing, so that no round runs beside the
other's backlog. Prints the client's wall time p50 and p99 per case, what the on case adds, and
the shadow rows written, and the same for the gateway's own time per request (its
x-rightsize-overhead-ms header: all but the upstream call). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench_stack as stack  # noqa: E402
from tests.conftest import PRICE_DIRECT, gateway_config  # noqa: E402
from tests.fake_upstream import free_port  # noqa: E402

BODY = {"model": "auto", "messages": [{"role": "user", "content": "Say hello in one word."}]}
CASES = ("shadow off", "shadow on")


def _config(directory: Path, upstream_url: str, on: bool, rate: float) -> dict[str, Any]:
    upstream = SimpleNamespace(base_url=upstream_url)
    config = gateway_config(f"sqlite:///{directory / 'rs.db'}", upstream, router={"enabled": False})  # type: ignore[arg-type]
    config["cache"] = {"enabled": False}
    for name, upstream_id in (("strongm", "fake-long"), ("judge", "fake-judge")):
        config["models"].append(
            {
                "name": name,
                "model": f"openai/{upstream_id}",
                "api_base": upstream_url,
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


def _outcomes(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT count(*) FROM router_outcomes").fetchone()[0])


def _settle(database: Path, quiet_s: float = 1.0, timeout_s: float = 600) -> int:
    """Wait until the gateway's shadow rows stop growing for quiet_s; their count."""
    deadline = time.monotonic() + timeout_s
    last, since = _outcomes(database), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _outcomes(database)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
    return last


def run(
    requests: int, rounds: int, rate: float, upstream_ms: float = 0.0
) -> tuple[dict[str, list[float]], dict[str, list[float]], int]:
    os.environ["FAKE_UPSTREAM_KEY"] = "fake"  # inherited by the gateways
    results: dict[str, list[float]] = {c: [] for c in CASES}
    overhead: dict[str, list[float]] = {c: [] for c in CASES}
    served: list[stack.Served] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            upstream = stack.start_upstream(free_port(), work, upstream_ms)
            served.append(upstream)
            upstream.wait_ready("/v1/models")
            gateways, databases = {}, {}
            for i, case in enumerate(CASES):
                directory = work / str(i)
                directory.mkdir()
                config = _config(directory, upstream.url + "/v1", case != "shadow off", rate)
                gateway = stack.start_rightsize(f"rs-{i}", config, free_port(), directory)
                served.append(gateway)
                gateway.wait_ready("/healthz")
                gateways[case] = (gateway, stack.create_team(gateway, budget_usd=None))
                databases[case] = directory / "rs.db"
            clients = {
                case: httpx.Client(base_url=gateway.url, headers=auth, timeout=30)
                for case, (gateway, auth) in gateways.items()
            }
            for _ in range(rounds):
                for case in CASES:
                    client = clients[case]
                    for _ in range(requests):
                        started = time.perf_counter()
                        response = client.post("/v1/chat/completions", json=BODY)
                        results[case].append((time.perf_counter() - started) * 1000)
                        assert response.status_code == 200, response.text
                        overhead[case].append(float(response.headers["x-rightsize-overhead-ms"]))
                    if case != "shadow off":
                        _settle(databases[case])
            written = _settle(databases[CASES[1]])
            for client in clients.values():
                client.close()
        finally:
            for process in reversed(served):
                process.stop()
    return results, overhead, written


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=1.0, help="the shadow sample rate")
    parser.add_argument(
        "--upstream-ms", type=float, default=0.0, help="the fake upstream's delay per answer"
    )
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results, overhead, written = run(args.requests, args.rounds, args.rate, args.upstream_ms)
    base = results[CASES[0]]
    b50, b99 = statistics.median(base), _p99(base)
    print(
        f"sample rate {args.rate}; upstream delay {args.upstream_ms:g} ms; "
        f"load average {load:.2f}, {os.cpu_count()} cores"
    )
    print(f"{'case':<22} {'p50 ms':>8} {'added':>8} {'p99 ms':>8} {'added':>8}")
    for case in CASES:
        p50, p99 = statistics.median(results[case]), _p99(results[case])
        print(f"{case:<22} {p50:>8.3f} {p50 - b50:>+8.3f} {p99:>8.3f} {p99 - b99:>+8.3f}")
    print("the gateway's own time per request (x-rightsize-overhead-ms: all but the upstream call)")
    o50, o99 = statistics.median(overhead[CASES[0]]), _p99(overhead[CASES[0]])
    for case in CASES:
        p50, p99 = statistics.median(overhead[case]), _p99(overhead[case])
        print(f"{case:<22} {p50:>8.3f} {p50 - o50:>+8.3f} {p99:>8.3f} {p99 - o99:>+8.3f}")
    print(f"shadow rows written: {written} of {len(results[CASES[1]])} requests")


if __name__ == "__main__":
    main()
