"""The processes benchmarks/gateway_bench.py measures, driven only from outside (processes, HTTP).

The fake upstream (tests/fake_upstream.py), `rightsize serve` (one worker, its own temporary
directory and configuration) and the LiteLLM proxy (one worker, in a virtualenv of its own that
is created once and reused), plus what is read from /proc about them: resident memory and CPU.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from policies.thresholds import load_demand_thresholds  # noqa: E402
from tests.fake_upstream import FakeUpstream  # noqa: E402

LITELLM_VERSION = "1.106.2"  # constraints.txt: the version Rightsize itself is tested against
LITELLM_VENV = Path.home() / ".cache" / "rightsize-bench" / f"litellm-{LITELLM_VERSION}-venv"
UPSTREAM_KEY_ENV = "BENCH_UPSTREAM_KEY"
MASTER_KEY = "bench"
_PRICES = {
    "light": {"input_per_mtok": "0.15", "output_per_mtok": "0.6"},
    "standard": {"input_per_mtok": "1.1", "output_per_mtok": "4.4"},
    "reasoning": {"input_per_mtok": "3", "output_per_mtok": "12"},
}


class StartFailed(RuntimeError):
    """A process of the stack exited or did not answer in time; the message names its log."""


@dataclass
class Served:
    """A process listening on loopback, with the file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise StartFailed(f"{self.name} exited ({self.process.returncode}); see {self.log}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise StartFailed(f"{self.name} did not answer {path} in {timeout_s:.0f} s; see {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _spawn(name: str, command: list[str], port: int, workdir: Path, env: dict[str, str]) -> Served:
    log = workdir / f"{name}.log"
    with open(log, "ab") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Served(name, process, port, log)


class _Recent(list[Any]):
    """The fake upstream's record of requests, cut to the latest ones: kept whole, it would
    grow by every request of the run, and the upstream's garbage collector with it."""

    def append(self, item: Any) -> None:
        super().append(item)
        if len(self) > 100:
            del self[:50]


def serve_upstream(port: int, delay_ms: float = 0.0) -> None:
    """tests/fake_upstream.py's server, as its own __main__ runs it, with bounded memory; each
    chat answer delayed by delay_ms (an LLM's latency) when it is set."""
    fake = FakeUpstream()
    fake.requests = _Recent()
    fake.default_delay_s = delay_ms / 1000
    uvicorn.run(fake.app, host="127.0.0.1", port=port, log_level="warning")


def start_upstream(port: int, workdir: Path, delay_ms: float = 0.0) -> Served:
    command = [sys.executable, str(Path(__file__)), "upstream", str(port), str(delay_ms)]
    return _spawn("fake-upstream", command, port, workdir, dict(os.environ))


def rightsize_config(
    workdir: Path,
    upstream_port: int,
    *,
    transport: str,
    router: bool,
    redis_url: str | None,
    redis_prefix: str,
) -> dict[str, Any]:
    """Three tiers on the fake upstream, `auto` routed by demand; Redis for the cache and the
    ledger counters when redis_url is set (each under its own prefix), else in process/SQLite."""
    models = [
        {
            "name": tier,
            "model": "openai/fake-ok",
            "api_base": f"http://127.0.0.1:{upstream_port}/v1",
            "api_key_env": UPSTREAM_KEY_ENV,
            "transport": transport,
            "tier": tier,
            "price": price,
        }
        for tier, price in _PRICES.items()
    ]
    return {
        "store": {"url": f"sqlite:///{workdir / 'rightsize.db'}", "redis_url": redis_url},
        # No load balancer to take it out of rotation: stopped, it stops at once (5 s each,
        # one after the other, at the end of a run otherwise).
        "server": {"drain_s": 0},
        "router": {"enabled": router},
        "cache": {
            "backend": "redis" if redis_url else "memory",
            "key_prefix": redis_prefix + "cache:",
        },
        "ledger": {"redis_prefix": redis_prefix + "ledger:"},
        "models": models,
        "policy": {
            # The thresholds shipped beside the router artifact (docs/policies.md).
            "tiers": [
                {"name": name, "deployments": [name], "min_demand": min_demand}
                for name, min_demand in load_demand_thresholds(None).min_demand.items()
            ],
            "default_tier": "standard",
        },
    }


def start_rightsize(name: str, config: dict[str, Any], port: int, workdir: Path) -> Served:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "RIGHTSIZE_MASTER_KEY": MASTER_KEY,
        "RIGHTSIZE_KEY_SECRET": MASTER_KEY,
        UPSTREAM_KEY_ENV: "fake",
    }
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(path)]
    command += ["--port", str(port), "--workers", "1"]
    return _spawn(name, command, port, workdir, env)


