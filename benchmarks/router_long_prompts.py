"""Router.estimate latency by prompt length, up to the gateway's 4 MB body limit.

Usage: python benchmarks/router_long_prompts.py [--data DIR] [--repeats N]
Each prompt is natural text: dev prompts joined (or, without --data, a fixed paragraph
repeated) and cut to the length, with an instruction in front. Static runtime, LRU off, one
prompt at a time, as the gateway's batcher estimates a lone long request. Every other
request's estimate waits behind it in the batcher's one worker thread.
"""

from __future__ import annotations

import argparse
import statistics
import time

from router import Router
from router.training.dataset import load_split

SIZES = (500, 2_000, 8_000, 32_000, 128_000, 1_000_000, 4_000_000)
_PARAGRAPH = (
    "The committee reviewed the quarterly figures. Revenue rose 12% to $4.1 million, while "
    "costs grew faster than planned; see the table below for each region.\n"
    "Region | Q1 | Q2\nNorth | 1.2 | 1.4\nSouth | 0.9 | 1.1\n"
    "Why did costs rise? The report lists three causes and asks the board to decide.\n\n"
)


def corpus(data_dir: str | None, length: int) -> str:
    if data_dir:
        text = "\n\n".join(r.prompt for r in load_split(data_dir, "dev"))
    else:
        text = _PARAGRAPH
    return (text * (length // len(text) + 1))[:length]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    router = Router.load(cache_size=0)
    text = corpus(args.data, max(SIZES))
    router.estimate("warm-up " + text[:2000])
    print("| prompt chars | median ms | max ms | token_budget p50/p90 | demand |")
    print("|---|---|---|---|---|")
    for size in SIZES:
        prompt = "Summarise the following in three sentences.\n\n" + text[:size]
        times = []
        for i in range(args.repeats):
            start = time.perf_counter()
            est = router.estimate(prompt + f" #{i}")
            times.append((time.perf_counter() - start) * 1000)
        print(
            f"| {size:,} | {statistics.median(times):.1f} | {max(times):.1f} | "
            f"{est.token_budget_p50}/{est.token_budget_p90} | {est.reasoning_demand:.3f} |"
        )


if __name__ == "__main__":
    main()
