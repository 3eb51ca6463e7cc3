"""The router's estimate on every spend row, and what produced it.

- reasoning_demand, token_budget_p50, token_budget_p90, category: the router's estimate of the
  prompt (null on cache hits and on requests refused before the router ran).
- router_artifact: the id of the router artifact that made the estimate (a hash of its files).
- config_hash: a hash of the routing configuration in force (catalog, policy, router settings).

Together they let `rightsize eval --spend-log` score the router on logged traffic, and tell rows
of one artifact or configuration from another's.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("reasoning_demand", sa.Float),
    ("token_budget_p50", sa.Integer),
    ("token_budget_p90", sa.Integer),
    ("category", lambda: sa.String(32)),
    ("router_artifact", lambda: sa.String(32)),
    ("config_hash", lambda: sa.String(32)),
)


def upgrade() -> None:
    # Nullable columns without a default: PostgreSQL adds them without rewriting the table; on
    # SQLite, batch mode adds them with ALTER TABLE ADD COLUMN (no copy needed).
    with op.batch_alter_table("spend_log") as batch:
        for name, kind in _COLUMNS:
            batch.add_column(sa.Column(name, kind(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        for name, _ in reversed(_COLUMNS):
            batch.drop_column(name)
