"""Where one worker's CPU goes per request, configuration by configuration, read from /proc.

    python benchmarks/cpu_breakdown.py [--concurrency 32] [--seconds 4] [--rounds 2] \\
        [--config rs-main --config u-router ...]

Each configuration is a `rightsize serve` of its own (gateway_bench.py's, plus variants that
add one thing at a time to a new prompt per request: u-norouter, u-router, u-router-redis,
u-router-budget-redis), loaded in turn at a closed-loop concurrency against one fake upstream.
Per cell: answers per second, and the server's CPU seconds per answer from /proc, the serving
thread apart from the rest (the spend writer's, SQLite's and the router's threads). A worker
whose serving thread is near one core is CPU-bound: the differences between configurations
are what each part costs it (the router on a new prompt; the Redis cache's lookup and store;
the Redis ledger's reserve and settle).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench_stack as stack  # noqa: E402
from benchmarks.gateway_bench import CONFIGS, Config, run_load, start_upstream  # noqa: E402
from benchmarks.loadgen import LoadSpec  # noqa: E402
from tests.fake_upstream import free_port  # noqa: E402

VARIANTS = [
    Config("u-norouter", "new prompt, router off", "rightsize", router=False, unique_prompts=True),
    Config("u-router", "new prompt, router on", "rightsize", unique_prompts=True),
    Config(
        "u-router-redis", "+ cache on Redis (a miss and a store)", "rightsize",
        redis=True, unique_prompts=True,
    ),
    Config(
        "u-router-budget-redis", "+ a budget on the Redis ledger, cache on Redis (= rs-main)",
        "rightsize", redis=True, budget=True, unique_prompts=True,
    ),
]  # fmt: skip
DEFAULT = ["u-norouter", "u-router", "u-router-redis", "rs-main", "rs-http"]


def thread_cpu(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of the process's first thread and of all the others."""
    tick = os.sysconf("SC_CLK_TCK")
    serving = others = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # a thread that ended meanwhile
        spent = (int(fields[11]) + int(fields[12])) / tick
        if tid == str(pid):
            serving += spent
        else:
            others += spent
    return serving, others


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help=f"repeatable; default {DEFAULT}")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    known = {c.name: c for c in [*CONFIGS, *VARIANTS]}
    configs = [known[name] for name in (args.config or DEFAULT)]
    run_id = uuid.uuid4().hex[:8]
    workdir = stack.new_workdir()
    rows: dict[str, list[tuple[float, float, float]]] = {c.name: [] for c in configs}
    loads: list[float] = []
    with ExitStack() as exits:
        upstream = start_upstream(exits, workdir, run_id)
        servers: dict[str, stack.Served] = {}
        for config in configs:
            own = workdir / config.name
            own.mkdir()
            settings = config.settings(
                own, upstream.port, f"rightsize-bench:{run_id}:{config.name}:"
            )
            servers[config.name] = stack.start_rightsize(config.name, settings, free_port(), own)
            exits.callback(servers[config.name].stop)
        upstream.wait_ready("/_requests")
        headers = {}
        for config in configs:
            servers[config.name].wait_ready("/healthz")
            budget = "1000000" if config.budget else None
            headers[config.name] = stack.create_team(servers[config.name], budget_usd=budget)

        def spec(config: Config, seconds: float) -> LoadSpec:
            return LoadSpec(
                port=servers[config.name].port,
                path="/v1/chat/completions",
                body=config.body,
                headers=headers[config.name],
                mode="closed",
                concurrency=args.concurrency,
                duration_s=seconds,
                warmup_s=0.0,
                unique_prompts=config.unique_prompts,
            )

        for config in configs:  # imports, connections, the encoder's first batches
            run_load(spec(config, 2.0))
        for round_ in range(args.rounds):
            shift = round_ % len(configs)
            for config in configs[shift:] + configs[:shift]:
                pid = servers[config.name].process.pid
                stack.settle(pid)
                loads.append(os.getloadavg()[0])
                serving, others = thread_cpu(pid)
                started = time.monotonic()
                result = run_load(spec(config, args.seconds))
                wall = time.monotonic() - started
                serving_after, others_after = thread_cpu(pid)
                answered = max(len(result.latencies_ms), 1)
                rows[config.name].append(
                    (
                        answered / wall,
                        (serving_after - serving) / answered * 1000,
                        (others_after - others) / answered * 1000,
                    )
                )
                print(f"round {round_ + 1} {config.name}: {answered / wall:.0f} req/s", flush=True)
    print(
        f"\nc={args.concurrency}, {args.rounds} rounds x {args.seconds:g} s each, "
        f"{os.cpu_count()} cores, load average (1 min) before each cell "
        f"{min(loads):.2f} to {max(loads):.2f}\n"
    )
    print("| config | what | req/s | serving thread ms CPU/req | other threads | total |")
    print("|---|---|---|---|---|---|")
    for config in configs:
        cells = rows[config.name]
        rate = sum(c[0] for c in cells) / len(cells)
        serving = sum(c[1] for c in cells) / len(cells)
        others = sum(c[2] for c in cells) / len(cells)
        print(
            f"| {config.name} | {config.describe} | {rate:.0f} | {serving:.3f} | {others:.3f} | "
            f"{serving + others:.3f} |"
        )


if __name__ == "__main__":
    main()
