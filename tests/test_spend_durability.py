"""Must-show: spend rows survive hostile input, rows the store refuses, and killed workers.

On SQLite and on the real PostgreSQL (and PostgreSQL + Redis for the killed worker).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import httpx
import orjson
from sqlalchemy import text

from gateway.spend import SpendWriter, decode, encode
from gateway.store import SpendRecord, Store, to_picousd
from ledger.budgets import Budget
from ledger.periods import Period
from tests.conftest import MASTER_KEY, gateway_config, gateway_env, in_process_gateway
from tests.fake_upstream import RunningUpstream
from tests.ledger_support import redis_prefix
from tests.test_budget_concurrency import (
    MAX_TOKENS,
    MESSAGES,
    counters,
    ledger_config,
    serve,
    team_key_budget,
)

__all__ = ["ledger_config", "redis_prefix", "serve"]

ADMIN = {"authorization": f"Bearer {MASTER_KEY}"}


def durable(tmp_path: Path, flush_interval_ms: int, **spend_log: Any) -> dict[str, Any]:
    """The spend_log section with the fallback file and journal under the test's directory."""
    return {
        "flush_interval_ms": flush_interval_ms,
        "fallback_file": str(tmp_path / "spend-log-unwritten.jsonl"),
        "journal_dir": str(tmp_path / "journal"),
        **spend_log,
    }


def _writer(
    store_url: str,
    directory: Path,
    *,
    connect: Callable[[], Store] | None = None,
    flush_interval_s: float = 0.05,
) -> SpendWriter:
    """A writer flushing every 50 ms on its own engine (or `connect`'s store), its fallback
    file and journal in `directory`."""
    return SpendWriter(
        connect or (lambda: Store.connect(store_url)),
        flush_interval_s=flush_interval_s,
        batch_size=500,
        fallback_file=directory / "spend-log-unwritten.jsonl",
        journal_dir=directory / "journal",
    )


async def rows_of(store: Store, team: str, count: int, wait_s: float = 20) -> list[SpendRecord]:
    """The team's spend rows once there are `count` (the writer batches), or what there is."""
    deadline = time.monotonic() + wait_s
    while True:
        rows = await store.spend(team=team, limit=10_000)
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


