"""The gateway benchmark in one command: the floor, Rightsize's main configurations and the
LiteLLM proxy, in one interleaved run, written as a markdown table and a plot.

    python benchmarks/gateway_bench.py [--quick] [--out docs/benchmarks] [--duration S]
        [--rounds N] [--configs a,b,...] [--no-litellm]

Every server runs as its own process on loopback, all started before the first measurement
and left running (an idle one costs nothing): the fake OpenAI-compatible upstream
(tests/fake_upstream.py), `rightsize serve` once per configuration (one worker, its own
temporary directory, SQLite store; Redis 127.0.0.1:6379 under its own prefixes where the
configuration says so) and the LiteLLM proxy (one worker, in its own virtualenv under
~/.cache/rightsize-bench, created on first use). Each configuration is loaded at concurrency
1 and 32 (closed loop) and at 25, 100 and 200 requests/s (open loop, latency from the
scheduled send) by benchmarks/loadgen.py in a process of its own. Rounds walk every load and,
inside it, every configuration, each round in a rotated order, so that drift on a shared
machine falls on all of them alike; each cell gets duration/rounds seconds per round.

Writes OUT/gateway.md (the tables, the machine, the commit, the date), OUT/gateway_latency.png
(added latency p50/p99 against the paced rate) and OUT/gateway.json (every cell's figures).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import bench_stack as stack  # noqa: E402
from benchmarks.bench_report import LOADS, Cell, Load, plot_added_latency, results_table  # noqa: E402
from benchmarks.loadgen import LoadResult, LoadSpec  # noqa: E402
from tests.fake_upstream import free_port  # noqa: E402

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
PROMPT = "Summarise in one sentence why the sky is blue."


@dataclass(frozen=True)
class Config:
    """One thing measured: the floor, a Rightsize configuration, or the LiteLLM proxy."""

    name: str
    describe: str
    kind: str  # "floor", "rightsize" or "litellm"
    transport: str = "openai_http"
    router: bool = True
    redis: bool = False  # store.redis_url set: cache and ledger counters on Redis
    cache_hit: bool = False  # the same temperature-0 request: every timed one a cache hit
    budget: bool = False  # the team has a monthly USD budget: a hold and a charge per request
    unique_prompts: bool = False  # a new prompt text every request: nothing can short-cut

    def settings(self, own: Path, upstream_port: int, redis_prefix: str) -> dict[str, Any]:
        """`rightsize serve`'s configuration for this one, its store and files under `own`."""
        return stack.rightsize_config(
            own,
            upstream_port,
            transport=self.transport,
            router=self.router,
            redis_url=REDIS_URL if self.redis else None,
            redis_prefix=redis_prefix,
        )

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}
        if self.cache_hit or self.unique_prompts:
            body["temperature"] = 0  # cacheable: a lookup (and a store after a miss) each time
        return body


CONFIGS = [
    Config("floor", "the fake upstream straight, no gateway", "floor"),
    Config("rs-http", "Rightsize, openai_http transport, router on", "rightsize"),
    Config("rs-http-norouter", "Rightsize, openai_http, router off", "rightsize", router=False),
    Config("rs-litellm", "Rightsize, litellm transport, router on", "rightsize", "litellm"),
    Config("rs-hit-memory", "Rightsize, exact cache hit, in process", "rightsize", cache_hit=True),
    Config(
        "rs-hit-redis", "Rightsize, exact cache hit, Redis", "rightsize", redis=True, cache_hit=True
    ),
    Config(
        "rs-budget-redis",
        "Rightsize, router on, team budget on the Redis ledger",
        "rightsize",
        redis=True,
        budget=True,
    ),
    Config(
        "rs-main",
        "Rightsize, router on, budget on Redis, cache lookup on Redis, new prompt per request",
        "rightsize",
        redis=True,
        budget=True,
        unique_prompts=True,
    ),
    Config("litellm-proxy", f"LiteLLM proxy {stack.LITELLM_VERSION}, 1 worker", "litellm"),
]


