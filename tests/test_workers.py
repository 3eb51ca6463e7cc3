"""Must-show: `rightsize serve --workers N` stays within PostgreSQL's connections, starts on a busy
host without killing slow workers, leaves no orphan when its supervisor is killed, and keeps the
workers' own log lines.

Live `rightsize serve` processes against the fake upstream (router off, direct HTTP transport
only: what is under test is the process model, not the request path).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    MASTER_KEY,
    _empty_tables,
    gateway_config,
    gateway_env,
    service_unavailable,
    write_config,
)
from tests.fake_upstream import RunningUpstream, free_port

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}
MESSAGES = [{"role": "user", "content": "What is the capital city of France?"}]
COST = Decimal("0.0000539")  # the fake's usage (21 prompt, 7 completion tokens) at PRICE_DIRECT
# A busy two-core host: several workers each import the gateway and build the app.
START_S = 180.0


class Serve:
    """`rightsize serve` in a subprocess; its output (supervisor and workers) in a file."""

    def __init__(
        self, config_file: Path, workers: int, port: int | None = None, **env: str
    ) -> None:
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = config_file.with_name(f"serve-{self.port}-{time.monotonic_ns()}.log")
        command = [
            sys.executable, "-m", "gateway.cli", "serve", "--config", str(config_file),
            "--port", str(self.port), "--workers", str(workers),
        ]  # fmt: skip
        with self.log.open("w") as out:
            self.process = subprocess.Popen(
                command, env=gateway_env(**env), stdout=out, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout_s: float = START_S) -> None:
        """Until /healthz answers (at least one worker serves)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._alive_or_fail()
            try:
                if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"rightsize serve did not become ready:\n{self.output()}")

    def wait_workers(self, count: int, timeout_s: float = START_S) -> list[int]:
        """Until `count` workers have started their app; their pids, from uvicorn's lines."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._alive_or_fail()
            output = self.output()
            if output.count("Application startup complete.") >= count:
                return [int(p) for p in re.findall(r"Started server process \[(\d+)\]", output)]
            time.sleep(0.2)
        raise AssertionError(f"{count} workers did not start:\n{self.output()}")

    def _alive_or_fail(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"rightsize serve exited:\n{self.output()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan's exit is reaped by whoever adopted it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def light_config(store_url: str, upstream: RunningUpstream) -> dict[str, Any]:
    config = gateway_config(store_url, upstream, router={"enabled": False})
    config["models"] = [m for m in config["models"] if m["transport"] == "openai_http"]
    return config


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for server in started:
        server.stop()


@pytest.fixture
def postgres_url(postgres_database: str | BaseException) -> str:
    """The session's PostgreSQL database with empty tables."""
    if isinstance(postgres_database, BaseException):
        service_unavailable("PostgreSQL", postgres_database)
    asyncio.run(_empty_tables(str(postgres_database)))
    return str(postgres_database)


def test_4_workers_on_postgresql_answer_a_burst_of_300_without_a_server_error(
    postgres_url: str, upstream: RunningUpstream, tmp_path: Path, servers: list[Serve]
) -> None:
    # Ledger counters in PostgreSQL too (no Redis): every request takes row locks there.
    config = light_config(postgres_url, upstream)
    servers.append(Serve(write_config(tmp_path / "rightsize.yaml", config), workers=4))
    server = servers[-1]
    server.wait_workers(4)
    with httpx.Client(base_url=server.base_url, headers=ADMIN, timeout=60) as client:
        assert client.post("/admin/teams", json={"name": "search"}).status_code == 201
        key = client.post("/admin/keys", json={"team": "search"}).json()["key"]
        budget = {"team": "search", "period": "total", "limit_usd": str(COST * 100)}
        assert client.put("/admin/budgets", json=budget).status_code == 200

    async def burst(n: int) -> list[httpx.Response]:
        body = {"model": "direct", "messages": MESSAGES, "max_tokens": 7}
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=120) as c:
            return await asyncio.gather(
                *(c.post("/v1/chat/completions", json=body, headers=headers) for _ in range(n))
            )

    responses = asyncio.run(burst(300))

    statuses = Counter(r.status_code for r in responses)
    errors = [r.text for r in responses if r.status_code >= 500][:3]
    assert set(statuses) <= {200, 429}, (statuses, errors)
    assert statuses[429] > 0, statuses  # the budget was reached: the locks were contended


async def _budget_warning(url: str, workers: int, pool: Any) -> str | None:
    from gateway.store import Store
    from gateway.workers import check_connection_budget

    store = Store.connect(url)
    try:
        return await check_connection_budget(store, workers, pool)
    finally:
        await store.aclose()


