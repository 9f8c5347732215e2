"""Round 2: who runs a run (host, pid, heartbeat), its traceback and chance levels, per-item
results in a table of their own, and one claim per configuration.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

NEW_RUN_COLUMNS = ("host", "pid", "heartbeat_at", "traceback", "chance")


def upgrade() -> None:
    op.add_column("runs", sa.Column("host", sa.String(255), nullable=True))
    op.add_column("runs", sa.Column("pid", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("runs", sa.Column("traceback", sa.Text(), nullable=True))
    op.add_column("runs", sa.Column("chance", sa.JSON(), nullable=True))
    # Kept apart from runs so that listing runs never reads the arrays.
    op.create_table(
        "run_items",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("nbytes", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )
    # The primary key makes claiming a configuration atomic on any database.
    op.create_table(
        "run_claims",
        sa.Column("config_hash", sa.String(64), primary_key=True),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.execute("UPDATE partbench_meta SET value = '2' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.execute("UPDATE partbench_meta SET value = '1' WHERE key = 'schema_version'")
    op.drop_table("run_claims")
    op.drop_table("run_items")
    with op.batch_alter_table("runs") as batch:
        for column in reversed(NEW_RUN_COLUMNS):
            batch.drop_column(column)
