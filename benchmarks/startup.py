"""Start-up time of the `rightsize` command, as ratios against `python -c "import click"`.

Times, in fresh processes on this machine: a bare click import (the yardstick), `rightsize
--help`, `rightsize route "Hi"` (settings, catalog with prices, router, decision) and `rightsize
serve` until `/healthz` answers, with two `openai_http` deployments priced from litellm's
bundled map and no litellm deployment. Prints the median and best of --runs runs of each.

    python benchmarks/startup.py [--runs 5]

Wall times depend on how busy the host is: compare the ratios, and runs of the same session.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.fake_upstream import free_port  # noqa: E402

READY_TIMEOUT_S = 120.0  # a busy shared host can take tens of seconds


def write_config(workdir: Path) -> Path:
    """Two openai_http tiers, priced from the model map (no price in the file), SQLite store."""
    config = {
        "store": {"url": f"sqlite:///{workdir / 'bench.db'}"},
        "models": [
            {
                "name": name,
                "model": f"openai/{name}",
                "api_base": "http://127.0.0.1:9/v1",  # never called: route and healthz only
                "api_key_env": "BENCH_UPSTREAM_KEY",
                "transport": "openai_http",
                "tier": tier,
            }
            for name, tier in (("gpt-4o-mini", "light"), ("gpt-4o", "standard"))
        ],
    }
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def serve_ready(config: Path, env: dict[str, str]) -> float:
    """Seconds from spawning `rightsize serve` to its first 200 from /healthz."""
    port = free_port()
    start = time.perf_counter()
    process = subprocess.Popen(
        [*rightsize(), "serve", "--config", str(config), "--port", str(port)],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        with httpx.Client(timeout=1) as client:
            while time.perf_counter() - start < READY_TIMEOUT_S:
                if process.poll() is not None:
                    raise SystemExit("rightsize serve exited before answering /healthz")
                try:
                    if client.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        return time.perf_counter() - start
                except httpx.HTTPError:
                    pass
                time.sleep(0.01)
        raise SystemExit(f"rightsize serve did not answer /healthz within {READY_TIMEOUT_S:g}s")
    finally:
        process.terminate()
        process.wait(timeout=30)


def rightsize() -> list[str]:
    """The installed console script, else the module (the same entry point)."""
    script = shutil.which("rightsize", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "gateway.cli"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="rightsize-startup-"))
    config = write_config(workdir)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIGHTSIZE_")}
    env.update(
        RIGHTSIZE_MASTER_KEY="bench",
        RIGHTSIZE_KEY_SECRET="bench",
        BENCH_UPSTREAM_KEY="sk-bench",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
    )
    cases = {
        'python -c "import click"': lambda: timed([sys.executable, "-c", "import click"], env),
        "rightsize --help": lambda: timed([*rightsize(), "--help"], env),
        'rightsize route "Hi"': lambda: timed(
            [*rightsize(), "route", "Hi", "--config", str(config)], env
        ),
        "rightsize serve, /healthz answers": lambda: serve_ready(config, env),
    }
    results: dict[str, list[float]] = {name: [] for name in cases}
    # Interleaved, so that a burst of load on the host touches every case alike.
    for _ in range(args.runs):
        for name, case in cases.items():
            results[name].append(case())
    click = statistics.median(results['python -c "import click"'])
    print(f"runs={args.runs}  cpus={os.cpu_count()}  load average={os.getloadavg()[0]:.2f}")
    print("| command | median s | best s | median / import click |")
    print("|---|---|---|---|")
    for name, times in results.items():
        median = statistics.median(times)
        print(f"| `{name}` | {median:.3f} | {min(times):.3f} | {median / click:.1f}x |")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