async def test_a_hostile_model_name_cannot_erase_other_teams_spend_rows(
    store_url: str, upstream: RunningUpstream, tmp_path: Path
) -> None:
    config = gateway_config(store_url, upstream, spend_log=durable(tmp_path, 400))
    long_name, nul_name = "m" * 300, "gpt-4o\x00evil"
    async with in_process_gateway(config) as gw:
        await gw.admin.team("hostile")
        hostile = {"authorization": f"Bearer {(await gw.admin.key('hostile'))['key']}"}

        def send(model: str, auth: dict[str, str]) -> Any:
            body = {"model": model, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
            return gw.client.post("/v1/chat/completions", json=body, headers=auth)

        # One flush window: the hostile rows and the victim's paid rows share a batch.
        responses = await asyncio.gather(
            send(long_name, hostile),
            *(send("direct", gw.auth) for _ in range(20)),
            send(nul_name, hostile),
        )
        paid = {r.headers["x-request-id"] for r in responses[1:-1] if r.status_code == 200}
        assert len(paid) == 20

        store = gw.app.state.gateway.store
        victim = await rows_of(store, "search", 20)
        fitted = await rows_of(store, "hostile", 2)

    assert {r.request_id for r in victim if r.status == 200} == paid
    assert all(r.cost_usd > 0 for r in victim)
    assert sorted(r.requested_model or "" for r in fitted) == ["gpt-4oevil", "m" * 256]
    assert not (tmp_path / "spend-log-unwritten.jsonl").exists()


async def test_a_batch_the_store_refuses_is_written_row_by_row(
    store_url: str, tmp_path: Path
) -> None:
    store = Store.connect(store_url)
    await store.migrate()
    await _refuse_team(store, "refused")
    try:
        writer = _writer(store_url, tmp_path)
        await writer.start()
        good = [_record(f"good-{i}", "search") for i in range(5)]
        bad = _record("bad", "refused")
        for record in (*good[:2], bad, *good[2:]):
            writer.record(record)
        await writer.aclose()

        written = await store.spend(team="search")
        kept = (tmp_path / "spend-log-unwritten.jsonl").read_bytes().splitlines()
    finally:
        await _refuse_team(store, None)
        await store.aclose()
    assert sorted(r.request_id for r in written) == sorted(r.request_id for r in good)
    assert [decode(line).record_id for line in kept] == [bad.record_id]
    assert writer.unwritten == 1


async def test_the_fallback_file_is_replayed_at_start_once_however_often_it_is_read(
    store_url: str, upstream: RunningUpstream, tmp_path: Path
) -> None:
    from gateway.app import create_app
    from gateway.settings import Settings

    config = gateway_config(store_url, upstream, spend_log=durable(tmp_path, 20))
    records = [_record(f"lost-{i}", "search", cost="0.000123") for i in range(3)]
    # A line as the writer of the previous release wrote it: no record_id yet.
    legacy = dataclasses.asdict(_record("lost-legacy", "search", cost="0.5"))
    del legacy["record_id"]
    content = b"".join(encode(r) for r in records) + orjson.dumps(legacy, default=str) + b"\n"
    fallback = tmp_path / "spend-log-unwritten.jsonl"

    for _ in range(2):  # the same file twice, as after a crash in the middle of a replay
        fallback.write_bytes(content)
        app = create_app(Settings.model_validate(config), environ=gateway_env())
        async with app.router.lifespan_context(app):
            assert not fallback.exists()
            assert app.state.gateway.spend.replayed == 4

    store = Store.connect(store_url)
    try:
        rows = await store.spend(team="search")
    finally:
        await store.aclose()
    assert sorted(r.request_id for r in rows) == ["lost-0", "lost-1", "lost-2", "lost-legacy"]
    assert sum((r.cost_usd for r in rows), Decimal(0)) == Decimal("0.500369")


async def test_a_row_the_store_still_refuses_on_replay_stays_in_the_fallback_file(
    store_url: str, tmp_path: Path
) -> None:
    store = Store.connect(store_url)
    await store.migrate()
    fallback = tmp_path / "spend-log-unwritten.jsonl"
    good, bad = _record("good", "search"), _record("bad", "refused")
    fallback.write_bytes(encode(good) + encode(bad))
    await _refuse_team(store, "refused")
    try:
        writer = _writer(store_url, tmp_path)
        await writer.start()
        await writer.aclose()
        written = await store.spend(team="search")
    finally:
        await _refuse_team(store, None)
        await store.aclose()
    assert [r.record_id for r in written] == [good.record_id]
    assert [decode(line).record_id for line in fallback.read_bytes().splitlines()] == [
        bad.record_id
    ]
    assert (writer.replayed, writer.still_failing) == (1, 1)


async def test_values_no_column_can_hold_are_fitted_so_the_row_is_written(
    store_url: str, tmp_path: Path
) -> None:
    store = Store.connect(store_url)
    await store.migrate()
    poisoned = dataclasses.replace(
        _record("r" * 80, "search"),
        requested_model="bad\x00model\ud800" + "x" * 300,
        route_reason="reason with a lone surrogate \udfff and a NUL \x00",
        prompt_tokens=2**40,
        upstream_ms=float("nan"),
        overhead_ms=float("inf"),
    )
    try:
        writer = _writer(store_url, tmp_path)
        await writer.start()
        writer.record(poisoned)
        await writer.aclose()
        [row] = await store.spend(team="search")
    finally:
        await store.aclose()
    assert row.request_id == "r" * 64
    assert row.requested_model == ("badmodel" + "x" * 300)[:256]
    assert row.route_reason == "reason with a lone surrogate  and a NUL "
    assert row.prompt_tokens == 2**31 - 1
    assert (row.upstream_ms, row.overhead_ms) == (None, None)
    assert not (tmp_path / "spend-log-unwritten.jsonl").exists()


async def test_a_row_recorded_before_the_writer_started_is_written_while_it_runs(
    store_url: str, tmp_path: Path
) -> None:
    store = Store.connect(store_url)
    await store.migrate()
    writer = _writer(store_url, tmp_path)
    try:
        writer.record(_record("early", "search"))
        await writer.start()
        rows = await rows_of(store, "search", 1, wait_s=10)  # not only at shutdown
        await writer.aclose()
    finally:
        await store.aclose()
    assert [r.request_id for r in rows] == ["early"]


class _HeldStore(Store):
    """A store whose inserts hold their thread until the test lets them go, as SQLAlchemy's own
    work holds it: on the serving loop's thread such an insert would stop the loop."""

    entered = threading.Event()
    release = threading.Event()
    threads: ClassVar[list[int]] = []
    released: ClassVar[list[bool]] = []

    async def insert_spend(self, records: Any) -> None:
        _HeldStore.threads.append(threading.get_ident())
        _HeldStore.entered.set()
        # Waits for the serving loop to turn while this insert holds its thread; were the
        # insert on the serving loop, nothing could release it and the wait would time out.
        _HeldStore.released.append(_HeldStore.release.wait(timeout=5))
        await super().insert_spend(records)


def _held_writer(store_url: str, tmp_path: Path) -> SpendWriter:
    """A writer whose inserts wait for _HeldStore.release, its events cleared."""
    _HeldStore.entered.clear()
    _HeldStore.release.clear()
    return _writer(
        store_url,
        tmp_path,
        connect=lambda: _HeldStore(Store.connect(store_url).engine),
        flush_interval_s=0.01,
    )


async def _until_an_insert_is_held() -> None:
    deadline = asyncio.get_running_loop().time() + 30
    while not _HeldStore.entered.is_set():
        assert asyncio.get_running_loop().time() < deadline, "the writer never flushed"
        await asyncio.sleep(0.005)


async def test_writing_spend_rows_never_stalls_the_serving_event_loop(
    store_url: str, tmp_path: Path
) -> None:
    store = Store.connect(store_url)
    await store.migrate()
    writer = _held_writer(store_url, tmp_path)
    _HeldStore.threads.clear()
    _HeldStore.released.clear()
    serving = threading.get_ident()
    try:
        await writer.start()
        for i in range(3):  # three flushes, each holding its thread until the loop turns
            _HeldStore.entered.clear()
            _HeldStore.release.clear()
            writer.record(_record(f"held-{i}", "search"))
            await _until_an_insert_is_held()
            await asyncio.sleep(0)  # the serving loop turns while the insert is held
            _HeldStore.release.set()
        await writer.aclose()
        rows = await store.spend(team="search")
    finally:
        _HeldStore.release.set()
        await store.aclose()
    assert sorted(r.request_id for r in rows) == ["held-0", "held-1", "held-2"]
    assert _HeldStore.released == [True, True, True]  # each released by the turning loop
    assert serving not in _HeldStore.threads


async def test_a_flush_asked_for_returns_once_the_batch_being_inserted_is_in_the_log(
    store_url: str, tmp_path: Path
) -> None:
    # The ledger flushes before it rebuilds a counter from the log: a flush that found the
    # queue empty while the interval's batch was mid-insert returned before that batch was in
    # the log (a rebuild on a loaded CI host counted 2 requests of 5).
    store = Store.connect(store_url)
    await store.migrate()
    writer = _held_writer(store_url, tmp_path)
    try:
        await writer.start()
        writer.record(_record("in-flight", "search"))
        await _until_an_insert_is_held()  # the interval's flush is inserting it
        flushing = asyncio.create_task(writer.flush())
        await asyncio.sleep(0.05)
        _HeldStore.release.set()
        await flushing
        rows = await store.spend(team="search")  # read at once, as a rebuild reads
        await writer.aclose()
    finally:
        _HeldStore.release.set()
        await store.aclose()
    assert [r.request_id for r in rows] == ["in-flight"]


def test_a_killed_worker_loses_no_spend_row_and_counters_equal_the_log(
    ledger_config: dict[str, Any], serve: Any, tmp_path: Path
) -> None:
    # Rows wait 10 s for their flush, so the killed worker's rows surely were not written;
    # only its journal has them, replayed within a second by a live worker.
    ledger_config["spend_log"] = durable(tmp_path, 10_000, replay_interval_s=1)
    ledger_config["ledger"] = {**ledger_config.get("ledger", {}), "reservation_ttl_s": 2}
    server = serve(ledger_config, workers=2)
    key = team_key_budget(server, period="monthly", limit_usd="1")

    async def burst_then_kill() -> list[httpx.Response]:
        body = {"model": "direct", "messages": MESSAGES, "max_tokens": MAX_TOKENS}
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            responses = await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=body, headers=headers)
                    for _ in range(40)
                )
            )
            # Still connected: the worker holding our connections is one that answered.
            os.kill(_worker_serving(server.process.pid, server.port), signal.SIGKILL)
        return list(responses)

    responses = asyncio.run(burst_then_kill())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    answered = {r.headers["x-request-id"] for r in responses}

    rows = asyncio.run(_rows_for(ledger_config["store"]["url"], answered, wait_s=90))
    time.sleep(2.5)  # the killed worker's holds (none should be left) expire
    server.stop()
    rows = asyncio.run(_rows_for(ledger_config["store"]["url"], answered, wait_s=0))
    assert sorted(r.request_id for r in rows) == sorted(answered)  # each exactly once
    usage = asyncio.run(counters(ledger_config, Budget("team", "search", Period.MONTHLY)))
    assert usage.spent.picousd == sum(to_picousd(r.cost_usd) for r in rows)
    assert usage.spent.requests == len(rows)
    assert usage.reserved.picousd == 0