def create_team(gateway: Served, *, budget_usd: str | None) -> dict[str, str]:
    """A team `bench` and a virtual key for it (and a monthly budget); the client's headers."""
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    with httpx.Client(base_url=gateway.url, headers=admin, timeout=30) as client:
        client.post("/admin/teams", json={"name": "bench"}).raise_for_status()
        key = client.post("/admin/keys", json={"team": "bench"}).json()["key"]
        if budget_usd is not None:
            budget = {"team": "bench", "period": "monthly", "limit_usd": budget_usd}
            client.put("/admin/budgets", json=budget).raise_for_status()
    return {"authorization": f"Bearer {key}"}


def cache_bypasses(gateway: Served) -> int:
    """Redis calls the gateway's cache gave up on since it started (all reasons)."""
    admin = {"authorization": f"Bearer {MASTER_KEY}"}
    stats = httpx.get(gateway.url + "/admin/cache", headers=admin, timeout=30).json()
    return sum(stats["bypassed"].values())


def ensure_litellm_venv(venv: Path = LITELLM_VENV) -> Path:
    """The LiteLLM proxy's own virtualenv (so its pins never meet ours), created on first use."""
    marker = venv / "installed"  # written last: a venv without it is half-made
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs at once: the second waits, then reuses
        if not marker.exists():
            uv = _uv()
            how = "uv, seconds" if uv else "pip, a minute or two; `pip install uv` makes it seconds"
            print(f"creating {venv} (litellm[proxy]=={LITELLM_VERSION}; {how})", flush=True)
            for command in litellm_venv_commands(venv, uv):
                subprocess.run(command, check=True)
            marker.write_text(LITELLM_VERSION + "\n")
    return venv


def litellm_venv_commands(venv: Path, uv: str | None) -> list[list[str]]:
    """The commands that make the proxy's virtualenv: with uv (the `bench` extra installs it)
    when there is one, several times faster than venv and pip, else those. Both compile the
    bytecode, as pip does by default: the proxy without it (uv's default, and nothing written
    at import where PYTHONDONTWRITEBYTECODE is set) served 28 requests/s at c=32 where it
    served 49 with it, in the same quiet minute (docs/benchmarks.md, "A seventh run")."""
    requirement = f"litellm[proxy]=={LITELLM_VERSION}"
    python = str(venv / "bin" / "python")
    if uv is not None:
        return [
            [uv, "venv", "--quiet", "--clear", "--python", sys.executable, str(venv)],
            [
                uv,
                "pip",
                "install",
                "--quiet",
                "--compile-bytecode",
                "--python",
                python,
                requirement,
            ],
        ]
    return [
        [sys.executable, "-m", "venv", "--clear", str(venv)],
        [python, "-m", "pip", "install", "--quiet", requirement],
    ]


def _uv() -> str | None:
    try:
        from uv import find_uv_bin
    except ImportError:
        return shutil.which("uv")
    return find_uv_bin()


def start_litellm_proxy(
    venv: Path, upstream_port: int, port: int, workdir: Path, master_key: str
) -> Served:
    """The proxy with one model, `auto`, on the fake upstream; no database. It refuses to
    start without a master key (clients then send it as their bearer token)."""
    config = {
        "model_list": [
            {
                "model_name": "auto",
                "litellm_params": {
                    "model": "openai/fake-ok",
                    "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                    "api_key": "fake",
                },
            }
        ]
    }
    path = workdir / "litellm-proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    # The cost map shipped in the package: the proxy would otherwise fetch it at start.
    env = {
        **os.environ,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MASTER_KEY": master_key,
    }
    env.pop("PYTHONPATH", None)  # our tree must not shadow the proxy's packages
    command = [str(venv / "bin" / "litellm"), "--config", str(path), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--num_workers", "1"]
    return _spawn("litellm-proxy", command, port, workdir, env)


def new_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="rightsize-gateway-bench-"))


# /proc readings: a server's process and whatever it started (a supervisor's workers).


def process_tree(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def rss_mib(pid: int) -> float:
    """Resident memory of the process and its children (VmRSS), MiB."""
    total_kib = 0
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024


def cpu_seconds(pid: int) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def settle(pid: int, max_wait_s: float = 15.0) -> None:
    """Wait until the server is idle (under 5% of a core): an overloaded one may still be
    working off requests its clients gave up on, which would slow the next cell's target."""
    deadline = time.monotonic() + max_wait_s
    before = cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        after = cpu_seconds(pid)
        if after - before < 0.01:
            return
        before = after


if __name__ == "__main__":
    if sys.argv[1:2] != ["upstream"]:
        raise SystemExit("usage: python benchmarks/bench_stack.py upstream PORT [DELAY_MS]")
    serve_upstream(int(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) > 3 else 0.0)
