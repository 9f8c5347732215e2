"""Whole numbers of any size the command line accepts: seed, pid and n_items become 64-bit.

A seed up to 2**32 - 1 - 1000 (the runner's range) does not fit PostgreSQL's 32-bit integer.
SQLite stores every INTEGER in up to 64 bits already, so there the declared type changes and
nothing else (no table is rebuilt).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WIDE_COLUMNS = (("seed", False), ("pid", True), ("n_items", True))


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for column, nullable in WIDE_COLUMNS:
            op.alter_column(
                "runs", column, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=nullable
            )
    op.execute("UPDATE partbench_meta SET value = '3' WHERE key = 'schema_version'")


def downgrade() -> None:
    op.execute("UPDATE partbench_meta SET value = '2' WHERE key = 'schema_version'")
    if op.get_bind().dialect.name != "sqlite":
        for column, nullable in WIDE_COLUMNS:
            op.alter_column(
                "runs", column, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=nullable
            )
