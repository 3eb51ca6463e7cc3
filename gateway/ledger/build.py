"""Build the ledger the configuration asks for: Redis counters when store.redis_url is set,
else counters in the SQL store (SQLite: the embedded backend; PostgreSQL: row locks, on the
store's own engine, so that a worker holds one connection pool)."""

from __future__ import annotations

from gateway.ledger.backend import CounterBackend
from gateway.ledger.budgets import BudgetStore
from gateway.ledger.ledger import Clock, Ledger
from gateway.ledger.redis_backend import RedisCounters
from gateway.ledger.sql_backend import SQLCounters
from gateway.ledger.sqlite_backend import SQLiteCounters
from gateway.settings import Settings
from gateway.store import Store, sqlite_path


def open_ledger(settings: Settings, store: Store, *, clock: Clock | None = None) -> Ledger:
    counters: CounterBackend
    if settings.store.redis_url:
        counters = RedisCounters.connect(
            settings.store.redis_url,
            settings.ledger.redis_prefix,
            connect_timeout_s=settings.ledger.redis_connect_timeout_s,
            timeout_s=settings.ledger.redis_timeout_s,
        )
    elif (path := sqlite_path(settings.store_url())) is not None:
        counters = SQLiteCounters(path)
    else:
        counters = SQLCounters.connect(store)
    return Ledger(BudgetStore(store.engine), counters, settings.ledger, clock=clock)
