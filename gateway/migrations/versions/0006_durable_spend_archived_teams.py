"""Idempotent spend rows, archived teams, and the ledger's worker heartbeats.

- spend_log.record_id: the gateway's own id of each row (x-request-id is the client's and may
  repeat), unique, so that replaying a journal or the fallback file writes a row at most once.
- spend_log.team and budgets.subject widen to 128: an archived team is renamed `name~id`.
- archived_teams: a deleted team's id, name and dates; its spend rows and budgets carry the id.
- ledger_workers: each serving process's heartbeat; holds of a process whose heartbeat stopped
  are released before their time to live (hold ids start with the owner's id).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        batch.add_column(sa.Column("record_id", sa.String(32), nullable=True))
    op.create_index("ix_spend_log_record_id", "spend_log", ["record_id"], unique=True)
    if op.get_bind().dialect.name != "sqlite":
        # SQLite does not enforce lengths; recreating its tables for that would cost a copy.
        op.alter_column("spend_log", "team", type_=sa.String(128))
        op.alter_column("budgets", "subject", type_=sa.String(128))
    op.create_table(
        "archived_teams",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_archived_teams_name", "archived_teams", ["name"])
    op.create_table(
        "ledger_workers",
        sa.Column("owner", sa.String(32), primary_key=True),
        sa.Column("seen_at_ms", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("ledger_workers")
    op.drop_index("ix_archived_teams_name", "archived_teams")
    op.drop_table("archived_teams")
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("budgets", "subject", type_=sa.String(64))
        op.alter_column("spend_log", "team", type_=sa.String(64))
    op.drop_index("ix_spend_log_record_id", "spend_log")
    with op.batch_alter_table("spend_log") as batch:
        batch.drop_column("record_id")
