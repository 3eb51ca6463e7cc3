"""Budgets, the embedded ledger's counters and reservations, and a report index on the spend log.

Revision ID: 0005
Revises: 0003_cache
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0003_cache"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budgets",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("scope", sa.String(8), nullable=False),
        sa.Column("subject", sa.String(64), nullable=False),
        sa.Column("period", sa.String(16), nullable=False),
        sa.Column("limit_picousd", sa.BigInteger, nullable=True),
        sa.Column("limit_tokens", sa.BigInteger, nullable=True),
        sa.Column("limit_requests", sa.BigInteger, nullable=True),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("soft_at_percent", sa.Integer, nullable=True),
        sa.Column("alert_percents", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_budgets_subject", "budgets", ["scope", "subject"])
    op.create_table(
        "ledger_counters",
        sa.Column("key", sa.String(300), primary_key=True),
        sa.Column("spent_picousd", sa.BigInteger, nullable=False),
        sa.Column("spent_tokens", sa.BigInteger, nullable=False),
        sa.Column("spent_requests", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=True),
    )
    op.create_table(
        "ledger_reservations",
        sa.Column("hold_id", sa.String(64), primary_key=True),
        sa.Column("counter", sa.String(300), primary_key=True),
        sa.Column("picousd", sa.BigInteger, nullable=False),
        sa.Column("tokens", sa.BigInteger, nullable=False),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index(
        "ix_ledger_reservations_counter", "ledger_reservations", ["counter", "expires_at_ms"]
    )
    # Reports over all teams scan a time range; the per-team index already exists.
    op.create_index("ix_spend_log_created", "spend_log", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_spend_log_created", "spend_log")
    op.drop_table("ledger_reservations")
    op.drop_table("ledger_counters")
    op.drop_table("budgets")
