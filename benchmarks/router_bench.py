"""Latency and throughput of the router per encoder runtime.

Usage: python benchmarks/router_bench.py [--data DIR] [--runtimes static,onnx,sentence-transformers]
    [--blas-threads N] [--busy K]
Single-prompt latency: Router.estimate on prompts of at most 128 encoder tokens, LRU off.
Throughput: many concurrent callers through EstimateBatcher.
--blas-threads caps numpy's BLAS threads (as `rightsize serve` does with server.blas_threads);
--busy starts K busy-looping processes for the whole run, standing in for a host whose cores
are taken by other work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import threadpoolctl

from router import EstimateBatcher, Router
from router.training.dataset import load_split

_FALLBACK = [
    "Translate 'hello' to French",
    "Prove that the square root of 2 is irrational, step by step.",
    "Write a Python function that returns the n-th Fibonacci number using memoisation.",
    "What is the capital of Australia? A. Sydney B. Canberra C. Melbourne D. Perth",
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
        "clips in May. How many clips did Natalia sell altogether in April and May?"
    ),
]


def load_prompts(data_dir: str | None, n: int, seed: int = 0) -> list[str]:
    """Dev prompts cut to ~128 tokens (about 500 characters), or a fixed fallback list."""
    if data_dir:
        prompts = [r.prompt[:500] for r in load_split(data_dir, "dev")]
    else:
        prompts = [f"{p} (variant {i})" for i in range(n) for p in _FALLBACK]
    random.Random(seed).shuffle(prompts)
    return prompts[:n]


def single_latency(router: Router, prompts: list[str]) -> dict[str, float]:
    """p50 / p99 milliseconds of router.estimate for one prompt at a time."""
    for p in prompts[:20]:
        router.estimate(p)  # warm-up: lazy init, allocator, thread pools
    times = []
    for p in prompts:
        start = time.perf_counter()
        router.estimate(p)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {
        "p50_ms": statistics.median(times),
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))],
    }


async def _throughput(router: Router, prompts: list[str], concurrency: int, batch: int) -> float:
    batcher = EstimateBatcher(router, max_batch_size=batch, max_wait_s=0.002)
    queue = list(prompts)

    async def client() -> None:
        while queue:
            await batcher.estimate(queue.pop())

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    await batcher.aclose()
    return len(prompts) / elapsed


def throughput(router: Router, prompts: list[str], concurrency: int = 64, batch: int = 64) -> float:
    """Prompts per second with `concurrency` callers sharing one EstimateBatcher."""
    return asyncio.run(_throughput(router, prompts, concurrency, batch))


def cached_latency(router: Router, prompt: str, n: int = 500) -> float:
    """p50 milliseconds when the prompt's embedding is already in the LRU."""
    router.estimate(prompt)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        router.estimate(prompt)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    """Run the benchmark for each runtime and print a markdown table and JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=None)
    parser.add_argument("--runtimes", default="static,onnx,sentence-transformers")
    parser.add_argument("--n-single", type=int, default=300)
    parser.add_argument("--n-throughput", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--blas-threads", type=int, default=None, help="Default: library's.")
    parser.add_argument("--busy", type=int, default=0, help="Busy-looping processes alongside.")
    args = parser.parse_args()
    prompts = load_prompts(args.data, max(args.n_single, args.n_throughput))
    if args.blas_threads is not None:
        threadpoolctl.threadpool_limits(limits=args.blas_threads, user_api="blas")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        results = run(args, prompts)
    finally:
        for process in busy:
            process.kill()
    print("| runtime | repeat | p50 ms | p99 ms | prompts/s (64 callers) | cache hit p50 ms |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['runtime']} | {r['repeat']} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} "
            f"| {r['throughput_per_s']:.0f} | {r['cache_hit_p50_ms']:.3f} |"
        )
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2), encoding="utf-8")


def run(args: argparse.Namespace, prompts: list[str]) -> list[dict[str, float | str]]:
    """Each runtime's rows: load, then per repeat single latency, throughput, cache hit."""
    results = []
    for runtime in args.runtimes.split(","):
        start = time.perf_counter()
        router = Router.load(runtime=runtime, cache_size=0)
        load_s = time.perf_counter() - start
        for rep in range(args.repeats):
            row: dict[str, float | str] = {"runtime": runtime, "repeat": rep}
            row.update(single_latency(router, prompts[: args.n_single]))
            n_tp = args.n_throughput if runtime == "static" else args.n_throughput // 4
            row["throughput_per_s"] = throughput(router, prompts[:n_tp])
            row["load_s"] = load_s
            cached = Router(router.encoder, router.heads, cache_size=16)
            row["cache_hit_p50_ms"] = cached_latency(cached, prompts[0])
            results.append(row)
            print(json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    main()
