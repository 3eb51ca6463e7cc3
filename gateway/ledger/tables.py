"""Ledger tables (revision 0005): budgets, and the embedded store's counters and reservations."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, String, Table

from gateway.store.tables import metadata, spend_log

budgets = Table(
    "budgets",
    metadata,
    # "team:search:monthly" or "key:key_0123:daily": one budget per subject and period.
    Column("id", String(200), primary_key=True),
    Column("scope", String(8), nullable=False),
    Column("subject", String(128), nullable=False),
    Column("period", String(16), nullable=False),
    Column("limit_picousd", BigInteger, nullable=True),
    Column("limit_tokens", BigInteger, nullable=True),
    Column("limit_requests", BigInteger, nullable=True),
    Column("mode", String(8), nullable=False),
    Column("soft_at_percent", Integer, nullable=True),
    Column("alert_percents", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Index("ix_budgets_subject", "scope", "subject"),
)

# Embedded mode only (no Redis): counters per budget window and the holds against them.
ledger_counters = Table(
    "ledger_counters",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("spent_picousd", BigInteger, nullable=False),
    Column("spent_tokens", BigInteger, nullable=False),
    Column("spent_requests", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=True),
)

ledger_reservations = Table(
    "ledger_reservations",
    metadata,
    Column("hold_id", String(64), primary_key=True),
    Column("counter", String(300), primary_key=True),
    Column("picousd", BigInteger, nullable=False),
    Column("tokens", BigInteger, nullable=False),
    Column("requests", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False),
    Index("ix_ledger_reservations_counter", "counter", "expires_at_ms"),
)

# Each serving process's heartbeat (revision 0006): holds whose owner's heartbeat stopped are
# released before their time to live. A hold id starts with its owner's id.
ledger_workers = Table(
    "ledger_workers",
    metadata,
    Column("owner", String(32), primary_key=True),
    Column("seen_at_ms", BigInteger, nullable=False),
)

# Reports over every team scan a time range; the per-team (team, created_at) index exists.
Index("ix_spend_log_created", spend_log.c.created_at)
