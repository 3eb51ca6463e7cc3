"""Cost of fitting a request's parameters to its deployment (ParamTable.fit, once resolved),
and of resolving a deployment's parameters from litellm the first time: p50 and p99.

python benchmarks/params_fit.py [--calls 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from gateway.llm import model_info
from gateway.params import ParamTable
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


async def measure(calls: int) -> None:
    spec = ModelSpec(name="mini", model="openai/gpt-4o-mini")
    [deployment] = Catalog.build([spec], lambda m: model_info(m) or ModelInfo(None)).deployments
    table = ParamTable()
    started = time.perf_counter()
    await table.takes(deployment)
    print(f"first resolution (imports litellm): {time.perf_counter() - started:.2f} s")
    print("| body | p50 | p99 |\n|---|---|---|")
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
