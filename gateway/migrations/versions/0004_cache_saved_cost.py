"""Spend log: the cost a prompt-cache hit saved (what the upstream call would have cost).

Revision ID: 0003_cache
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_cache"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        batch.add_column(
            sa.Column("saved_picousd", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        batch.drop_column("saved_picousd")
