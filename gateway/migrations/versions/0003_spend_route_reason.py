"""Spend log: the policy's explanation of each routing decision, and upstream attempts.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        batch.add_column(sa.Column("route_reason", sa.Text, nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        batch.drop_column("attempts")
        batch.drop_column("route_reason")
