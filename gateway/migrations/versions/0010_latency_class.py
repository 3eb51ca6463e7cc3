"""Latency classes (issue 26): on every spend row, and as team and key defaults.

- spend_log.latency_class: interactive, batch or background; null on rows written before.
- teams.latency_class, api_keys.latency_class: the default class of a team's or key's requests
  that send no x-rightsize-latency header; null: the key's team's, then the policy's.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TABLES = ("spend_log", "teams", "api_keys")


def upgrade() -> None:
    # Nullable columns without defaults: no table rewrite on PostgreSQL, ADD COLUMN on SQLite.
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("latency_class", sa.String(16), nullable=True))


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in reversed(_TABLES):
        if sqlite:
            # Not batch mode: it would recreate `teams`, and dropping the old table cascades to
            # every key (api_keys' foreign key). SQLite 3.35+ drops a plain column in place.
            op.execute(f"ALTER TABLE {table} DROP COLUMN latency_class")
        else:
            op.drop_column(table, "latency_class")
