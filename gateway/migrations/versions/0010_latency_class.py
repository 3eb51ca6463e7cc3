"""Latency classes (issue 26): on every spend row, and as team and key defaults.

- spend_log.latency_class: interactive, batch or background; null on rows written before.
- teams.latency_class, api_keys.latency_class: the default class of a team's or key's requests
  that send no x-rightsize-latency header; null: the key's team's, then the policy's.

Revision ID: 0010
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None

_TABLES = ("spend_log", "teams", "api_keys")


def upgrade() -> None:
    # Nullable columns without defaults: no table rewrite on PostgreSQL, ADD COLUMN on SQLite.
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("latency_class", sa.String(16), nullable=True))


def downgrade() -> None:
    for table in reversed(_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("latency_class")