@dataclass
class Target:
    """A configuration's running server, how to call it, and what it cost in memory."""

    config: Config
    served: stack.Served
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=dict)
    rss_warm_mib: float = 0.0
    rss_end_mib: float = 0.0

    def spec(self, load: Load, duration_s: float, warmup_s: float) -> LoadSpec:
        return LoadSpec(
            port=self.served.port,
            path=self.path,
            body=self.config.body,
            headers=self.headers,
            mode="closed" if load.mode == "closed" else "open",
            concurrency=load.concurrency,
            rate=load.rate,
            duration_s=duration_s,
            warmup_s=warmup_s,
            unique_prompts=self.config.unique_prompts,
        )


def run_load(spec: LoadSpec) -> LoadResult:
    """One cell in a fresh load-generator process."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "result.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "loadgen.py")]
        command += [orjson.dumps(asdict(spec)).decode(), str(out)]
        limit = spec.warmup_s + spec.duration_s + 2 * spec.drain_s + 60
        done = subprocess.run(command, capture_output=True, timeout=limit, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the load generator failed:\n{done.stderr.decode()[-3000:]}")
        return LoadResult.from_json(out.read_bytes())


def start_upstream(exits: ExitStack, workdir: Path, run_id: str) -> stack.Served:
    """The fake upstream, stopped on the way out, and the run's Redis keys dropped after it."""
    # Callbacks run last-in first-out: the keys go once every server has stopped writing.
    exits.callback(_drop_redis_keys, f"rightsize-bench:{run_id}:")
    upstream = stack.start_upstream(free_port(), workdir)
    exits.callback(upstream.stop)
    return upstream


@contextmanager
def running(
    configs: list[Config], workdir: Path, run_id: str, litellm_venv: Path | None
) -> Iterator[list[Target]]:
    """Start the upstream and every configuration's server; stop them all on the way out."""
    with ExitStack() as exits:
        upstream = start_upstream(exits, workdir, run_id)
        targets: list[Target] = []
        for config in configs:
            if config.kind == "floor":
                targets.append(Target(config, upstream))
            elif config.kind == "litellm":
                assert litellm_venv is not None
                key = "sk-" + uuid.uuid4().hex + uuid.uuid4().hex
                port = free_port()
                served = stack.start_litellm_proxy(litellm_venv, upstream.port, port, workdir, key)
                exits.callback(served.stop)
                targets.append(Target(config, served, headers={"authorization": f"Bearer {key}"}))
            else:
                own = workdir / config.name  # its own store, spend journal and log
                own.mkdir()
                settings = config.settings(
                    own, upstream.port, f"rightsize-bench:{run_id}:{config.name}:"
                )
                served = stack.start_rightsize(config.name, settings, free_port(), own)
                exits.callback(served.stop)
                targets.append(Target(config, served))
        upstream.wait_ready("/_requests")
        for target in targets:
            if target.config.kind == "rightsize":
                target.served.wait_ready("/healthz")
                budget = "1000000" if target.config.budget else None
                target.headers = stack.create_team(target.served, budget_usd=budget)
            elif target.config.kind == "litellm":
                target.served.wait_ready("/health/liveliness")
        yield targets


def _drop_redis_keys(prefix: str) -> None:
    client = redis.Redis.from_url(REDIS_URL, socket_timeout=5)
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    for start in range(0, len(keys), 1000):
        client.unlink(*keys[start : start + 1000])


def warm_up(targets: list[Target], seconds: float) -> None:
    """First requests (connections, lazy imports, the cache primed), then memory is read."""
    for target in targets:
        result = run_load(target.spec(Load("warm", "closed", concurrency=4), seconds, 0.2))
        if not result.latencies_ms:
            raise RuntimeError(f"{target.config.name}: no answer in warm-up: {result.errors}")
        target.rss_warm_mib = stack.rss_mib(target.served.process.pid)


