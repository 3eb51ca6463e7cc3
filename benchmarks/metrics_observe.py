"""What metrics and the JSON request line add to each request: `Metrics.observe` and
`log_request`, both called once per request in gateway.pipeline.call.finish.

    python benchmarks/metrics_observe.py [--calls 20000] [--rounds 7]

Times `observe` on a routed request's record (the most series it touches) in one process (the
app's own registry) and in prometheus-client's multiprocess mode (`serve --workers N`: each
value is an mmap write), and `log_request` formatted as JSON into a discarded stream. Best of
`--rounds`, microseconds per call. Results: docs/benchmarks.md, "Metrics and request logs".
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import subprocess
import sys
import tempfile
import timeit
from datetime import UTC, datetime
from decimal import Decimal

from gateway.store import SpendRecord


def routed_record() -> SpendRecord:
    return SpendRecord(
        request_id="req_0123456789abcdef0123456789abcdef",
        created_at=datetime.now(UTC),
        status=200,
        team="search",
        key_id="key_0123456789abcdef",
        requested_model="auto",
        deployment="gpt-4.1-mini",
        tier="standard",
        prompt_tokens=420,
        completion_tokens=180,
        cost_usd=Decimal("0.000519"),
        upstream_ms=812.5,
        overhead_ms=1.92,
        reasoning_demand=0.412,
    )


def best_us(action: object, calls: int, rounds: int) -> float:
    times = timeit.repeat(action, number=calls, repeat=rounds)  # type: ignore[arg-type]
    return min(times) / calls * 1e6


def observe_us(calls: int, rounds: int) -> float:
    from gateway.metrics import Metrics

    metrics = Metrics.from_environment()
    record = routed_record()
    return best_us(lambda: metrics.observe(record, held=True), calls, rounds)


def log_us(calls: int, rounds: int) -> float:
    from gateway.request_log import JsonFormatter, log, log_request

    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(JsonFormatter())
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    record = routed_record()

    def once() -> None:
        log_request(record, "miss")
        handler.stream.seek(0)
        handler.stream.truncate()

    return best_us(once, calls, rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=["observe"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only == "observe":  # the multiprocess run, in a process started with the variable
        print(f"{observe_us(args.calls, args.rounds):.2f}")
        return
    print(f"observe, one process:     {observe_us(args.calls, args.rounds):6.2f} us/request")
    with tempfile.TemporaryDirectory(prefix="rightsize-metrics-") as directory:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": directory}
        command = [sys.executable, __file__, "--only", "observe", "--calls", str(args.calls)]
        command += ["--rounds", str(args.rounds)]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
        print(f"observe, multiprocess:    {float(out.stdout):6.2f} us/request")
    print(f"JSON request line:        {log_us(args.calls, args.rounds):6.2f} us/request")


if __name__ == "__main__":
    main()
