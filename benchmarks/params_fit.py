"""Cost of fitting a request's parameters to its deployment (ParamTable.fit, once resolved),
and of resolving the deployments' parameters the first time: p50 and p99.

python benchmarks/params_fit.py [--calls 20000]

The first resolution is timed twice, as the serving process meets it: in a child process (this
process has not imported litellm, as an openai_http-only server), then in a worker thread that
imports litellm here (a server that has a litellm deployment, or the fallback). For each: its
wall time, the longest and the p99 stall of a 1 ms ticker on the event loop meanwhile, and this
process's resident memory before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.llm import model_info
from gateway.params import ParamTable, derived_params
from policies import Catalog, ModelInfo, ModelSpec

MESSAGES = [{"role": "user", "content": "Translate 'hello' to French."}]
BODIES: dict[str, dict[str, Any]] = {
    "no fitted parameter": {"messages": MESSAGES},
    "temperature, max_tokens (kept)": {"messages": MESSAGES, "temperature": 0.2, "max_tokens": 256},
    "+ reasoning_effort (dropped)": {
        "messages": MESSAGES,
        "temperature": 0.2,
        "max_tokens": 256,
        "reasoning_effort": "high",
    },
}


MODELS = ["openai/gpt-4o-mini", "openai/gpt-4o", "openai/o3-mini", "openai/gpt-5-mini"]


def _rss_mib() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


async def _first_resolution(label: str, resolve: Callable[[], Awaitable[object]]) -> None:
    """`resolve` timed, with a 1 ms ticker on the loop measuring how long it is held up."""
    stalls: list[float] = []

    async def tick() -> None:
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.001)
            stalls.append(time.perf_counter() - started - 0.001)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.2)
    stalls.clear()
    rss, started = _rss_mib(), time.perf_counter()
    await resolve()
    took = time.perf_counter() - started
    ticker.cancel()
    stalls.sort()
    print(
        f"| {label} | {took:.2f} s | {stalls[-1] * 1000:.1f} ms | "
        f"{stalls[int(len(stalls) * 0.99)] * 1000:.1f} ms | {rss:.0f} -> {_rss_mib():.0f} MiB |"
    )


async def measure(calls: int) -> None:
    specs = [ModelSpec(name=f"m{i}", model=model) for i, model in enumerate(MODELS)]
    deployments = Catalog.build(specs, lambda m: model_info(m) or ModelInfo(None)).deployments
    deployment = deployments[0]
    table = ParamTable(deployments=deployments)
    print(f"first resolution, {len(deployments)} deployments:")
    print("| where | wall | longest loop stall | p99 stall | RSS |\n|---|---|---|---|---|")
    await _first_resolution("child process", lambda: table.takes(deployment))

    async def in_threads() -> list[frozenset[str] | None]:
        return [await asyncio.to_thread(derived_params, d) for d in deployments]

    await _first_resolution("worker thread (imports litellm)", in_threads)
    print("\nfit, once resolved:\n| body | p50 | p99 |\n|---|---|---|")
    for label, body in BODIES.items():
        timings = []
        for _ in range(calls):
            t0 = time.perf_counter()
            await table.fit(deployment, body)
            timings.append(time.perf_counter() - t0)
        timings.sort()
        p50, p99 = timings[len(timings) // 2], timings[int(len(timings) * 0.99)]
        print(f"| {label} | {p50 * 1e6:.1f} µs | {p99 * 1e6:.1f} µs |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    asyncio.run(measure(parser.parse_args().calls))


if __name__ == "__main__":
    main()
