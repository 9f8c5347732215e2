"""The results database's tables as SQLAlchemy 2 models, and the schema version they make.

The schema is versioned by the Alembic migrations in ``partbench/migrations``: revision N (as
"000N") leaves ``schema_version`` N in ``partbench_meta``, and these models match the head
(tests/test_store.py checks that they agree).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from partbench.store.liveness import HEARTBEAT_TIMEOUT, is_abandoned
from partbench.store.values import now

# The head of partbench/migrations/versions.
SCHEMA_VERSION = 3
REVISIONS = tuple(f"{n:04d}" for n in range(1, SCHEMA_VERSION + 1))
HEAD_REVISION = REVISIONS[-1]
VERSION_TABLE = "partbench_alembic_version"

# 64-bit whole numbers (schema 3): BIGINT on PostgreSQL; on SQLite every INTEGER already holds
# 64 bits, and the column keeps the INTEGER it was declared with.
WideInteger = BigInteger().with_variant(Integer(), "sqlite")

RUN_STATUSES = ("running", "done", "failed", "interrupted")
LISTED_STATUSES = (*RUN_STATUSES, "abandoned")
SETTLED_BY_FAIL = ("failed", "interrupted")


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # running, done, failed, interrupted
    encoder: Mapped[str] = mapped_column(String(200), index=True)
    encoder_plugin: Mapped[str] = mapped_column(String(200))
    family: Mapped[str] = mapped_column(String(40))
    weights_id: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(100), index=True)
    task_plugin: Mapped[str] = mapped_column(String(200))
    level: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(100), index=True)
    dataset_fingerprint: Mapped[str] = mapped_column(String(100))
    config: Mapped[dict] = mapped_column(JSON)  # everything that went into the run
    config_hash: Mapped[str] = mapped_column(String(64), index=True)
    headline_metric: Mapped[str] = mapped_column(String(60))
    n_items: Mapped[int | None] = mapped_column(WideInteger, nullable=True)
    items_per_class: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    timing: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    device: Mapped[str] = mapped_column(String(200))
    versions: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(WideInteger)
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # per-class scores, spreads
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # schema 2
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(WideInteger, nullable=True)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)
    chance: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # metric -> chance level, percent

    metrics: Mapped[list[Metric]] = relationship(
        back_populates="run", cascade="all, delete-orphan", lazy="selectin"
    )

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @property
    def headline(self) -> Metric | None:
        return self.metric(self.headline_metric)

    @property
    def abandoned(self) -> bool:
        """Running, but nobody is running it: judged by the store that loaded the row (its
        heartbeat timeout), else with the default timeout."""
        cached = self.__dict__.get("_pb_abandoned")
        if cached is not None:
            return cached
        return is_abandoned(self, HEARTBEAT_TIMEOUT)

    @property
    def state(self) -> str:
        """The status to show: 'abandoned' for a running row whose process is gone."""
        return "abandoned" if self.abandoned else self.status


class Metric(Base):
    __tablename__ = "metrics"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(60))
    value: Mapped[float] = mapped_column(Float)
    ci_low: Mapped[float | None] = mapped_column(Float, nullable=True)
    ci_high: Mapped[float | None] = mapped_column(Float, nullable=True)

    run: Mapped[Run] = relationship(back_populates="metrics")


class Meta(Base):
    __tablename__ = "partbench_meta"

    key: Mapped[str] = mapped_column(String(60), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class RunItems(Base):
    """A run's per-item results: one compressed npz per run, apart from ``runs`` so that
    listing runs never loads them."""

    __tablename__ = "run_items"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    summary: Mapped[dict] = mapped_column(JSON)  # name -> {"dtype", "shape"}
    nbytes: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class RunClaim(Base):
    """Which run holds a configuration. Its primary key is what makes a claim atomic: of two
    processes inserting (or swapping) the row at once, exactly one succeeds."""

    __tablename__ = "run_claims"

    config_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
