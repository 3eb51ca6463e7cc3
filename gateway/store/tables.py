"""Table definitions. Every change here comes with an Alembic revision in gateway/migrations."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)

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

# The batch API (revision 0011, gateway/batches/). A file's bytes are in the database, so every
# replica reads what any one of them received.
files = Table(
    "files",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("team", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("filename", String(256), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_files_team", "team", "created_at"),
)

# One client batch: OpenAI's lifecycle in `status`; `lease_owner` and `lease_until` say which
# gateway process drives it (another takes over once the lease has run out).
batches = Table(
    "batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("team", String(64), nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("output_file_id", String(64), nullable=True),
    Column("error_file_id", String(64), nullable=True),
    Column("status", String(16), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("total", Integer, nullable=False, server_default="0"),
    Column("completed", Integer, nullable=False, server_default="0"),
    Column("failed", Integer, nullable=False, server_default="0"),
    Column("metadata", JSON, nullable=True),
    Column("errors", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("in_progress_at", DateTime(timezone=True), nullable=True),
    Column("finalizing_at", DateTime(timezone=True), nullable=True),
    Column("completed_at", DateTime(timezone=True), nullable=True),
    Column("failed_at", DateTime(timezone=True), nullable=True),
    Column("cancelling_at", DateTime(timezone=True), nullable=True),
    Column("cancelled_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("expired_at", DateTime(timezone=True), nullable=True),  # revision 0012
    Column("lease_owner", String(32), nullable=True),
    Column("lease_until", DateTime(timezone=True), nullable=True),
    Index("ix_batches_team", "team", "created_at"),
    Index("ix_batches_status", "status"),
)

# One provider batch job: the lines of a batch routed to one deployment.
batch_jobs = Table(
    "batch_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("batch_id", String(64), ForeignKey("batches.id", ondelete="CASCADE"), nullable=False),
    Column("deployment", String(128), nullable=False),
    Column("upstream_file_id", String(128), nullable=True),
    Column("upstream_batch_id", String(128), nullable=True),
    Column("status", String(16), nullable=False),
    # Revision 0012: failed submissions so far, and when the next one may be tried.
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("retry_at", DateTime(timezone=True), nullable=True),
    Index("ix_batch_jobs_batch", "batch_id"),
)

# One line of a batch's input file, in the client's order (`line`): its route, its hold (to be
# settled by whichever process reads its result) and its result or error.
batch_lines = Table(
    "batch_lines",
    metadata,
    Column("batch_id", String(64), ForeignKey("batches.id", ondelete="CASCADE"), primary_key=True),
    Column("line", Integer, primary_key=True),
    Column("custom_id", String(256), nullable=True),
    Column("job_id", String(64), nullable=True),
    Column("requested_model", String(128), nullable=True),
    Column("deployment", String(128), nullable=True),
    Column("tier", String(64), nullable=True),
    Column("route_reason", Text, nullable=True),
    Column("hold_id", String(64), nullable=True),
    Column("held_picousd", BigInteger, nullable=True),
    Column("held_tokens", BigInteger, nullable=True),
    Column("held_at", DateTime(timezone=True), nullable=True),
    Column("status", String(16), nullable=False),
    Column("result", JSON, nullable=True),
)