async def _rows_for(url: str, request_ids: set[str], wait_s: float) -> list[SpendRecord]:
    store = Store.connect(url)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            rows = await store.spend(team="search", limit=10_000)
            if {r.request_id for r in rows} >= request_ids or time.monotonic() > deadline:
                return rows
            await asyncio.sleep(0.2)
    finally:
        await store.aclose()


def _worker_serving(supervisor: int, port: int) -> int:
    """The pid of a worker of `supervisor` holding an established connection on `port`."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            for line in handle.readlines()[1:]:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                if local_port == port and fields[3] == "01":  # ESTABLISHED
                    established.add(f"socket:[{fields[9]}]")
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    for pid in map(int, children):
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                if os.readlink(fd) in established:
                    return pid
            except OSError:
                continue
    raise AssertionError(f"no worker of {supervisor} holds a connection on port {port}")


def _record(request_id: str, team: str, cost: str = "0.000001") -> SpendRecord:
    return SpendRecord(
        request_id=request_id,
        created_at=datetime.now(UTC),
        status=200,
        team=team,
        deployment="direct",
        prompt_tokens=21,
        completion_tokens=7,
        cost_usd=Decimal(cost),
    )


async def _refuse_team(store: Store, team: str | None) -> None:
    """Make the database refuse (or, with None, accept again) the rows of one team."""
    async with store.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            await conn.execute(text("DROP TRIGGER IF EXISTS refuse_team"))
            if team is not None:
                await conn.execute(
                    text(
                        "CREATE TRIGGER refuse_team BEFORE INSERT ON spend_log "
                        f"WHEN NEW.team = '{team}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
                    )
                )
        else:
            await conn.execute(text("ALTER TABLE spend_log DROP CONSTRAINT IF EXISTS refuse_team"))
            if team is not None:
                await conn.execute(
                    text(
                        "ALTER TABLE spend_log ADD CONSTRAINT refuse_team "
                        f"CHECK (team IS DISTINCT FROM '{team}')"
                    )
                )
