"""Helpers for the ledger tests: a Redis key prefix of their own, a frozen clock, ledgers."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service_unavailable

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix no other test (or engineer) uses; its keys are deleted afterwards."""
    from redis import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:
        service_unavailable(f"Redis at {REDIS_URL}", exc)
    prefix = f"rightsize-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        delete_prefix(prefix)
        client.close()


def delete_prefix(prefix: str) -> int:
    """Delete every key under the prefix (how the tests 'flush' Redis: never FLUSHALL)."""
    from redis import Redis

    client = Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


class FrozenClock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@asynccontextmanager
async def open_ledger(
    backend: str,
    tmp_path: Path,
    prefix: str | None,
    clock: FrozenClock,
    **ledger: Any,
) -> AsyncIterator[Any]:
    """A migrated SQLite store and a ledger on the named backend ("sqlite" or "redis")."""
    from gateway.ledger_build import open_ledger as build
    from gateway.settings import Settings
    from gateway.store import Store

    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store_settings: dict[str, Any] = {"url": url}
    if backend == "redis":
        store_settings["redis_url"] = REDIS_URL
        ledger.setdefault("redis_prefix", prefix)
    settings = Settings.model_validate({"store": store_settings, "ledger": ledger})
    store = Store.connect(url)
    await store.migrate()
    built = build(settings, store, clock=clock)
    try:
        yield built
    finally:
        await built.aclose()
        await store.aclose()


def at(text: str) -> datetime:
    """An aware datetime from ISO text with its offset, in UTC."""
    return datetime.fromisoformat(text).astimezone(UTC)
