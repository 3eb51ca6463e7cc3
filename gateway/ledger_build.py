"""Build the ledger the configuration asks for: Redis counters when store.redis_url is set,
else counters in the SQL store (SQLite: the embedded backend; PostgreSQL: row locks, on the
store's own engine, so that a worker holds one connection pool)."""

from __future__ import annotations

from gateway.settings import Settings
from gateway.store import Store, sqlite_path
from ledger.backend import CounterBackend
from ledger.budgets import BudgetStore
from ledger.ledger import Clock, Ledger
from ledger.redis_backend import RedisCounters
from ledger.sql_backend import SQLCounters
from ledger.sqlite_backend import SQLiteCounters


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
        # On the store's engine: a worker holds one connection pool, not two, so workers x pool
        # stays within the server's max_connections (store.pool_size).
        counters = SQLCounters(store.engine)
    return Ledger(BudgetStore(store.engine), counters, settings.ledger, clock=clock)
