"""Spend log: mark requests answered from the prompt cache.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        batch.add_column(
            sa.Column("cache_hit", sa.Boolean, nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        batch.drop_column("cache_hit")
