"""What one long-prompt client costs everyone else on the same `rightsize serve` worker.

Starts the fake upstream and the gateway (as gateway_overhead.py does), then for each long
prompt size runs short pinned-model requests at concurrency 4 for --seconds while one client
sends long prompts back to back (a fresh one each time, so none is a cache hit). Prints the
short requests' latency and overhead header, and how many long requests were served.

    python benchmarks/gateway_long_prompts.py [--seconds 20] [--sizes 0,128000,1000000,4000000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_overhead import BODY, percentile, serving

_PARAGRAPH = (
    "The committee reviewed the quarterly figures. Revenue rose 12% to $4.1 million, while "
    "costs grew faster than planned; see the table below for each region.\n"
    "Region | Q1 | Q2\nNorth | 1.2 | 1.4\nSouth | 0.9 | 1.1\n"
    "Why did costs rise? The report lists three causes and asks the board to decide.\n\n"
)


async def measure(
    url: str, auth: dict[str, str], long_chars: int, seconds: float
) -> dict[str, float]:
    short: list[float] = []
    overheads: list[float] = []
    long_times: list[float] = []
    document = (_PARAGRAPH * (long_chars // len(_PARAGRAPH) + 1))[:long_chars]
    stop = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=120) as client:
        for _ in range(20):  # warm-up
            await client.post(url, content=BODY, headers=auth)

        async def short_client() -> None:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                response = await client.post(url, content=BODY, headers=auth)
                short.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
                overheads.append(float(response.headers["x-rightsize-overhead-ms"]))

        async def long_client() -> None:
            n = 0
            while long_chars and time.perf_counter() < stop:
                n += 1
                text = f"Request {n}. Summarise the following in three sentences.\n\n{document}"
                body = orjson.dumps(
                    {"model": "pinned", "messages": [{"role": "user", "content": text}]}
                )
                start = time.perf_counter()
                response = await client.post(url, content=body, headers=auth)
                response.raise_for_status()
                long_times.append((time.perf_counter() - start) * 1000)

        await asyncio.gather(long_client(), *(short_client() for _ in range(4)))
    return {
        "short p50": percentile(short, 0.5),
        "short p99": percentile(short, 0.99),
        "short max": max(short),
        "overhead p50": statistics.median(overheads),
        "overhead p99": percentile(overheads, 0.99),
        "long served": len(long_times),
        "long median": statistics.median(long_times) if long_times else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--sizes", default="0,128000,1000000,4000000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with serving() as (_, gw, auth):
        columns = None
        for size in sizes:
            row = asyncio.run(measure(gw + "/v1/chat/completions", auth, size, args.seconds))
            if columns is None:
                columns = list(row)
                print("| long prompt chars | " + " | ".join(columns) + " |")
                print("|---" * (len(columns) + 1) + "|")
            cells = [f"{row[c]:.0f}" if c == "long served" else f"{row[c]:.1f}" for c in columns]
            print(f"| {size:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
