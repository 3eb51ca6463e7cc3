"""Shared fixtures: the fake upstream, SQLite and the real PostgreSQL, apps and live servers."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.fake_batch_provider import RunningBatchProvider
from tests.fake_upstream import RunningUpstream, free_port
from tests.served import ServedProcess

MASTER_KEY = "test-master-key"
DATABASE_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"

# Prices are exact decimals per million tokens, chosen so that costs have many digits.
PRICE_SMALL = {"input_per_mtok": "0.15", "output_per_mtok": "0.6"}
PRICE_DIRECT = {"input_per_mtok": "1.1", "output_per_mtok": "4.4", "cached_input_per_mtok": "0.275"}


def service_unavailable(what: str, error: BaseException) -> None:
    """Skip loudly on a developer machine without the service; fail in CI."""
    message = f"{what} is not reachable ({error!r}); these tests need the real server"
    if IN_CI:
        pytest.fail(message)
    pytest.skip("SKIPPED LOUDLY: " + message)


@pytest.fixture(scope="session")
def upstream() -> Iterator[RunningUpstream]:
    with RunningUpstream() as running:
        yield running


@pytest.fixture
def provider() -> Iterator[RunningBatchProvider]:
    """A fake provider's batch API (tests/fake_batch_provider.py), fresh for each test."""
    with RunningBatchProvider() as running:
        yield running


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str | BaseException]:
    """A fresh PostgreSQL database for this test session (or the connection error)."""
    import asyncpg

    base = make_url(DATABASE_URL)
    name = f"rightsize_test_{uuid.uuid4().hex[:10]}"
    admin_dsn = base.set(drivername="postgresql").render_as_string(hide_password=False)

    async def run(statement: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        asyncio.run(run(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        yield exc
        return
    yield base.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store test runs on SQLite and on the real PostgreSQL, with empty tables."""
    return _fresh_store(request, tmp_path)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_store_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """Like store_url, shared by the tests of one module (for costly fixtures such as servers)."""
    return _fresh_store(request, tmp_path_factory.mktemp("store"))


def _fresh_store(request: pytest.FixtureRequest, directory: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{directory / 'rightsize.db'}"
    database = request.getfixturevalue("postgres_database")
    if isinstance(database, BaseException):
        service_unavailable(f"PostgreSQL at {DATABASE_URL}", database)
    asyncio.run(_empty_tables(str(database)))
    return str(database)


async def _empty_tables(url: str) -> None:
    from gateway.store import Store

    store = Store.connect(url)
    try:
        await store.migrate()
        async with store.engine.begin() as conn:
            for ledger_table in (
                "budgets",
                "ledger_counters",
                "ledger_reservations",
                "ledger_workers",
                "archived_teams",
            ):
                await conn.exec_driver_sql(f"DELETE FROM {ledger_table}")  # gateway/ledger
            for batch_table in ("batch_lines", "batch_jobs", "batches", "files"):
                await conn.exec_driver_sql(f"DELETE FROM {batch_table}")  # gateway/batches
            await conn.exec_driver_sql("DELETE FROM spend_log")
            await conn.exec_driver_sql("DELETE FROM router_outcomes")
            await conn.exec_driver_sql("DELETE FROM api_keys")
            await conn.exec_driver_sql("DELETE FROM teams")
    finally:
        await store.aclose()


async def spend_rows(url: str, count: int, timeout_s: float = 30) -> list[Any]:
    """The team search's spend-log rows, once there are `count` of them (the writer batches)."""
    from gateway.store import Store

    store = Store.connect(url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            rows = await store.spend(team="search", limit=10_000)
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.1)
    finally:
        await store.aclose()


def gateway_config(store_url: str, upstream: RunningUpstream, **overrides: Any) -> dict[str, Any]:
    """A configuration with fake-upstream models through both transports."""
    base = upstream.base_url

    def model(name: str, upstream_id: str, transport: str, tier: str | None, **extra: Any) -> dict:
        return {
            "name": name,
            "model": f"openai/{upstream_id}",
            "api_base": base,
            "api_key_env": "FAKE_UPSTREAM_KEY",
            "transport": transport,
            "tier": tier,
            **extra,
        }

    # The spend writer's journal and fallback file: a directory of this configuration's own, so
    # that no test replays another's rows and nothing lands in the working tree.
    spend_dir = Path(tempfile.mkdtemp(prefix="rightsize-spend-"))
    config: dict[str, Any] = {
        "store": {"url": store_url},
        "spend_log": {
            "flush_interval_ms": 20,
            "fallback_file": str(spend_dir / "spend-log-unwritten.jsonl"),
            "journal_dir": str(spend_dir / "journal"),
        },
        "models": [
            model("small", "fake-ok", "litellm", "light", price=PRICE_SMALL),
            model("direct", "fake-ok", "openai_http", "standard", price=PRICE_DIRECT),
            model("direct-cached", "fake-cached", "openai_http", None, price=PRICE_DIRECT),
            model("small-cached", "fake-cached", "litellm", None, price=PRICE_DIRECT),
            model("direct-nousage", "fake-nousage", "openai_http", None, price=PRICE_DIRECT),
            model("small-nousage", "fake-nousage", "litellm", None, price=PRICE_DIRECT),
            model("direct-500", "fake-500", "openai_http", None, price=PRICE_DIRECT),
            model("small-500", "fake-500", "litellm", None, price=PRICE_SMALL),
            model("direct-400", "fake-400", "openai_http", None, price=PRICE_DIRECT),
            model("small-400", "fake-400", "litellm", None, price=PRICE_SMALL),
            model(
                "direct-slow", "fake-slow", "openai_http", None, price=PRICE_DIRECT, timeout_s=0.5
            ),
            model("small-slow", "fake-slow", "litellm", None, price=PRICE_SMALL, timeout_s=0.5),
            model("direct-midstream", "fake-midstream", "openai_http", None, price=PRICE_DIRECT),
        ],
    }
    config.update(overrides)
    return config


def gateway_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RIGHTSIZE_")}
    env.update(
        RIGHTSIZE_MASTER_KEY=MASTER_KEY,
        RIGHTSIZE_KEY_SECRET="test-key-secret",
        FAKE_UPSTREAM_KEY="sk-fake-upstream",
        # SIGTERM stops a test's server at once; the drain has tests of its own.
        RIGHTSIZE_SERVER__DRAIN_S="0",
    )
    env.update(
        **extra,
    )
    return env


class Admin:
    """Admin API calls with the master key."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.headers = {"authorization": f"Bearer {MASTER_KEY}"}

    async def team(self, name: str) -> None:
        response = await self.client.post("/admin/teams", json={"name": name}, headers=self.headers)
        assert response.status_code == 201, response.text

    async def key(self, team: str, allowed_models: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"team": team}
        if allowed_models is not None:
            body["allowed_models"] = allowed_models
        response = await self.client.post("/admin/keys", json=body, headers=self.headers)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def spend(self, request_id: str) -> dict[str, Any]:
        """The spend-log row of a request, waiting up to 5 s for the batched writer."""
        deadline = time.monotonic() + 5.0
        while True:
            response = await self.client.get(
                "/admin/spend", params={"request_id": request_id}, headers=self.headers
            )
            rows = response.json()["data"]
            if rows:
                assert len(rows) == 1, rows
                return dict(rows[0])
            if time.monotonic() > deadline:
                raise AssertionError(f"no spend-log row for {request_id}")
            await asyncio.sleep(0.02)


class InProcessGateway:
    """The app on an in-memory transport, lifespan included."""

    def __init__(self, client: httpx.AsyncClient, admin: Admin, key: str, app: Any = None) -> None:
        self.client = client
        self.admin = admin
        self.key = key
        self.app = app
        self.auth = {"authorization": f"Bearer {key}"}


@pytest.fixture
async def gateway(store_url: str, upstream: RunningUpstream) -> AsyncIterator[InProcessGateway]:
    async with in_process_gateway(gateway_config(store_url, upstream)) as gw:
        yield gw


def in_process_gateway(config: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    from contextlib import asynccontextmanager

    from gateway.app import create_app
    from gateway.settings import Settings

    @asynccontextmanager
    async def run() -> AsyncIterator[InProcessGateway]:
        app = create_app(Settings.model_validate(config), environ=env or gateway_env())
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                admin = Admin(client)
                await admin.team("search")
                key = await admin.key("search")
                yield InProcessGateway(client, admin, key["key"], app)

    return run()


class LiveServer(ServedProcess):
    """`rightsize serve` in a subprocess on loopback."""

    what = "rightsize serve"

    def __init__(
        self,
        config_file: Path | None,
        env: dict[str, str],
        workers: int = 1,
        ready_s: float = 60,
        *,
        cwd: Path | None = None,
    ) -> None:
        """With no config file, the built-in defaults, run (and logged) in `cwd`."""
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "gateway.cli", "serve"]
        if config_file is not None:
            command += ["--config", str(config_file)]
            self.log = config_file.with_suffix(".log")
        else:
            assert cwd is not None, "a server without a config file needs a directory"
            self.log = cwd / "serve.log"
        command += ["--port", str(self.port), "--workers", str(workers)]
        self._spawn(command, env, ready_s, cwd=cwd)


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextmanager
def live_server(
    config: dict[str, Any], directory: Path, env: dict[str, str] | None = None, **options: Any
) -> Iterator[LiveServer]:
    """`rightsize serve` on this configuration (written as directory/rightsize.yaml), stopped
    afterwards."""
    config_file = write_config(directory / "rightsize.yaml", config)
    live = LiveServer(config_file, env or gateway_env(), **options)
    try:
        yield live
    finally:
        live.stop()


def live_spend_row(live: LiveServer, request_id: str, timeout_s: float = 30) -> dict[str, Any]:
    """The request's spend-log row from the admin API, once the server has flushed it (the
    server is another process, so a blocking sleep is right even in an async test)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = httpx.get(
            live.base_url + "/admin/spend",
            params={"request_id": request_id},
            headers={"authorization": f"Bearer {MASTER_KEY}"},
        ).json()["data"]
        if rows:
            return dict(rows[0])
        time.sleep(0.02)
    raise AssertionError(f"no spend-log row for {request_id}")
