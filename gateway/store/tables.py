"""Table definitions. Every change here comes with an Alembic revision in gateway/migrations."""

from __future__ import annotations

from sqlalchemy import JSON, Column, DateTime, ForeignKey, Index, String, Table

# The spend log, and the metadata every table is on, are defined with the ledger's tables: the
# ledger rebuilds its counters and its reports from the log; the store writes its rows.
from ledger.tables import metadata as metadata
from ledger.tables import router_outcomes as router_outcomes
from ledger.tables import spend_log as spend_log

teams = Table(
    "teams",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # The team's default latency class (revision 0010); null: the policy's.
    Column("latency_class", String(16), nullable=True),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("team", String(64), ForeignKey("teams.name", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_hint", String(16), nullable=False),
    Column("allowed_models", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
    # The key's default latency class (revision 0010); null: the team's.
    Column("latency_class", String(16), nullable=True),
    Index("ix_api_keys_team", "team"),
)

# A deleted team (revision 0006): its spend rows and budgets were renamed to its id, `name~hex`.
archived_teams = Table(
    "archived_teams",
    metadata,
    Column("id", String(128), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=False),
    Index("ix_archived_teams_name", "name"),
)
