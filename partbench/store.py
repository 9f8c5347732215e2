"""The results store: SQLAlchemy 2 models and the run lifecycle (running -> done | failed).

Every write is a short transaction of its own, so a crash or Ctrl-C never leaves a half
written run: a run is either 'running' (never finished), 'done' with all its metrics, or
'failed' with its error.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    create_engine,
    select,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from partbench.errors import PartbenchError

SCHEMA_VERSION = 1


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # running, done, failed
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
    n_items: Mapped[int | None] = mapped_column(Integer, nullable=True)
    items_per_class: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    timing: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    device: Mapped[str] = mapped_column(String(200))
    versions: Mapped[dict] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    details: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # per-class scores, spreads
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=_now)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    metrics: Mapped[list[Metric]] = relationship(
        back_populates="run", cascade="all, delete-orphan", lazy="selectin"
    )

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    @property
    def headline(self) -> Metric | None:
        return self.metric(self.headline_metric)


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


@dataclass(frozen=True)
class MetricValue:
    value: float
    ci_low: float | None = None
    ci_high: float | None = None


class Store:
    """A results database at any SQLAlchemy URL (SQLite by default)."""

    def __init__(self, url: str):
        self.url = url
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise PartbenchError(f"not a database URL: '{url}' ({exc})") from exc
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # Several partbench processes may write one file; wait for the lock, don't fail.
            kwargs["connect_args"] = {"timeout": 30}
        try:
            self.engine: Engine = create_engine(url, **kwargs)
            Base.metadata.create_all(self.engine)
        except (OperationalError, NoSuchModuleError, ImportError) as exc:
            raise PartbenchError(f"cannot open the results database {url}: {exc}") from exc
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        with self.session() as s:
            if s.get(Meta, "schema_version") is None:
                s.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session() as s, s.begin():
            yield s

    def find_done(self, config_hash: str) -> Run | None:
        with self.session() as s:
            return s.scalars(
                select(Run)
                .where(Run.config_hash == config_hash, Run.status == "done")
                .order_by(Run.id.desc())
            ).first()

    def start(self, **fields: Any) -> int:
        with self.session() as s:
            run = Run(status="running", **fields)
            s.add(run)
            s.flush()
            return run.id

    def finish(
        self,
        run_id: int,
        metrics: Mapping[str, MetricValue],
        *,
        n_items: int | None,
        items_per_class: dict | None = None,
        timing: dict | None = None,
        details: dict | None = None,
    ) -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise PartbenchError(f"run {run_id} vanished from the store")
            for name, m in metrics.items():
                run.metrics.append(Metric(name=name, value=m.value, ci_low=m.ci_low, ci_high=m.ci_high))
            run.n_items, run.items_per_class = n_items, items_per_class
            run.timing, run.details = timing, details
            run.status, run.finished_at = "done", _now()

    def fail(self, run_id: int, error: str, status: str = "failed") -> None:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is not None:
                run.status, run.error, run.finished_at = status, error, _now()

    def runs(self, *, status: str | None = None, dataset: str | None = None) -> list[Run]:
        with self.session() as s:
            q = select(Run).order_by(Run.id)
            if status:
                q = q.where(Run.status == status)
            if dataset:
                q = q.where(Run.dataset == dataset)
            return list(s.scalars(q))
