"""CPU time per request of one gateway configuration, for two or more source trees side by side:
the figure a shared machine does not blur as much as latency.

    python benchmarks/cpu_per_request.py --tree before=/tmp/base --tree after=. \\
        [--config rs-main] [--rounds 6] [--seconds 5] [--concurrency 1]

Each tree's `rightsize serve` runs as its own process (its code from that tree, its own store
and Redis prefixes) against one fake upstream; the rounds alternate the trees (each round in a
rotated order), so drift in the machine's load falls on all of them alike. Per tree: the
server's process CPU seconds (user + system, /proc) over the requests answered (the mean over
the rounds, and the lowest and the median round: a loaded host inflates some rounds), and the
client's latency p50/p90 at the given closed-loop concurrency, with the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import uuid
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench_stack as stack  # noqa: E402
from benchmarks.bench_report import percentile  # noqa: E402
from benchmarks.gateway_bench import CONFIGS, run_load, start_upstream  # noqa: E402
from benchmarks.loadgen import LoadSpec  # noqa: E402
from tests.fake_upstream import free_port  # noqa: E402


def _start(tree: Path, name: str, config: dict[str, object], workdir: Path) -> stack.Served:
    """`rightsize serve` with `tree`'s code (its directory first on the path)."""
    served = stack.start_rightsize(name, config, free_port(), workdir)
    if tree.resolve() == ROOT:
        return served
    served.process.kill()  # started from our tree; start it again from the other
    served.process.wait()
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "RIGHTSIZE_MASTER_KEY": stack.MASTER_KEY,
        "RIGHTSIZE_KEY_SECRET": stack.MASTER_KEY,
        stack.UPSTREAM_KEY_ENV: "fake",
    }
    command = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(workdir / f"{name}.yaml"),
    ]
    command += ["--port", str(served.port), "--workers", "1"]
    with open(served.log, "ab") as out:
        process = subprocess.Popen(command, cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)
    return stack.Served(name, process, served.port, served.log)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", action="append", required=True, help="NAME=DIR, repeatable")
    parser.add_argument("--config", default="rs-main", help="a gateway_bench.py configuration")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="per tree per round")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    config = next(c for c in CONFIGS if c.name == args.config)
    trees = [(name, Path(path)) for name, _, path in (t.partition("=") for t in args.tree)]
    run_id = uuid.uuid4().hex[:8]
    workdir = stack.new_workdir()
    per_round: dict[str, list[float]] = {name: [] for name, _ in trees}
    latencies: dict[str, list[float]] = {name: [] for name, _ in trees}
    errors: dict[str, int] = {name: 0 for name, _ in trees}
    loads: list[float] = []
    with ExitStack() as exits:
        upstream = start_upstream(exits, workdir, run_id)
        servers: dict[str, stack.Served] = {}
        for name, tree in trees:
            own = workdir / name
            own.mkdir()
            settings = config.settings(own, upstream.port, f"rightsize-bench:{run_id}:{name}:")
            servers[name] = _start(tree, name, settings, own)
            exits.callback(servers[name].stop)
        upstream.wait_ready("/_requests")
        headers: dict[str, dict[str, str]] = {}
        for name, served in servers.items():
            served.wait_ready("/healthz")
            headers[name] = stack.create_team(
                served, budget_usd="1000000" if config.budget else None
            )

        def spec(name: str, seconds: float, warmup_s: float = 0.0) -> LoadSpec:
            return LoadSpec(
                port=servers[name].port,
                path="/v1/chat/completions",
                body=config.body,
                headers=headers[name],
                mode="closed",
                concurrency=args.concurrency,
                duration_s=seconds,
                warmup_s=warmup_s,
                unique_prompts=config.unique_prompts,
            )

        for name in servers:  # imports, connections, the encoder's first batches
            run_load(spec(name, 2.0))
        names = list(servers)
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                pid = servers[name].process.pid
                stack.settle(pid)
                loads.append(os.getloadavg()[0])
                # No warm-up inside the cell (the server was warmed above): the CPU read around
                # the generator's whole run is spent on the answers it times and nothing else.
                before = stack.cpu_seconds(pid)
                result = run_load(spec(name, args.seconds))
                spent = stack.cpu_seconds(pid) - before
                answered = len(result.latencies_ms) + sum(result.errors.values())
                per_round[name].append(spent / max(answered, 1) * 1000)
                latencies[name] += result.latencies_ms
                errors[name] += sum(result.errors.values())
                print(
                    f"round {round_ + 1} {name:<10} {spent / max(answered, 1) * 1000:6.3f} ms CPU"
                    f"/req  p50 {percentile(result.latencies_ms, 0.5):.2f} ms",
                    flush=True,
                )
    print(
        f"\n{config.name}, c={args.concurrency}, {args.rounds} rounds x {args.seconds:g} s per "
        f"tree; load average (1 min) before each cell {min(loads):.2f} to {max(loads):.2f}\n"
    )
    print("| tree | CPU ms/request | min round | median round | p50 | p90 | requests | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        lat = latencies[name]
        rounds = per_round[name]
        print(
            f"| {name} | {statistics.mean(rounds):.3f} | {min(rounds):.3f} | "
            f"{statistics.median(rounds):.3f} | {percentile(lat, 0.5):.2f} | "
            f"{percentile(lat, 0.9):.2f} | {len(lat)} | {errors[name]} |"
        )


if __name__ == "__main__":
    main()
