"""Shadow-judged routing outcomes (issue 21): one row per sampled request whose other tier was
also called and whose two answers a judge deployment graded.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "router_outcomes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("outcome_id", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("team", sa.String(128), nullable=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("prompt_hash", sa.String(64), nullable=False),
        sa.Column("prompt_text", sa.Text, nullable=True),
        sa.Column("reasoning_demand", sa.Float, nullable=True),
        sa.Column("category", sa.String(32), nullable=True),
        sa.Column("router_artifact", sa.String(32), nullable=True),
        sa.Column("served", sa.String(8), nullable=False),
        sa.Column("light_tier", sa.String(64), nullable=False),
        sa.Column("strong_tier", sa.String(64), nullable=False),
        sa.Column("light_deployment", sa.String(256), nullable=True),
        sa.Column("strong_deployment", sa.String(256), nullable=True),
        sa.Column("light_completion_tokens", sa.Integer, nullable=True),
        sa.Column("strong_completion_tokens", sa.Integer, nullable=True),
        sa.Column("verdict", sa.String(8), nullable=True),
        sa.Column("judge_deployment", sa.String(256), nullable=True),
        sa.Column("shadow_cost_picousd", sa.BigInteger, nullable=False),
        sa.Column("judge_cost_picousd", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_router_outcomes_outcome_id", "router_outcomes", ["outcome_id"], unique=True)
    op.create_index("ix_router_outcomes_team_created", "router_outcomes", ["team", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_router_outcomes_team_created", table_name="router_outcomes")
    op.drop_index("ix_router_outcomes_outcome_id", table_name="router_outcomes")
    op.drop_table("router_outcomes")