def test_serve_warns_when_workers_times_pool_exceed_postgresql_max_connections(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from gateway.store.store import PoolLimits

    caplog.set_level(logging.WARNING, logger="rightsize")
    warning = asyncio.run(_budget_warning(postgres_url, 8, PoolLimits(size=10, overflow=5)))

    assert warning is not None
    # 10 + 5 for requests, 1 for the spend writer's own engine.
    assert "8 worker(s) x 16 connections" in warning
    assert "= 128" in warning
    assert re.search(r"max_connections \d+", warning)
    assert warning in caplog.text


def test_default_pools_of_4_workers_fit_postgresql_default_max_connections(
    postgres_url: str,
) -> None:
    from gateway.settings import Settings

    pool = Settings().store.pool()

    assert asyncio.run(_budget_warning(postgres_url, 4, pool)) is None


def test_a_worker_slower_to_start_than_uvicorns_5_s_is_not_killed(
    upstream: RunningUpstream, tmp_path: Path, servers: list[Serve]
) -> None:
    # A spawned worker sleeps before it runs any of uvicorn's code, as one still importing on a
    # loaded host would: uvicorn's default health-check timeout (5 s) would kill it.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "if '--multiprocessing-fork' in sys.argv:\n"
        "    time.sleep(float(os.environ['SLOW_WORKER_START_S']))\n"
    )
    pythonpath = os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH")) if p)
    config = light_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    config_file = write_config(tmp_path / "rightsize.yaml", config)
    servers.append(Serve(config_file, 2, PYTHONPATH=pythonpath, SLOW_WORKER_START_S="7"))

    started = servers[-1].wait_workers(2, timeout_s=120)

    assert len(started) == 2, servers[-1].output()  # each worker started once, none again
    assert all(alive(pid) for pid in started)
    assert not re.search(r"Child process \[\d+\] died", servers[-1].output())


def test_killing_the_supervisor_ends_its_workers_and_frees_the_port(
    upstream: RunningUpstream, tmp_path: Path, servers: list[Serve]
) -> None:
    config = light_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    config_file = write_config(tmp_path / "rightsize.yaml", config)
    servers.append(Serve(config_file, 2))
    workers = servers[-1].wait_workers(2)

    servers[-1].process.send_signal(signal.SIGKILL)
    servers[-1].process.wait(timeout=10)

    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:  # leave no orphan behind this test either
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"orphan workers still running: {left}"
    servers.append(Serve(config_file, 1, port=servers[-1].port))
    servers[-1].wait_ready()


def test_a_workers_rightsize_info_lines_reach_the_output_with_a_timestamp(
    upstream: RunningUpstream, tmp_path: Path, servers: list[Serve]
) -> None:
    config = light_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    servers.append(Serve(write_config(tmp_path / "rightsize.yaml", config), 2))
    workers = servers[-1].wait_workers(2)

    # e.g. "2026-12-03 13:50:01,123 INFO rightsize [4242]: rightsize 0.1.0: config from ..."
    lines = re.findall(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO rightsize\S* \[(\d+)\]: (.*)$",
        servers[-1].output(),
        re.MULTILINE,
    )
    from_workers = [text for pid, text in lines if int(pid) in workers]
    assert any("config from" in text for text in from_workers), servers[-1].output()
    # Each worker froze its start-up objects once they were built (app_from_env).
    frozen = {pid for pid, text in lines if "start-up objects frozen" in text}
    assert {int(pid) for pid in frozen} == set(workers), servers[-1].output()


# What uvicorn does in a worker: build the app with the factory, then report the worker started.
FACTORY_PROBE = """\
from gateway.app import app_from_env
from gateway.tokens import _tiktoken

app_from_env()
print("tokenizers loaded:", _tiktoken.cache_info().currsize)
"""


def test_a_worker_loads_the_tokenizer_before_it_reports_started(
    upstream: RunningUpstream, tmp_path: Path
) -> None:
    # Else the first request loads it on the event loop (0.1 s idle, more on a busy host).
    config = light_config(f"sqlite:///{tmp_path / 'rightsize.db'}", upstream)
    config_file = write_config(tmp_path / "rightsize.yaml", config)
    env = gateway_env(RIGHTSIZE_CONFIG=str(config_file))

    result = subprocess.run(
        [sys.executable, "-c", FACTORY_PROBE], env=env, capture_output=True, text=True, timeout=120
    )

    assert result.returncode == 0, result.stderr
    assert "tokenizers loaded: 1" in result.stdout, result.stdout + result.stderr
