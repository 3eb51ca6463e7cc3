"""Added latency of a pinned-model request through `rightsize serve` (one worker).

Starts the fake OpenAI-compatible upstream and the gateway as separate processes on loopback,
then sends the same chat request straight to the upstream and through the gateway, at
concurrency 1 and 32, and prints p50/p99 of both and of the gateway's own overhead header.

    python benchmarks/gateway_overhead.py [--requests 2000] [--transport openai_http|litellm]
        [--busy K] [--gateway-log FILE]

--busy starts K busy-looping processes for the run (a host whose cores are taken); requests
that fail at the connection are counted as dropped, not timed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_upstream import free_port  # noqa: E402

BODY = orjson.dumps(
    {"model": "pinned", "messages": [{"role": "user", "content": "Say hello in one word."}]}
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process for {url} exited")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not start")


async def run_load(
    url: str, headers: dict[str, str], total: int, concurrency: int
) -> tuple[list[float], list[float], int]:
    """Latencies, overhead headers, and how many requests failed at the connection."""
    latencies: list[float] = []
    overheads: list[float] = []
    dropped = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        for _ in range(50):  # warm-up: connections, litellm's first call, caches
            await client.post(url, content=BODY, headers=headers)
        remaining = total

        async def worker() -> None:
            nonlocal remaining, dropped
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                try:
                    response = await client.post(url, content=BODY, headers=headers)
                except httpx.TransportError:  # e.g. a kept-alive connection the server closed
                    dropped += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    raise SystemExit(f"{url}: {response.status_code} {response.text}")
                if "x-rightsize-overhead-ms" in response.headers:
                    overheads.append(float(response.headers["x-rightsize-overhead-ms"]))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, overheads, dropped


@contextlib.contextmanager
def serving(
    transport: str = "openai_http",
    router_enabled: bool = True,
    busy: int = 0,
    gateway_log: str = os.devnull,
) -> Iterator[tuple[str, str, dict[str, str]]]:
    """Start the fake upstream and `rightsize serve` (one worker, SQLite) on loopback.

    Yields the upstream's URL, the gateway's URL and the headers of a fresh virtual key.
    """
    up_port, gw_port = free_port(), free_port()
    workdir = Path(tempfile.mkdtemp(prefix="rightsize-bench-"))
    config = {
        "store": {"url": f"sqlite:///{workdir / 'bench.db'}"},
        "router": {"enabled": router_enabled},
        "models": [
            {
                "name": "pinned",
                "model": "openai/fake-ok",
                "api_base": f"http://127.0.0.1:{up_port}/v1",
                "transport": transport,
                "local": True,
            }
        ],
    }
    (workdir / "bench.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "RIGHTSIZE_MASTER_KEY": "bench", "RIGHTSIZE_KEY_SECRET": "bench"}
    busy_loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_upstream", "--port", str(up_port)], cwd=ROOT
    )
    log = open(gateway_log, "ab")  # closed after the processes end
    gateway = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(workdir / "bench.yaml"),
         "--port", str(gw_port)],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{up_port}/_requests", upstream)
        gw = f"http://127.0.0.1:{gw_port}"
        wait_ready(gw + "/healthz", gateway)
        admin = {"authorization": "Bearer bench"}
        httpx.post(gw + "/admin/teams", json={"name": "bench"}, headers=admin).raise_for_status()
        key = httpx.post(gw + "/admin/keys", json={"team": "bench"}, headers=admin).json()["key"]
        auth = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        yield f"http://127.0.0.1:{up_port}", gw, auth
    finally:
        gateway.terminate()
        upstream.terminate()
        gateway.wait(timeout=15)
        upstream.wait(timeout=15)
        log.close()
        for process in busy_loops:
            process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--transport", default="openai_http", choices=["openai_http", "litellm"])
    parser.add_argument("--no-router", action="store_true", help="Serve without the router.")
    parser.add_argument("--gateway-log", default=os.devnull, help="File for the gateway's log.")
    parser.add_argument("--busy", type=int, default=0, help="Busy-looping processes alongside.")
    args = parser.parse_args()

    with serving(args.transport, not args.no_router, args.busy, args.gateway_log) as stack:
        upstream, gw, auth = stack
        router = "off" if args.no_router else "on"
        print(f"transport={args.transport} router={router} requests={args.requests} (per run)")
        print(
            "| concurrency | direct p50 | direct p99 | gateway p50 | gateway p99 "
            "| added p50 | added p99 | overhead header p50 | p99 "
            "| dropped direct | dropped gateway |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for concurrency in (1, 32):
            direct, _, direct_dropped = asyncio.run(
                run_load(
                    upstream + "/v1/chat/completions",
                    {"content-type": "application/json"},
                    args.requests,
                    concurrency,
                )
            )
            through, overhead, dropped = asyncio.run(
                run_load(gw + "/v1/chat/completions", auth, args.requests, concurrency)
            )
            d50, d99 = percentile(direct, 0.5), percentile(direct, 0.99)
            g50, g99 = percentile(through, 0.5), percentile(through, 0.99)
            print(
                f"| {concurrency} | {d50:.2f} | {d99:.2f} | {g50:.2f} | {g99:.2f} "
                f"| {g50 - d50:.2f} | {g99 - d99:.2f} "
                f"| {statistics.median(overhead):.3f} | {percentile(overhead, 0.99):.3f} "
                f"| {direct_dropped} | {dropped} |"
            )


if __name__ == "__main__":
    main()
