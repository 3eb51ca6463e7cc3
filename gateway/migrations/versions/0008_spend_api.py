"""The API of each request, and its Anthropic prompt-cache writes, on every spend row.

- api: `openai` (POST /v1/chat/completions) or `anthropic` (POST /v1/messages); null on rows
  written before this revision.
- cache_creation_tokens: of prompt_tokens, those an Anthropic upstream wrote to its prompt cache
  (priced at the cache-write rate, apart from cached_tokens read from it); 0 on older rows.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column, and one with a constant server default: neither rewrites the table on
    # PostgreSQL; SQLite's batch mode adds both with ALTER TABLE ADD COLUMN.
    with op.batch_alter_table("spend_log") as batch:
        batch.add_column(sa.Column("api", sa.String(16), nullable=True))
        batch.add_column(
            sa.Column("cache_creation_tokens", sa.Integer, nullable=False, server_default="0")
        )


def downgrade() -> None:
    with op.batch_alter_table("spend_log") as batch:
        batch.drop_column("cache_creation_tokens")
        batch.drop_column("api")
