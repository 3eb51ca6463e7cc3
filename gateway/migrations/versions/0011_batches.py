"""The batch API's tables: files, batches, their provider jobs and their lines (issue 26).

- files: an uploaded JSONL (purpose `batch`) or a batch's output or error file, its bytes in
  the database so that every replica serves what any one received.
- batches: one client batch in OpenAI's lifecycle, with the lease of the process driving it.
- batch_jobs: the provider batch job of the lines routed to one deployment.
- batch_lines: each input line in order, its route, its budget hold and its result.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("content", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_files_team", "files", ["team", "created_at"])
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("team", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("total", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("metadata", sa.JSON, nullable=True),
        sa.Column("errors", sa.JSON, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("in_progress_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finalizing_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelling_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(32), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_batches_team", "batches", ["team", "created_at"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "batch_id",
            sa.String(64),
            sa.ForeignKey("batches.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("deployment", sa.String(128), nullable=False),
        sa.Column("upstream_file_id", sa.String(128), nullable=True),
        sa.Column("upstream_batch_id", sa.String(128), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
    )
    op.create_index("ix_batch_jobs_batch", "batch_jobs", ["batch_id"])
    op.create_table(
        "batch_lines",
        sa.Column(
            "batch_id",
            sa.String(64),
            sa.ForeignKey("batches.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("line", sa.Integer, primary_key=True),
        sa.Column("custom_id", sa.String(256), nullable=True),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("requested_model", sa.String(128), nullable=True),
        sa.Column("deployment", sa.String(128), nullable=True),
        sa.Column("tier", sa.String(64), nullable=True),
        sa.Column("route_reason", sa.Text, nullable=True),
        sa.Column("hold_id", sa.String(64), nullable=True),
        sa.Column("held_picousd", sa.BigInteger, nullable=True),
        sa.Column("held_tokens", sa.BigInteger, nullable=True),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("batch_lines")
    op.drop_table("batch_jobs")
    op.drop_index("ix_batches_status", "batches")
    op.drop_index("ix_batches_team", "batches")
    op.drop_table("batches")
    op.drop_index("ix_files_team", "files")
    op.drop_table("files")