def measure(
    targets: list[Target], loads: list[Load], rounds: int, cell_s: float, warmup_s: float
) -> dict[tuple[str, str], Cell]:
    """Every load for every target, round after round, the order rotated each round."""
    cells: dict[tuple[str, str], Cell] = {}
    total = rounds * len(loads) * len(targets)
    done = 0
    for round_ in range(rounds):
        for load in loads:
            shift = (round_ + loads.index(load)) % len(targets)
            for target in targets[shift:] + targets[:shift]:
                pid = target.served.process.pid
                stack.settle(pid)
                redis_cache = target.config.kind == "rightsize" and target.config.redis
                before = stack.cache_bypasses(target.served) if redis_cache else None
                result = run_load(target.spec(load, cell_s, warmup_s))
                bypassed = None
                if before is not None:
                    bypassed = stack.cache_bypasses(target.served) - before
                cells.setdefault((target.config.name, load.name), Cell()).add(result, bypassed)
                done += 1
                p50 = cells[target.config.name, load.name].p(0.5)
                print(
                    f"[{done}/{total}] round {round_ + 1} {load.name:>6} {target.config.name:<17}"
                    f" {len(result.latencies_ms) / result.window_s:7.0f} req/s  p50 {p50:7.2f} ms"
                    f"  errors {dict(result.errors) or 0}",
                    flush=True,
                )
    for target in targets:
        target.rss_end_mib = stack.rss_mib(target.served.process.pid)
    return cells


def _git_commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" (with uncommitted changes)" if git("status", "--porcelain") else "")


def write_report(
    out: Path,
    targets: list[Target],
    cells: dict[tuple[str, str], Cell],
    loads: list[Load],
    facts: dict[str, str],
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    names = [target.config.name for target in targets]
    floor = "floor"
    plot = out / "gateway_latency.png"
    plot_added_latency(cells, names, floor, loads, plot)
    lines = [
        "# Gateway benchmark",
        "",
        f"`{facts['command']}`, {facts['date']}, commit {facts['commit']}.",
        f"Machine: {facts['cores']} cores, Python {facts['python']}, {facts['platform']}; "
        f"load average (1, 5, 15 min) before {facts['load_before']}, after {facts['load_after']}. "
        f"Each cell: {facts['cell']}; {facts['runtime']}.",
        "",
        "Latencies in ms, from the client (closed loop) or from the scheduled send (open loop); "
        "\"added\" is the cell's percentile minus the floor's at the same load. req/s: answers "
        "per second of the measured window. errors: non-200 answers, broken connections, and "
        'requests unanswered 5 s after the last send ("unfinished"). Redis bypasses: Redis '
        "cache calls the gateway gave up on during the cell (its `/admin/cache`).",
        "",
        "| config | what runs |",
        "|---|---|",
        *(f"| {target.config.name} | {target.config.describe} |" for target in targets),
        "",
        results_table(cells, names, floor, loads),
        "",
        _issue_targets(cells),
        "",
        f"![added latency against the paced rate]({plot.name})",
        "",
        "Memory: resident set (VmRSS) of each server process and its children, after warm-up "
        "and at the end of the run, MiB.",
        "",
        "| config | RSS after warm-up | RSS at the end |",
        "|---|---|---|",
        *(f"| {t.config.name} | {t.rss_warm_mib:.0f} | {t.rss_end_mib:.0f} |" for t in targets),
        "",
        _memory_notes(targets),
        "",
        _generator_check(cells, names, floor, loads),
        "",
    ]
    report = out / "gateway.md"
    report.write_text("\n".join(lines))
    figures = {
        f"{config} {load}": {
            "throughput": cell.throughput,
            "p50": cell.p(0.5),
            "p90": cell.p(0.9),
            "p99": cell.p(0.99),
            "requests": len(cell.latencies_ms),
            "errors": dict(cell.errors),
            "cache": dict(cell.cache),
            "bypasses": cell.bypasses,
        }
        for (config, load), cell in cells.items()
    }
    memory = {t.config.name: {"warm": t.rss_warm_mib, "end": t.rss_end_mib} for t in targets}
    raw = {"facts": facts, "cells": figures, "rss_mib": memory}
    (out / "gateway.json").write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))
    return report


