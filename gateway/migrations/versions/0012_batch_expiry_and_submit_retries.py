"""Batch expiry and bounded provider-job submission retries (issue 26).

- batches.expired_at: when a batch past its `expires_at` was moved to `expired`.
- batch_jobs.attempts, batch_jobs.retry_at: a provider job's failed submissions so far and
  when the next one may be tried (backoff), so that every replica counts the same tries.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batches") as table:
        table.add_column(sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("batch_jobs") as table:
        table.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        table.add_column(sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_jobs") as table:
        table.drop_column("retry_at")
        table.drop_column("attempts")
    with op.batch_alter_table("batches") as table:
        table.drop_column("expired_at")
