"""The ledger's tables: the spend log its counters are rebuilt from, budgets (revision 0005), and
the embedded store's counters, reservations and worker heartbeats.

Every table of the service is on `metadata` (gateway/store/tables.py adds teams and keys); every
change here comes with an Alembic revision in gateway/migrations.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

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
    # The router's estimate of the prompt and what produced it (revision 0007), so the router
    # can be scored on real traffic (`rightsize eval --spend-log`): null on cache hits and on
    # requests refused before the router ran.
    Column("reasoning_demand", Float, nullable=True),
    Column("token_budget_p50", Integer, nullable=True),
    Column("token_budget_p90", Integer, nullable=True),
    Column("category", String(32), nullable=True),
    Column("router_artifact", String(32), nullable=True),
    Column("config_hash", String(32), nullable=True),
    # The API the request came in on, `openai` or `anthropic`, and the prompt-cache writes an
    # Anthropic upstream priced apart (revision 0008); api is null on older rows.
    Column("api", String(16), nullable=True),
    Column("cache_creation_tokens", Integer, nullable=False, default=0, server_default="0"),
    # interactive, batch or background (revision 0010); null on older rows.
    Column("latency_class", String(16), nullable=True),
    Index("ix_spend_log_request_id", "request_id"),
    Index("ix_spend_log_record_id", "record_id", unique=True),
    Index("ix_spend_log_team_created", "team", "created_at"),
)


# Shadow evaluation (issue 21, revision 0009): for a sampled request the tier that did not serve
# it is called too, in the background, and a judge deployment grades the two answers. Each row
# is one judged pair; `rightsize report routing` and `tune` read them. The prompt text is kept
# only when the team allows it; its hash always.
router_outcomes = Table(
    "router_outcomes",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("outcome_id", String(32), nullable=False),  # the gateway's id: writes are idempotent
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("team", String(128), nullable=True),
    Column("request_id", String(64), nullable=False),  # the served request's, as in spend_log
    Column("prompt_hash", String(64), nullable=False),  # sha256 hex of the prompt the router read
    Column("prompt_text", Text, nullable=True),
    # The router's estimate of the prompt when it was served.
    Column("reasoning_demand", Float, nullable=True),
    Column("category", String(32), nullable=True),
    Column("router_artifact", String(32), nullable=True),
    # The two tiers compared (light: the cheaper one), their deployments, and which one served.
    Column("served", String(8), nullable=False),  # light or strong
    Column("light_tier", String(64), nullable=False),
    Column("strong_tier", String(64), nullable=False),
    Column("light_deployment", String(256), nullable=True),
    Column("strong_deployment", String(256), nullable=True),
    Column("light_completion_tokens", Integer, nullable=True),
    Column("strong_completion_tokens", Integer, nullable=True),
    # The judge's preference: light, strong or tie; null when there is no verdict (a failed
    # shadow call or judge, with `error` saying which).
    Column("verdict", String(8), nullable=True),
    Column("judge_deployment", String(256), nullable=True),
    Column("shadow_cost_picousd", BigInteger, nullable=False, default=0),
    Column("judge_cost_picousd", BigInteger, nullable=False, default=0),
    Column("error", Text, nullable=True),
    Index("ix_router_outcomes_outcome_id", "outcome_id", unique=True),
    Index("ix_router_outcomes_team_created", "team", "created_at"),
)


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
