"""Hot reload under load (issue 21): no failed request, each answer routed by one snapshot.

Starts the fake upstream and `rightsize serve` (one worker), then runs N clients at a steady
total rate for --seconds twice: once without reloads, once with a reload every second (POST
/admin/reload) that alternates between two policies, A and B, which serve the `light` tier with
different deployments (two config hashes). Every request asks for `light`; one in four streams.
It reports failed requests (must be 0), answers whose x-rightsize-* headers do not match
exactly one of the two snapshots (must be 0: model and config hash of the same policy, the
running artifact), and latency p50/p99 of both runs.

    python benchmarks/hot_reload.py [--clients 8] [--rate 100] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench_stack as stack  # noqa: E402
from tests.fake_upstream import ANSWER, free_port  # noqa: E402

MESSAGES = [{"role": "user", "content": "Say hello in one word."}]


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)
    by_config: dict[str, int] = field(default_factory=dict)
    reloads: int = 0
    reload_failures: list[str] = field(default_factory=list)


def policy_a(config: dict[str, Any]) -> dict[str, Any]:
    """bench_stack's configuration with deployments named apart from the tiers (`light` would
    otherwise name the deployment, pinned, not the tier)."""
    renamed = copy.deepcopy(config)
    for model in renamed["models"]:
        model["name"] = f"{model['name']}-model"
    for tier in renamed["policy"]["tiers"]:
        tier["deployments"] = [f"{name}-model" for name in tier["deployments"]]
    return renamed


def policy_b(config: dict[str, Any]) -> dict[str, Any]:
    """Policy A with the `light` tier served by the `standard` deployment."""
    swapped = copy.deepcopy(config)
    for tier in swapped["policy"]["tiers"]:
        if tier["name"] == "light":
            tier["deployments"] = ["standard-model"]
    return swapped


def write_atomically(path: Path, config: dict[str, Any]) -> None:
    """A reload must never read half a file: write beside it, then rename over it."""
    partial = path.with_suffix(".partial")
    partial.write_text(yaml.safe_dump(config))
    os.replace(partial, path)


async def one_request(
    client: httpx.AsyncClient, auth: dict[str, str], stream: bool, run: Run, expected: dict
) -> None:
    body = {"model": "light", "messages": MESSAGES, "stream": stream}
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=auth) as r:
            text = (await r.aread()).decode()
    except httpx.HTTPError as exc:
        run.failed.append(f"{type(exc).__name__}: {exc}")
        return
    run.latencies_ms.append((time.perf_counter() - start) * 1000)
    if r.status_code != 200 or (stream and not text.rstrip().endswith("data: [DONE]")):
        run.failed.append(f"{r.status_code}: {text[:200]}")
        return
    if not stream and ANSWER not in text:
        run.failed.append(f"no answer: {text[:200]}")
        return
    config = r.headers.get("x-rightsize-config", "")
    run.by_config[config] = run.by_config.get(config, 0) + 1
    model = r.headers.get("x-rightsize-model")
    artifact = r.headers.get("x-rightsize-router-artifact")
    if expected["models"].get(config) != model or artifact != expected["artifact"]:
        run.inconsistent.append(f"config {config}, model {model}, artifact {artifact}")


async def load(
    gateway: str, auth: dict[str, str], clients: int, rate: float, seconds: float, expected: dict
) -> Run:
    run = Run()
    interval = clients / rate  # each client's gap between requests
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)
    async with httpx.AsyncClient(base_url=gateway, limits=limits, timeout=30) as client:
        start = time.monotonic()

        async def worker(index: int) -> None:
            n = 0
            while True:
                due = start + index * interval / clients + n * interval
                # Slots a busy host could not keep up with are dropped, not sent late: every
                # request of the reloading run falls inside the window of reloads.
                if due - start >= seconds or time.monotonic() - start >= seconds:
                    return
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await one_request(client, auth, (n + index) % 4 == 0, run, expected)
                n += 1

        await asyncio.gather(*(worker(i) for i in range(clients)))
    return run


async def reloading(
    gateway: str, config_file: Path, configs: list[dict[str, Any]], seconds: float, run: Run
) -> None:
    admin = {"authorization": f"Bearer {stack.MASTER_KEY}"}
    async with httpx.AsyncClient(base_url=gateway, headers=admin, timeout=30) as client:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < seconds:
            await asyncio.sleep(max(0.0, start + n + 1 - time.monotonic()))
            n += 1
            write_atomically(config_file, configs[n % 2])
            response = await client.post("/admin/reload")
            if response.status_code == 200:
                run.reloads += 1
            else:
                run.reload_failures.append(response.text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def measure(args: argparse.Namespace) -> tuple[Run, Run, Path]:
    workdir = stack.new_workdir()
    up_port, gw_port = free_port(), free_port()
    config_a = policy_a(
        stack.rightsize_config(
            workdir,
            up_port,
            transport="openai_http",
            router=True,
            redis_url=None,
            redis_prefix="b:",
        )
    )
    config_b = policy_b(config_a)
    upstream = stack.start_upstream(up_port, workdir)
    gateway = stack.start_rightsize("rightsize", config_a, gw_port, workdir)
    config_file = workdir / "rightsize.yaml"
    try:
        upstream.wait_ready("/_requests")
        gateway.wait_ready("/healthz")
        auth = stack.create_team(gateway, budget_usd=None)
        admin = {"authorization": f"Bearer {stack.MASTER_KEY}"}
        # Learn both snapshots' config hashes and artifact, then start from A again.
        write_atomically(config_file, config_b)
        to_b = httpx.post(gateway.url + "/admin/reload", headers=admin, timeout=60)
        to_b.raise_for_status()
        write_atomically(config_file, config_a)
        httpx.post(gateway.url + "/admin/reload", headers=admin, timeout=60).raise_for_status()
        hashes = to_b.json()
        expected = {
            "models": {
                hashes["previous"]["config_hash"]: "light-model",
                hashes["config_hash"]: "standard-model",
            },
            "artifact": hashes["router_artifact"],
        }

        async def runs() -> tuple[Run, Run]:
            await load(gateway.url, auth, args.clients, args.rate, 2, expected)  # warm-up
            steady = await load(gateway.url, auth, args.clients, args.rate, args.seconds, expected)
            reloads = Run()
            under_reloads, _ = await asyncio.gather(
                load(gateway.url, auth, args.clients, args.rate, args.seconds, expected),
                reloading(gateway.url, config_file, [config_a, config_b], args.seconds, reloads),
            )
            under_reloads.reloads = reloads.reloads
            under_reloads.reload_failures = reloads.reload_failures
            return steady, under_reloads

        steady, under_reloads = asyncio.run(runs())
    finally:
        gateway.stop()
        upstream.stop()
    return steady, under_reloads, gateway.log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate", type=float, default=100, help="Requests per second in all.")
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    steady, under_reloads, log = measure(args)
    print(
        f"clients={args.clients} rate={args.rate}/s seconds={args.seconds} "
        f"(one request in four streamed; gateway log {log})"
    )
    print(
        "| run | requests | failed | inconsistent headers | reloads (failed) "
        "| answers per config | p50 ms | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, run in (("no reloads", steady), ("reload every 1 s", under_reloads)):
        counts = ", ".join(str(run.by_config[h]) for h in sorted(run.by_config))
        sent = len(run.latencies_ms) + len(run.failed)
        print(
            f"| {name} | {sent} ({sent / args.seconds:.0f}/s) | {len(run.failed)} "
            f"| {len(run.inconsistent)} | {run.reloads} ({len(run.reload_failures)}) "
            f"| {counts} | {percentile(run.latencies_ms, 0.5):.1f} "
            f"| {percentile(run.latencies_ms, 0.99):.1f} |"
        )
        for problem in (run.failed + run.inconsistent + run.reload_failures)[:5]:
            print("   ", problem)
    if under_reloads.failed or under_reloads.inconsistent or under_reloads.reload_failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
