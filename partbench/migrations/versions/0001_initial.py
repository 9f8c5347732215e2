"""The schema of partbench 0.1.0, exactly: runs, metrics, partbench_meta (schema_version 1).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("encoder", sa.String(200), nullable=False),
        sa.Column("encoder_plugin", sa.String(200), nullable=False),
        sa.Column("family", sa.String(40), nullable=False),
        sa.Column("weights_id", sa.String(200), nullable=False),
        sa.Column("task", sa.String(100), nullable=False),
        sa.Column("task_plugin", sa.String(200), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("dataset", sa.String(100), nullable=False),
        sa.Column("dataset_fingerprint", sa.String(100), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("config_hash", sa.String(64), nullable=False),
        sa.Column("headline_metric", sa.String(60), nullable=False),
        sa.Column("n_items", sa.Integer(), nullable=True),
        sa.Column("items_per_class", sa.JSON(), nullable=True),
        sa.Column("timing", sa.JSON(), nullable=True),
        sa.Column("device", sa.String(200), nullable=False),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    for column in ("status", "encoder", "task", "dataset", "config_hash"):
        op.create_index(f"ix_runs_{column}", "runs", [column])
    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ci_low", sa.Float(), nullable=True),
        sa.Column("ci_high", sa.Float(), nullable=True),
    )
    op.create_index("ix_metrics_run_id", "metrics", ["run_id"])
    meta = op.create_table(
        "partbench_meta",
        sa.Column("key", sa.String(60), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
    )
    op.bulk_insert(meta, [{"key": "schema_version", "value": "1"}])


def downgrade() -> None:
    op.drop_table("partbench_meta")
    op.drop_index("ix_metrics_run_id", table_name="metrics")
    op.drop_table("metrics")
    for column in ("status", "encoder", "task", "dataset", "config_hash"):
        op.drop_index(f"ix_runs_{column}", table_name="runs")
    op.drop_table("runs")
