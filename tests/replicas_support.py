"""Processes for the multi-replica tests: `rightsize serve` replicas, HAProxy, the fake upstream."""

from __future__ import annotations

import csv
import io
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from tests.conftest import DATABASE_URL, service_unavailable
from tests.fake_upstream import free_port

REPO = Path(__file__).resolve().parent.parent
HAPROXY_CFG = REPO / "deploy" / "haproxy" / "haproxy.cfg"


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05
) -> None:
    """Poll `check()` until it is true; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(interval_s)


class Process:
    """A subprocess with its output in a log file; stopped by pid, never by name."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str]) -> None:
        self.command = command
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> int | None:
        """Send `sig` and wait for the exit; SIGKILL after `timeout_s`. Returns the exit code."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float = 30) -> int | None:
        """Wait for the exit (SIGKILL after `timeout_s`); the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class Replica(Process):
    """One `rightsize serve` (one worker) on a port of its own, restartable on that port."""

    def __init__(self, name: str, config_file: Path, env: dict[str, str], directory: Path) -> None:
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_file)]
        command += ["--port", str(self.port), "--workers", "1"]
        super().__init__(command, directory / f"{name}.log", env)

    def ready(self) -> bool:
        if not self.alive():
            raise AssertionError(f"{self.name} exited:\n{self.log.read_text()[-4000:]}")
        try:
            return httpx.get(self.base_url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


class HAProxy(Process):
    """HAProxy with deploy/haproxy/haproxy.cfg, bound to a free port, in front of `replicas`."""

    def __init__(self, replicas: list[Replica], directory: Path) -> None:
        self.port = free_port()
        self.stats_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config = directory / "haproxy.cfg"
        config.write_text(haproxy_config(replicas, self.port, self.stats_port))
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        super().__init__([binary, "-f", str(config), "-db"], directory / "haproxy.log", {})

    def servers(self) -> dict[str, dict[str, str]]:
        """The backend's servers as HAProxy's statistics page reports them (status, stot)."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def up(self, name: str) -> bool:
        try:
            return self.servers()[name]["status"] == "UP"
        except httpx.HTTPError:
            return False


def haproxy_config(replicas: list[Replica], port: int, stats_port: int) -> str:
    """The deployed file, its bind address and server lines replaced, a statistics page added."""
    text = HAPROXY_CFG.read_text()
    text = re.sub(r"(?m)^(\s+)bind :8080$", rf"\1bind 127.0.0.1:{port}", text)
    text = re.sub(r"(?m)^\s+server .*\n", "", text)
    assert f"127.0.0.1:{port}" in text, "deploy/haproxy/haproxy.cfg no longer binds :8080"
    servers = "".join(f"    server {r.name} 127.0.0.1:{r.port} check\n" for r in replicas)
    stats = (
        f"\nfrontend stats\n    bind 127.0.0.1:{stats_port}\n    stats enable\n"
        "    stats uri /stats\n"
    )
    return text.rstrip("\n") + "\n" + servers + stats


@contextmanager
def fresh_database() -> Iterator[str]:
    """A PostgreSQL database of the caller's own, empty (no schema), dropped afterwards."""
    import asyncio

    import asyncpg

    admin = make_url(DATABASE_URL).set(drivername="postgresql")
    name = f"rightsize_deploy_{uuid.uuid4().hex[:10]}"

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(admin.render_as_string(hide_password=False), timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(run(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        service_unavailable(f"PostgreSQL at {DATABASE_URL}", exc)
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