@dataclass(frozen=True)
class Goal:
    """A target of issue 19, read from one cell: `at_most` the figure, or at least it."""

    text: str
    config: str
    load: str
    figure: str  # "added p50", "p99", "added p99", "bypasses" or "x litellm-proxy req/s"
    limit: float
    at_most: bool = True


GOALS = [
    Goal("router + budget, new prompts: added p50 at c=1", "rs-main", "c=1", "added p50", 1.5),
    Goal("router + budget, new prompts: p99 at 100/s paced", "rs-main", "100/s", "p99", 8),
    Goal("... the same as added p99 at 100/s", "rs-main", "100/s", "added p99", 8),
    Goal(
        "router + budget, new prompts: req/s at c=32, times the LiteLLM proxy's",
        "rs-main",
        "c=32",
        "x litellm-proxy req/s",
        10,
        at_most=False,
    ),
    Goal("exact cache hit in process: added p50 at c=1", "rs-hit-memory", "c=1", "added p50", 0.3),
    Goal("exact cache hit on Redis: added p50 at c=1", "rs-hit-redis", "c=1", "added p50", 0.3),
    Goal("Redis cache bypasses at 200/s (cache hits)", "rs-hit-redis", "200/s", "bypasses", 0),
    Goal("Redis cache bypasses at 200/s (new prompts)", "rs-main", "200/s", "bypasses", 0),
]


def _goal_figure(goal: Goal, cells: dict[tuple[str, str], Cell]) -> float | None:
    cell, floor = cells.get((goal.config, goal.load)), cells.get(("floor", goal.load))
    if cell is None:
        return None
    if goal.figure == "bypasses":
        return None if cell.bypasses is None else float(cell.bypasses)
    if goal.figure.startswith("x "):
        peer = cells.get((goal.figure.split()[1], goal.load))
        return cell.throughput / peer.throughput if peer and peer.throughput else None
    q = 0.5 if goal.figure.endswith("p50") else 0.99
    if goal.figure.startswith("added"):
        return cell.p(q) - floor.p(q) if floor else None
    return cell.p(q)


def _issue_targets(cells: dict[tuple[str, str], Cell]) -> str:
    """Issue 19's targets, each against the cell it is read from."""
    rows = ["| target (issue 19) | config, load | goal | measured | met |", "|---|---|---|---|---|"]
    for goal in GOALS:
        value = _goal_figure(goal, cells)
        if value is None:
            continue
        met = value <= goal.limit if goal.at_most else value >= goal.limit
        shown = f"{value:.0f}" if goal.figure == "bypasses" else f"{value:.2f}"
        rows.append(
            f"| {goal.text} | {goal.config}, {goal.load} | {'≤' if goal.at_most else '≥'} "
            f"{goal.limit:g} | {shown} | {'yes' if met else 'no'} |"
        )
    return "\n".join(rows) if len(rows) > 2 else ""


# What a difference of two configurations' memory is made of (their servers differ in that only).
_MEMORY_DIFFERENCES = [
    ("rs-http", "rs-http-norouter", "the router (its encoder, artifact and heads)"),
    ("rs-litellm", "rs-http", "the litellm library, imported only for a litellm deployment"),
    ("rs-budget-redis", "rs-http", "Redis clients for the ledger and the cache"),
]


