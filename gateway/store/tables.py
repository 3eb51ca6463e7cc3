"""Table definitions. Every change here comes with an Alembic revision in gateway/migrations."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

teams = Table(
    "teams",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
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
    Index("ix_api_keys_team", "team"),
)

# Money is an integer count of pico-dollars (1e-12 USD): exact for every per-token price with
# up to 12 decimal places, and summed exactly by both SQLite and PostgreSQL.
spend_log = Table(
    "spend_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("request_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    # A team's name, or `name~id` once the team was deleted and archived (archived_teams).
    Column("team", String(128), nullable=True),
    Column("key_id", String(32), nullable=True),
    Column("requested_model", String(256), nullable=True),
    Column("deployment", String(256), nullable=True),
    Column("tier", String(64), nullable=True),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("usage_estimated", Boolean, nullable=False, default=False),
    Column("cost_picousd", BigInteger, nullable=False, default=0),
    Column("upstream_ms", Float, nullable=True),
    Column("overhead_ms", Float, nullable=True),
    Column("stream", Boolean, nullable=False, default=False),
    Column("cache_hit", Boolean, nullable=False, default=False),
    Column("saved_picousd", BigInteger, nullable=False, default=0),
    Column("status", Integer, nullable=False),
    Column("error_type", String(64), nullable=True),
    Column("route_reason", Text, nullable=True),
    Column("attempts", Integer, nullable=False, default=1),
    # The gateway's own id of the row (request_id is the client's and may repeat): unique, so a
    # replayed journal or fallback file writes each row at most once (revision 0006).
    Column("record_id", String(32), nullable=True),
    Index("ix_spend_log_request_id", "request_id"),
    Index("ix_spend_log_record_id", "record_id", unique=True),
    Index("ix_spend_log_team_created", "team", "created_at"),
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