def _memory_notes(targets: list[Target]) -> str:
    """The memory of a worker explained by differences between configurations."""
    rss = {target.config.name: target.rss_warm_mib for target in targets}
    parts = []
    if "floor" in rss:
        parts.append(
            f"a Python process serving Starlette on uvicorn (the fake upstream) holds "
            f"{rss['floor']:.0f} MiB"
        )
    for more, less, what in _MEMORY_DIFFERENCES:
        if more in rss and less in rss:
            parts.append(f"{what}: {rss[more] - rss[less]:+.0f} MiB ({more} - {less})")
    return "What the memory is: " + "; ".join(parts) + "." if parts else ""


def _generator_check(
    cells: dict[tuple[str, str], Cell], names: list[str], floor: str, loads: list[Load]
) -> str:
    """Whether the load generator, not the gateways, could have been the limit."""
    parts = []
    closed = [load for load in loads if load.mode == "closed" and load.concurrency > 1]
    for load in closed:
        if (floor, load.name) not in cells:
            continue
        others = [cells[n, load.name].throughput for n in names if n != floor]
        best = max(others, default=0.0)
        parts.append(
            f"the floor answered {cells[floor, load.name].throughput:.0f} req/s at {load.name}, "
            f"{cells[floor, load.name].throughput / best:.1f}x the fastest gateway ({best:.0f})"
            if best
            else f"the floor answered {cells[floor, load.name].throughput:.0f} req/s at {load.name}"
        )
    lags = [lag for cell in cells.values() for lag in cell.send_lag_ms]
    if lags:
        from benchmarks.bench_report import percentile

        parts.append(
            f"open-loop sends left {percentile(lags, 0.5):.2f} ms (p50) / "
            f"{percentile(lags, 0.99):.2f} ms (p99) after their scheduled time (timer "
            "granularity and the generator's own delays; counted in every latency, the "
            "floor's included)"
        )
    return "Load generator: " + "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 s per cell, one round: a smoke run")
    parser.add_argument("--duration", type=float, default=6.0, help="Seconds per cell, all rounds.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument(
        "--configs", help="Comma-separated subset of: " + ", ".join(c.name for c in CONFIGS)
    )
    parser.add_argument("--no-litellm", action="store_true", help="Leave the LiteLLM proxy out.")
    args = parser.parse_args()
    rounds, duration, warmup = (1, 1.0, 0.2) if args.quick else (args.rounds, args.duration, 0.5)
    configs = [c for c in CONFIGS if not (args.no_litellm and c.kind == "litellm")]
    if args.configs:
        wanted = set(args.configs.split(",")) | {"floor"}  # "added" needs the floor
        configs = [c for c in configs if c.name in wanted]
    try:
        import matplotlib  # noqa: F401  (checked now, not after minutes of measuring)
    except ImportError:
        raise SystemExit("the plot needs matplotlib: pip install -e '.[bench]'") from None

    # Killed (SIGTERM): unwind as on Ctrl-C, so that every server started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    facts = {
        "command": "python benchmarks/gateway_bench.py " + " ".join(sys.argv[1:]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "load_before": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "cell": f"{duration:g} s over {rounds} round(s) after {warmup:g} s of warm-up",
    }
    workdir = stack.new_workdir()
    run_id = uuid.uuid4().hex[:8]
    print(f"servers' logs and configurations: {workdir}", flush=True)
    venv = stack.ensure_litellm_venv() if any(c.kind == "litellm" for c in configs) else None
    with running(configs, workdir, run_id, venv) as targets:
        print(f"all servers up after {time.monotonic() - started:.0f} s", flush=True)
        warm_up(targets, 0.5 if args.quick else 2.0)
        cells = measure(targets, LOADS, rounds, duration / rounds, warmup)
    facts["load_after"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    facts["runtime"] = f"the whole run took {time.monotonic() - started:.0f} s"
    report = write_report(args.out, targets, cells, LOADS, facts)
    print(report.read_text())
    print(f"written: {report}, {report.with_name('gateway_latency.png')}, gateway.json")


if __name__ == "__main__":
    main()
