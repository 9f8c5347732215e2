"""The results store: SQLAlchemy 2 models and the run lifecycle.

A run is claimed ('running', with the host, process and a heartbeat of who runs it), then
settled as 'done' (metrics, per-item results, chance levels), 'failed' or 'interrupted' (error
and traceback). A 'running' row whose heartbeat is stale, or whose process is gone from this
host, is *abandoned*: shown so, never blocking a new claim, removed by ``prune``.

What the store guarantees:

- It checks what it opens before anything else: not SQLite, another application's tables or a
  newer partbench's schema are refused with a ``PartbenchError`` naming the file. The schema
  is versioned by the Alembic migrations in ``partbench/migrations`` and upgraded on open.
- Every write is one short transaction (``BEGIN IMMEDIATE`` on SQLite, in WAL mode with a busy
  timeout), retried when the database is locked. A result that still cannot be written is kept
  in a pending file under ``PARTBENCH_HOME/pending`` and stored by the next ``Store`` opened on
  the same database: a computed result is never thrown away.
- Claiming a configuration is atomic: of several processes claiming it at once exactly one gets
  a run id. On SQLite the write transaction is serialized as a whole; on PostgreSQL (read
  committed) the claim row is locked first and the runs of the configuration are read in one
  statement, and a new claim row is settled by its primary key.
- PostgreSQL (``postgresql+psycopg://``, or a plain ``postgresql://`` with psycopg installed):
  sessions in UTC, a lock timeout equal to the busy timeout, connections checked before use,
  migrations under an advisory lock; JSON columns are ``json``, per-item arrays ``bytea``.
- Nothing that is not a finite number reaches a metric or a JSON column.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import socket
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import numpy as np
from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    delete,
    event,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from partbench.errors import PartbenchError

# The head of partbench/migrations/versions: revision N (as "000N") leaves schema_version N.
SCHEMA_VERSION = 2
REVISIONS = tuple(f"{n:04d}" for n in range(1, SCHEMA_VERSION + 1))
HEAD_REVISION = REVISIONS[-1]
VERSION_TABLE = "partbench_alembic_version"

# A running run's process refreshes heartbeat_at at least every HEARTBEAT_INTERVAL seconds;
# one silent for HEARTBEAT_TIMEOUT seconds is abandoned. The margin covers a busy database.
HEARTBEAT_INTERVAL = 60.0
HEARTBEAT_TIMEOUT = 600.0
BUSY_TIMEOUT = 30.0
WRITE_RETRIES = 2

RUN_STATUSES = ("running", "done", "failed", "interrupted")
LISTED_STATUSES = (*RUN_STATUSES, "abandoned")
SETTLED_BY_FAIL = ("failed", "interrupted")

HOST = socket.gethostname()
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ITEM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,59}")
_T = TypeVar("_T")


class Base(DeclarativeBase):
    pass


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(t: dt.datetime | None) -> dt.datetime | None:
    """In UTC: SQLite gives back naive datetimes (every one the store writes is UTC),
    PostgreSQL aware ones in the session's zone."""
    if t is None:
        return None
    return t.replace(tzinfo=dt.timezone.utc) if t.tzinfo is None else t.astimezone(dt.timezone.utc)


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
    # schema 2
    host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
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


@dataclass(frozen=True)
class MetricValue:
    value: float
    ci_low: float | None = None
    ci_high: float | None = None


def _pid_alive(pid: int) -> bool:
    if os.name != "posix":
        return True  # no safe probe (os.kill would terminate); the heartbeat decides
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    try:  # a zombie has exited; it only waits for its parent to reap it
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def is_abandoned(run: Run, timeout: float, now: dt.datetime | None = None) -> bool:
    """A running row nobody runs: no heartbeat for ``timeout`` seconds, or its process has
    died on this host. A row written before heartbeats existed has none and counts as abandoned."""
    if run.status != "running":
        return False
    beat = _aware(run.heartbeat_at)
    if beat is None:
        return True
    if ((now or _now()) - beat).total_seconds() > timeout:
        return True
    return run.host == HOST and run.pid is not None and not _pid_alive(run.pid)


# ---------------------------------------------------------------------------------------------
# values that must be finite, JSON that must be JSON


def _strict_json(value: Any) -> str:
    # Backstop behind _clean_json: the database never receives NaN or Infinity as JSON.
    return json.dumps(value, allow_nan=False)


def _clean_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON (numpy scalars and arrays become numbers and lists); a
    non-finite number or anything JSON cannot hold is a PartbenchError naming ``where``."""
    if value is None or isinstance(value, (bool, str)):
        return value.replace("\x00", "\\x00") if isinstance(value, str) else value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise PartbenchError(f"{where} is {float(value)}, not a finite number")
        return float(value)
    if isinstance(value, np.ndarray):
        return _clean_json(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (str, int, np.integer)):
                raise PartbenchError(f"{where} has a key {key!r} that JSON cannot hold")
            out[str(key)] = _clean_json(v, f"{where}[{str(key)!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [_clean_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise PartbenchError(f"{where} holds a {type(value).__name__}, which JSON cannot hold")


def _finite(value: Any, where: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise PartbenchError(f"{where} is {value!r}, not a number") from None
    if not math.isfinite(number):
        raise PartbenchError(f"{where} is {number}, not a finite number")
    return number


def _text(value: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; everything else is kept as it came.
    return None if value is None else str(value).replace("\x00", "\\x00")


def encode_items(items: Mapping[str, Any], where: str = "per-item results") -> tuple[bytes, dict]:
    """Per-item arrays as one deflated npz (no pickles) and a summary of names, dtypes, shapes."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in items.items():
        if not isinstance(name, str) or not _ITEM_NAME.fullmatch(name):
            raise PartbenchError(f"{where}: '{name}' is not a valid name (letters, digits, _ . -)")
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise PartbenchError(f"{where}: '{name}' has dtype {array.dtype}; only numbers are stored")
        if array.ndim == 0:
            raise PartbenchError(f"{where}: '{name}' is a scalar, not one value per item")
        arrays[name] = np.ascontiguousarray(array)
    lengths = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise PartbenchError(f"{where}: the arrays disagree on the number of items: {lengths}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
    summary = {name: {"dtype": str(a.dtype), "shape": list(a.shape)} for name, a in arrays.items()}
    return buffer.getvalue(), summary


def decode_items(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


# ---------------------------------------------------------------------------------------------
# what a URL points at


@dataclass(frozen=True)
class _Target:
    path: Path | None  # the SQLite file; None for memory or another database
    read_only: bool  # the URL itself opens it read-only (mode=ro, immutable=1)
    label: str  # how messages name it: the file, or the URL without its password


def _sqlite_target(url: Any) -> _Target:
    database = url.database
    if database in (None, "", ":memory:"):
        return _Target(None, False, "an in-memory SQLite database")
    query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    if str(query.get("uri", "")).lower() not in ("true", "1") or not database.startswith("file:"):
        return _Target(Path(database), False, database)
    # sqlite:///file:PATH?mode=ro&uri=true: the file is PATH, not a folder named "file:".
    parts = urlsplit(database)
    if parts.netloc not in ("", "localhost"):
        raise PartbenchError(f"SQLite URI '{database}' names a host; only local files can be opened")
    params = {**dict(parse_qsl(parts.query)), **{k: str(v) for k, v in query.items()}}
    path = unquote(parts.path)
    if params.get("mode") == "memory" or path in ("", ":memory:"):
        return _Target(None, False, "an in-memory SQLite database")
    read_only = params.get("mode") == "ro" or params.get("immutable", "").lower() in ("1", "true", "yes")
    return _Target(Path(path), read_only, path)


def _check_sqlite_file(target: _Target) -> None:
    """Refuse, before SQLite touches it, a path that is not a SQLite file."""
    path = target.path
    assert path is not None
    if path.is_dir():
        raise PartbenchError(f"{path} is a folder, not a results database")
    if path.exists():
        try:
            with open(path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as exc:
            raise PartbenchError(f"cannot read the results database {path}: {exc.strerror}") from exc
        if head and head != _SQLITE_MAGIC:
            raise PartbenchError(
                f"{path} is not a SQLite database, so not a partbench results store; "
                "point --db or PARTBENCH_DB at another file"
            )
    elif target.read_only:
        raise PartbenchError(f"no results database at {path} (the URL opens it read-only)")
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PartbenchError(f"cannot create the folder of the results database {path}: {exc}") from exc


def _postgres_driver(url: Any) -> Any:
    """``postgresql://`` means SQLAlchemy's default driver, psycopg2; partbench installs psycopg
    (version 3), so a plain URL uses it unless psycopg2 is what is installed."""
    if url.drivername != "postgresql":
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return url.set(drivername="postgresql+psycopg")
    return url


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own BEGIN handling is off: the store says when and how a transaction begins.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
        except Exception:
            pass  # a read-only file keeps its journal mode; reading works in either
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # A writer takes the write lock up front (waiting up to the busy timeout), so two
        # writers never deadlock upgrading read locks and a claim's check-then-insert is atomic.
        write = connection.get_execution_options().get("partbench_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _locked_holder(s: Session, config_hash: str) -> int | None:
    """The run holding a configuration's claim, its row locked first of all. On a server with
    row locks (PostgreSQL, read committed) every read after the lock sees what the previous
    holder committed, so two claimers cannot both see "nobody runs it" and both swap the claim.
    A claim row that does not exist yet is settled by its primary key instead. On SQLite
    (no FOR UPDATE) BEGIN IMMEDIATE already serializes the whole transaction."""
    return s.scalar(select(RunClaim.run_id).where(RunClaim.config_hash == config_hash).with_for_update())


def _is_lock_error(exc: BaseException) -> bool:
    message = str(getattr(exc, "orig", exc)).lower()
    return any(word in message for word in ("locked", "busy", "lock timeout", "could not obtain lock"))


class _Unwritable(PartbenchError):
    """A write that failed on every try."""


class _LostRace(Exception):
    """Another process claimed the configuration in the same instant."""


class _NotRunning(PartbenchError):
    def __init__(self, run_id: int, status: str):
        super().__init__(f"run {run_id} is already {status}; it is not settled again")
        self.status = status


@dataclass(frozen=True)
class _SchemaState:
    kind: str  # empty, current, upgradable, legacy, refused
    reason: str = ""


# ---------------------------------------------------------------------------------------------


class Store:
    """A results database at any SQLAlchemy URL (SQLite by default).

    ``busy_timeout``: seconds a SQLite statement waits for another writer's lock;
    ``retries``: further tries of a write that still found the database locked;
    ``heartbeat_timeout``: seconds without a heartbeat after which a running run is abandoned;
    ``pending_dir``: where unwritable results wait (default ``PARTBENCH_HOME/pending``).
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout: float = BUSY_TIMEOUT,
        retries: int = WRITE_RETRIES,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        pending_dir: str | Path | None = None,
    ) -> None:
        self.url = url
        self.busy_timeout, self.retries, self.heartbeat_timeout = busy_timeout, retries, heartbeat_timeout
        self.problems: list[str] = []  # pending results that could not be stored, for the CLI to show
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise PartbenchError(f"not a database URL: '{url}' ({exc})") from exc
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        kwargs: dict[str, Any] = {}
        if parsed.get_backend_name() in ("sqlite", "postgresql", "mysql"):
            kwargs["json_serializer"] = _strict_json
        if self.is_sqlite:
            self.target = _sqlite_target(parsed)
            if self.target.path is not None:
                _check_sqlite_file(self.target)
            kwargs["connect_args"] = {"timeout": busy_timeout}
        else:
            self.target = _Target(None, False, parsed.render_as_string(hide_password=True))
        if self.is_postgres:
            parsed = _postgres_driver(parsed)
            if parsed.get_driver_name() in ("psycopg", "psycopg2"):
                # Every timestamp comes back in UTC, whatever the server's zone; a claim waits
                # at most busy_timeout for a row another writer holds, then is retried.
                options = f"-c timezone=UTC -c lock_timeout={max(1, int(busy_timeout * 1000))}"
                given = parsed.query.get("options")
                if given:  # the URL's own options come last, so they win
                    options += " " + (given[-1] if isinstance(given, tuple) else given)
                kwargs["connect_args"] = {"options": options}
            # A connection dropped by the server (restart, idle timeout) is replaced, not an error.
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = create_engine(parsed, **kwargs)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            hint = ""
            if self.is_postgres:
                hint = "; PostgreSQL needs psycopg: pip install 'partbench[postgres]'"
            raise PartbenchError(f"cannot open the results database {self.where}: {exc}{hint}") from exc
        if self.is_sqlite:
            _sqlite_events(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = self.engine.execution_options(partbench_write=True)
        self._write_session = sessionmaker(self._writer, expire_on_commit=False)
        try:
            self._prepare_schema()
        except DBAPIError as exc:
            raise PartbenchError(f"cannot open the results database {self.where}: {exc.orig}") from exc
        if pending_dir is None:
            from partbench.paths import home

            pending_dir = home() / "pending"
        self.pending_dir = Path(pending_dir)
        self.flush_pending()

    @property
    def where(self) -> str:
        return self.target.label

    def close(self) -> None:
        """Close the pooled connections (a server counts them); the store opens new ones if used again."""
        self.engine.dispose()

    # -- opening -------------------------------------------------------------------------------

    def _schema_state(self, conn: Connection) -> _SchemaState:
        tables = set(inspect(conn).get_table_names())
        if not tables:
            return _SchemaState("empty")
        if "partbench_meta" not in tables:
            listed = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
            return _SchemaState(
                "refused",
                f"{self.where} is another application's database (its tables: {listed}), "
                "not a partbench results store; point --db or PARTBENCH_DB at another file",
            )
        raw = conn.execute(text("SELECT value FROM partbench_meta WHERE key = 'schema_version'")).scalar()
        try:
            version = int(raw)
        except (TypeError, ValueError):
            return _SchemaState("refused", f"{self.where} has no readable partbench schema version ({raw!r})")
        newer = (
            f"{self.where} was written by a newer partbench (schema version {{}}; this partbench "
            f"knows up to {SCHEMA_VERSION}); upgrade partbench to use it"
        )
        if version > SCHEMA_VERSION:
            return _SchemaState("refused", newer.format(version))
        if VERSION_TABLE not in tables:
            if version == 1:  # partbench 0.1.0: schema 1, from before the migrations
                return _SchemaState("legacy")
            return _SchemaState(
                "refused", f"{self.where} says schema version {version} but has no migration record"
            )
        revision = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
        if revision not in REVISIONS:
            return _SchemaState("refused", newer.format(revision))
        if revision == HEAD_REVISION and version == SCHEMA_VERSION:
            return _SchemaState("current")
        return _SchemaState("upgradable")

    def _prepare_schema(self) -> None:
        with self.engine.connect() as conn:
            state = self._schema_state(conn)
            conn.rollback()
        if state.kind == "current":  # the common case: no write, no Alembic import
            return
        if state.kind == "refused":
            raise PartbenchError(state.reason)
        if self.target.read_only:
            raise PartbenchError(
                f"{self.where} needs its schema created or upgraded to version {SCHEMA_VERSION}, "
                "but the URL opens it read-only; open it once without mode=ro"
            )
        from partbench.migrations import upgrade

        with self._writer.connect() as conn, conn.begin():
            if self.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242071)")  # one migrator at a time
            # Again under the write lock: another process may have migrated it meanwhile.
            state = self._schema_state(conn)
            if state.kind == "refused":
                raise PartbenchError(state.reason)
            if state.kind != "current":
                try:
                    upgrade(conn, stamp="0001" if state.kind == "legacy" else None)
                except DBAPIError as exc:
                    raise PartbenchError(
                        f"cannot upgrade the results database {self.where} to schema version "
                        f"{SCHEMA_VERSION}: {exc.orig}"
                    ) from exc

    def check_writable(self) -> None:
        """A PartbenchError when results could not be written here: call it before any
        encoder is loaded. A database that is merely locked by another writer is writable."""
        if self.target.read_only:
            raise PartbenchError(
                f"the results database {self.where} is opened read-only (mode=ro in the URL); "
                "nothing could be stored"
            )
        path = self.target.path
        if path is not None:
            if path.exists() and not os.access(path, os.W_OK):
                raise PartbenchError(f"the results database {path} is read-only (file permissions)")
            wal = path.with_name(path.name + "-wal")
            if not wal.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
                raise PartbenchError(
                    f"the folder of the results database {path} is read-only; SQLite needs to "
                    "write its journal there"
                )
        try:
            with self._writer.connect() as conn:
                trans = conn.begin()
                try:  # a write that changes nothing, rolled back: does the database accept writes?
                    conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=Meta.value))
                finally:
                    trans.rollback()
        except DBAPIError as exc:
            if _is_lock_error(exc):
                return
            raise PartbenchError(f"the results database {self.where} is not writable: {exc.orig}") from exc

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read transaction (on SQLite a deferred BEGIN: never waits for a writer in WAL mode)."""
        with self._session() as s, s.begin():
            yield s

    def _write(self, op: Callable[[Session], _T], *, retries: int | None = None) -> _T:
        """``op`` in one write transaction, tried again while the database is locked."""
        tries = (self.retries if retries is None else retries) + 1
        for attempt in range(tries):
            try:
                with self._write_session() as s, s.begin():
                    return op(s)
            except OperationalError as exc:
                if attempt + 1 == tries:
                    message = f"cannot write to the results database {self.where}: {exc.orig}"
                    raise _Unwritable(message) from exc
                time.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")

    def _mark(self, runs: Iterable[Run]) -> None:
        now = _now()
        for run in runs:
            run.__dict__["_pb_abandoned"] = is_abandoned(run, self.heartbeat_timeout, now)

    # -- reading -------------------------------------------------------------------------------

    def find_done(self, config_hash: str) -> Run | None:
        with self.session() as s:
            return s.scalars(
                select(Run)
                .where(Run.config_hash == config_hash, Run.status == "done")
                .order_by(Run.id.desc())
            ).first()

    def runs(self, *, status: str | None = None, dataset: str | None = None) -> list[Run]:
        """Stored runs, oldest first. ``status='running'`` gives the live ones,
        ``'abandoned'`` the running rows nobody runs any more."""
        if status is not None and status not in LISTED_STATUSES:
            raise PartbenchError(f"unknown run status '{status}'; known: {', '.join(LISTED_STATUSES)}")
        with self.session() as s:
            q = select(Run).order_by(Run.id)
            if status:
                q = q.where(Run.status == ("running" if status == "abandoned" else status))
            if dataset:
                q = q.where(Run.dataset == dataset)
            found = list(s.scalars(q))
        self._mark(found)
        if status == "running":
            return [r for r in found if not r.abandoned]
        if status == "abandoned":
            return [r for r in found if r.abandoned]
        return found

    def run(self, run_id: int) -> Run:
        with self.session() as s:
            run = s.get(Run, run_id)
        if run is None:
            raise PartbenchError(f"no run {run_id} in {self.where}")
        self._mark([run])
        return run

    def items(self, run_id: int) -> dict[str, np.ndarray]:
        """A run's per-item arrays; empty for a run stored without them."""
        with self.session() as s:
            data = s.scalar(select(RunItems.data).where(RunItems.run_id == run_id))
            if data is None and s.get(Run, run_id) is None:
                raise PartbenchError(f"no run {run_id} in {self.where}")
        return {} if data is None else decode_items(data)

    def items_many(self, run_ids: Iterable[int]) -> dict[int, dict[str, np.ndarray]]:
        """Per-item arrays of several runs in one query; runs without them are left out."""
        ids = sorted(set(run_ids))
        if not ids:
            return {}
        with self.session() as s:
            rows = s.execute(select(RunItems.run_id, RunItems.data).where(RunItems.run_id.in_(ids))).all()
        return {run_id: decode_items(data) for run_id, data in rows}

    def item_summary(self, run_id: int) -> dict[str, Any] | None:
        """Names, dtypes and shapes of a run's per-item arrays, without reading them."""
        with self.session() as s:
            row = s.execute(
                select(RunItems.summary, RunItems.nbytes).where(RunItems.run_id == run_id)
            ).first()
        return None if row is None else {"arrays": row[0], "stored_bytes": row[1]}

    def detail(self, run_id: int) -> dict[str, Any]:
        """Everything stored about one run, its error and traceback included."""
        run = self.run(run_id)
        return {
            "id": run.id,
            "status": run.state,
            "encoder": run.encoder,
            "encoder_plugin": run.encoder_plugin,
            "family": run.family,
            "weights_id": run.weights_id,
            "task": run.task,
            "task_plugin": run.task_plugin,
            "level": run.level,
            "dataset": run.dataset,
            "dataset_fingerprint": run.dataset_fingerprint,
            "headline": run.headline_metric,
            "metrics": {m.name: {"value": m.value, "ci": [m.ci_low, m.ci_high]} for m in run.metrics},
            "chance": run.chance,
            "n_items": run.n_items,
            "items_per_class": run.items_per_class,
            "items": self.item_summary(run_id),
            "timing": run.timing,
            "device": run.device,
            "versions": run.versions,
            "seed": run.seed,
            "config_hash": run.config_hash,
            "config": run.config,
            "details": run.details,
            "host": run.host,
            "pid": run.pid,
            "heartbeat_at": _aware(run.heartbeat_at),
            "started_at": _aware(run.started_at),
            "finished_at": _aware(run.finished_at),
            "error": run.error,
            "traceback": run.traceback,
        }

    # -- the lifecycle -------------------------------------------------------------------------

    def _clean_fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        for key in ("config", "versions"):
            if key in fields:
                fields[key] = _clean_json(fields[key], f"the run's {key}")
        columns = Run.__table__.columns
        for key, value in fields.items():
            # SQLite keeps any length, PostgreSQL refuses: the same clear error on both.
            length = getattr(columns[key].type, "length", None) if key in columns else None
            if length is not None and isinstance(value, str):
                if len(value) > length:
                    raise PartbenchError(
                        f"the run's {key} is {len(value)} characters long; the store keeps at most "
                        f"{length}: {value[:60]!r}..."
                    )
                fields[key] = _text(value)
        return fields

    def claim(self, config_hash: str, *, force: bool = False, **fields: Any) -> int | None:
        """Atomically start a 'running' run of this configuration and return its id; None when
        a done run (unless ``force``) or a live running run of it exists, or another process
        claimed it in the same instant. An abandoned run does not block: it is marked
        interrupted, naming the run that took over."""
        fields = self._clean_fields(dict(fields))

        def op(s: Session) -> int | None:
            now = _now()
            holder = _locked_holder(s, config_hash)
            # Done and running rows in one statement, so one snapshot: asked apart, a run that
            # finishes between the two questions would be seen neither done nor running.
            rows = list(
                s.scalars(
                    select(Run).where(Run.config_hash == config_hash, Run.status.in_(("done", "running")))
                )
            )
            if not force and any(r.status == "done" for r in rows):
                return None
            running = [r for r in rows if r.status == "running"]
            if any(not is_abandoned(r, self.heartbeat_timeout, now) for r in running):
                return None
            run = Run(
                status="running",
                config_hash=config_hash,
                host=HOST,
                pid=os.getpid(),
                heartbeat_at=now,
                started_at=now,
                **fields,
            )
            s.add(run)
            s.flush()
            if holder is None:
                try:
                    with s.begin_nested():
                        s.add(RunClaim(config_hash=config_hash, run_id=run.id, claimed_at=now))
                except IntegrityError:
                    raise _LostRace from None
            else:  # compare and swap: only the process that still sees the old holder wins
                swapped = s.execute(
                    update(RunClaim)
                    .where(RunClaim.config_hash == config_hash, RunClaim.run_id == holder)
                    .values(run_id=run.id, claimed_at=now)
                )
                if swapped.rowcount != 1:
                    raise _LostRace
            for old in running:
                old.status, old.finished_at = "interrupted", now
                old.error = f"abandoned (no live process: {old.host}, pid {old.pid}); run {run.id} took over"
            return run.id

        try:
            return self._write(op)
        except _LostRace:
            return None
        except _Unwritable as exc:
            raise PartbenchError(f"{exc}; nothing was started") from exc

    def adopt(
        self,
        fields: Mapping[str, Any],
        metrics: Sequence[tuple[str, float, float | None, float | None]],
        blob: bytes | None = None,
        summary: dict | None = None,
    ) -> tuple[str, int | None]:
        """Insert a settled run that was written elsewhere (``partbench db import``), with its
        metrics and per-item npz as they were. ``fields`` are the run's columns, ``config_hash``
        and ``status`` (done, failed or interrupted) included. Returns what happened and the new id:

        - ``("imported", id)``;
        - ``("done-here", None)``: a done run of this configuration is already here;
        - ``("running-here", None)``: a live run here holds this configuration (it will store it);
        - ``("present", None)``: this very run (configuration, status, start, host and pid) is here.

        A done run takes the configuration's claim exactly as ``claim`` does, so an import and
        a run of the same configuration racing each other store it once."""
        fields = self._clean_fields(dict(fields))
        status, config_hash = fields.get("status"), fields.get("config_hash")
        if status not in ("done", *SETTLED_BY_FAIL):
            raise PartbenchError(
                f"only settled runs are imported (done, failed, interrupted), not '{status}'"
            )
        rows = [
            (
                name,
                _finite(value, f"metric '{name}'"),
                _finite(low, f"the lower bound of metric '{name}'", optional=True),
                _finite(high, f"the upper bound of metric '{name}'", optional=True),
            )
            for name, value, low, high in metrics
        ]
        for key in ("started_at", "finished_at", "heartbeat_at"):
            fields[key] = _aware(fields.get(key))

        def op(s: Session) -> tuple[str, int | None]:
            now = _now()
            holder = _locked_holder(s, config_hash) if status == "done" else None
            here = list(s.scalars(select(Run).where(Run.config_hash == config_hash)))  # one snapshot
            if any(r.status == "done" for r in here):
                return "done-here", None
            if any(
                r.status == status
                and _aware(r.started_at) == fields["started_at"]
                and (r.host, r.pid) == (fields.get("host"), fields.get("pid"))
                for r in here
            ):
                return "present", None
            if status == "done" and any(
                r.status == "running" and not is_abandoned(r, self.heartbeat_timeout, now) for r in here
            ):
                return "running-here", None
            run = Run(**fields)
            s.add(run)
            s.flush()
            if status == "done":
                if holder is None:
                    try:
                        with s.begin_nested():
                            s.add(RunClaim(config_hash=config_hash, run_id=run.id, claimed_at=now))
                    except IntegrityError:
                        raise _LostRace from None
                elif (
                    s.execute(
                        update(RunClaim)
                        .where(RunClaim.config_hash == config_hash, RunClaim.run_id == holder)
                        .values(run_id=run.id, claimed_at=now)
                    ).rowcount
                    != 1
                ):
                    raise _LostRace
            for name, value, low, high in rows:
                s.add(Metric(run_id=run.id, name=name, value=value, ci_low=low, ci_high=high))
            if blob is not None:
                s.add(RunItems(run_id=run.id, summary=summary or {}, nbytes=len(blob), data=blob))
            return "imported", run.id

        for _ in range(2):
            try:
                return self._write(op)
            except _LostRace:
                continue  # another writer took the configuration this instant: look again
        return "running-here", None

    def start(self, **fields: Any) -> int:
        """A 'running' run without claiming its configuration (prefer ``claim``)."""
        fields = self._clean_fields(dict(fields))

        def op(s: Session) -> int:
            now = _now()
            run = Run(
                status="running", host=HOST, pid=os.getpid(), heartbeat_at=now, started_at=now, **fields
            )
            s.add(run)
            s.flush()
            return run.id

        return self._write(op)

    def heartbeat(self, run_ids: Sequence[int]) -> bool:
        """Tell other processes these runs are alive. One try: a missed beat is harmless as long
        as the next arrives within the heartbeat timeout. False when it could not be written."""
        ids = list(run_ids)
        if not ids:
            return True

        def op(s: Session) -> None:
            s.execute(update(Run).where(Run.id.in_(ids), Run.status == "running").values(heartbeat_at=_now()))

        try:
            self._write(op, retries=0)
        except _Unwritable:
            return False
        return True

    @contextmanager
    def keep_alive(
        self, run_ids: Iterable[int] = (), interval: float = HEARTBEAT_INTERVAL
    ) -> Iterator[set[int]]:
        """Heartbeat from a background thread every ``interval`` seconds while the block runs,
        for the runs in the yielded set (add and discard ids as runs start and settle)."""
        live = set(run_ids)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(interval):
                ids = live.copy()
                if ids:
                    self.heartbeat(sorted(ids))

        thread = threading.Thread(target=beat, name="partbench-heartbeat", daemon=True)
        thread.start()
        try:
            yield live
        finally:
            stop.set()
            thread.join(timeout=self.busy_timeout + 1)

    def finish(
        self,
        run_id: int,
        metrics: Mapping[str, Any],
        *,
        n_items: int | None,
        items_per_class: Mapping[str, int] | None = None,
        timing: Mapping[str, Any] | None = None,
        details: Mapping[str, Any] | None = None,
        items: Mapping[str, np.ndarray] | None = None,
        chance: Mapping[str, float] | None = None,
    ) -> Path | None:
        """Store a run's result and mark it done. A value that is not finite, or not JSON, is a
        PartbenchError naming it, and nothing is written (fail the run instead).

        Returns None when stored; the pending file's path when the database stayed locked (or
        unreachable) through every retry: that file is stored by the next Store opened here."""
        record = self._finish_record(run_id, metrics, n_items, items_per_class, timing, details, chance)
        blob, summary = encode_items(items, f"per-item results of run {run_id}") if items else (None, None)
        try:
            self._write(lambda s: self._apply_finish(s, run_id, record, blob, summary))
        except _Unwritable as exc:
            return self._keep_pending("finish", run_id, record, blob, summary, exc)
        return None

    def _finish_record(
        self,
        run_id: int,
        metrics: Mapping[str, Any],
        n_items: int | None,
        items_per_class: Mapping[str, int] | None,
        timing: Mapping[str, Any] | None,
        details: Mapping[str, Any] | None,
        chance: Mapping[str, float] | None,
    ) -> dict[str, Any]:
        rows = []
        for name, m in metrics.items():
            if not isinstance(name, str) or not 0 < len(name) <= 60:
                raise PartbenchError(f"run {run_id}: metric name {name!r} is not 1 to 60 characters long")
            where = f"metric '{name}' of run {run_id}"
            rows.append(
                [
                    name,
                    _finite(getattr(m, "value", m), where),
                    _finite(getattr(m, "ci_low", None), f"the lower bound of {where}", optional=True),
                    _finite(getattr(m, "ci_high", None), f"the upper bound of {where}", optional=True),
                ]
            )
        if n_items is not None and (isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer))):
            raise PartbenchError(f"run {run_id}: n_items is {n_items!r}, not a whole number")
        return {
            "metrics": rows,
            "n_items": None if n_items is None else int(n_items),
            "items_per_class": _clean_json(items_per_class, f"items per class of run {run_id}"),
            "timing": _clean_json(timing, f"timing of run {run_id}"),
            "details": _clean_json(details, f"details of run {run_id}"),
            "chance": None
            if chance is None
            else {str(k): _finite(v, f"chance level of '{k}' of run {run_id}") for k, v in chance.items()},
            "finished_at": _now().isoformat(),
        }

    def _apply_finish(
        self, s: Session, run_id: int, record: Mapping[str, Any], blob: bytes | None, summary: dict | None
    ) -> None:
        finished = dt.datetime.fromisoformat(record["finished_at"])
        # Compare and set: of two writers settling one run, only the first changes it.
        changed = s.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == "running")
            .values(
                status="done",
                finished_at=finished,
                heartbeat_at=finished,
                n_items=record["n_items"],
                items_per_class=record["items_per_class"],
                timing=record["timing"],
                details=record["details"],
                chance=record["chance"],
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if changed != 1:
            status = s.scalar(select(Run.status).where(Run.id == run_id))
            if status is None:
                raise PartbenchError(f"run {run_id} vanished from the store")
            raise _NotRunning(run_id, status)
        for name, value, low, high in record["metrics"]:
            s.add(Metric(run_id=run_id, name=name, value=value, ci_low=low, ci_high=high))
        if blob is not None:
            s.add(RunItems(run_id=run_id, summary=summary, nbytes=len(blob), data=blob))

    def fail(
        self, run_id: int, error: str, *, traceback: str | None = None, status: str = "failed"
    ) -> Path | None:
        """Mark a running run failed or interrupted with its error and traceback. A run already
        settled keeps its state: an interrupt arriving just after ``finish`` must not hide a
        stored result. Returns as ``finish`` does."""
        if status not in SETTLED_BY_FAIL:
            raise PartbenchError(f"a run fails as one of {', '.join(SETTLED_BY_FAIL)}, not '{status}'")
        record = {
            "status": status,
            "error": _text(error),
            "traceback": _text(traceback),
            "finished_at": _now().isoformat(),
        }
        try:
            self._write(lambda s: self._apply_fail(s, run_id, record))
        except _Unwritable as exc:
            return self._keep_pending("fail", run_id, record, None, None, exc)
        return None

    def _apply_fail(self, s: Session, run_id: int, record: Mapping[str, Any]) -> None:
        s.execute(
            update(Run)
            .where(Run.id == run_id, Run.status == "running")
            .values(
                status=record["status"],
                error=record["error"],
                traceback=record["traceback"],
                finished_at=dt.datetime.fromisoformat(record["finished_at"]),
            )
            .execution_options(synchronize_session=False)
        )

    def prune(self) -> int:
        """Delete abandoned runs (with their metrics and items); the number deleted. A run whose
        result waits in a pending file is kept: it is not abandoned, only not yet written."""
        waiting = {run_id for _, run_id, _ in self._pending_files()}

        def op(s: Session) -> int:
            now = _now()
            doomed = [
                r.id
                for r in s.scalars(select(Run).where(Run.status == "running"))
                if r.id not in waiting and is_abandoned(r, self.heartbeat_timeout, now)
            ]
            if doomed:
                s.execute(delete(Metric).where(Metric.run_id.in_(doomed)))
                s.execute(delete(RunItems).where(RunItems.run_id.in_(doomed)))
                s.execute(delete(RunClaim).where(RunClaim.run_id.in_(doomed)))
                s.execute(delete(Run).where(Run.id.in_(doomed)).execution_options(synchronize_session=False))
            return len(doomed)

        return self._write(op)

    # -- pending results -----------------------------------------------------------------------

    @property
    def _pending_key(self) -> str:
        # Keyed by the database, not the URL's spelling: a relative path, or the same file
        # opened read-only, finds the same pending results.
        ident = f"sqlite:{os.path.realpath(self.target.path)}" if self.target.path else self.url
        return hashlib.sha256(ident.encode()).hexdigest()[:16]

    def _pending_files(self) -> list[tuple[Path, int, str]]:
        if not self.pending_dir.is_dir():
            return []
        found = []
        for path in sorted(self.pending_dir.glob(f"{self._pending_key}-*.zip")):
            try:
                _, _, _, run_id, op = path.stem.split("-")
                found.append((path, int(run_id), op))
            except ValueError:
                continue
        return found

    def _keep_pending(
        self,
        op: str,
        run_id: int,
        record: Mapping[str, Any],
        blob: bytes | None,
        summary: dict | None,
        cause: Exception,
    ) -> Path:
        """Write the result where the next Store opened on this database will find it:
        atomically (a temporary file, fsync, rename), so a crash leaves it whole or absent."""
        meta = {
            "url": self.where,  # never the password
            "database": self.where,
            "op": op,
            "run_id": run_id,
            "record": record,
            "summary": summary,
            "error": str(cause),
        }
        name = f"{self._pending_key}-{time.time_ns():020d}-{os.getpid()}-{run_id}-{op}.zip"
        final = self.pending_dir / name
        partial = self.pending_dir / f".{name}.partial"
        try:
            self.pending_dir.mkdir(parents=True, exist_ok=True)
            with open(partial, "wb") as f:
                with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                    archive.writestr("meta.json", json.dumps(meta, allow_nan=False, indent=1))
                    if blob is not None:
                        archive.writestr("items.npz", blob, compress_type=zipfile.ZIP_STORED)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, final)
            _fsync_dir(self.pending_dir)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise PartbenchError(
                f"the result of run {run_id} could not be stored ({cause}) nor kept in "
                f"{self.pending_dir} ({exc})"
            ) from exc
        return final

    def flush_pending(self) -> int:
        """Store the results that earlier processes kept in pending files for this database,
        oldest first, removing each file once stored; the number stored. Stops at the first
        that still cannot be written (the files stay for next time)."""
        if self.target.read_only:
            return 0
        stored = 0
        for path, run_id, op in self._pending_files():
            try:
                with zipfile.ZipFile(path) as archive:
                    meta = json.loads(archive.read("meta.json"))
                    blob = archive.read("items.npz") if "items.npz" in archive.namelist() else None
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
                self.problems.append(f"cannot read the pending result {path}: {exc}")
                continue
            record = meta["record"]
            try:
                self._write(self._pending_op(op, run_id, record, blob, meta.get("summary")), retries=0)
            except _Unwritable:
                break
            except _NotRunning as exc:
                if op == "finish" and exc.status != "done":
                    self._set_aside(path, exc)
                    continue
                # Already stored (a flush that crashed before removing its file), or a failure
                # of a run that was settled another way: nothing left to do.
            except PartbenchError as exc:
                self._set_aside(path, exc)
                continue
            else:
                stored += 1
            path.unlink(missing_ok=True)
        return stored

    def _pending_op(
        self, op: str, run_id: int, record: Mapping[str, Any], blob: bytes | None, summary: dict | None
    ) -> Callable[[Session], None]:
        if op == "finish":
            return lambda s: self._apply_finish(s, run_id, record, blob, summary)
        return lambda s: self._apply_fail(s, run_id, record)

    def _set_aside(self, path: Path, why: Exception) -> None:
        """A pending result that can never be applied (its run was settled or deleted
        meanwhile) moves to pending/unstored/: kept for the user, not retried on every open."""
        aside = self.pending_dir / "unstored" / path.name
        try:
            aside.parent.mkdir(exist_ok=True)
            path.replace(aside)
        except OSError:
            aside = path
        self.problems.append(f"a pending result could not be stored ({why}); it is kept in {aside}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the rename itself is atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def format_detail(detail: Mapping[str, Any]) -> str:
    """``partbench runs --id N`` as plain text (never markup): one field a line, then the
    error and its traceback verbatim."""
    lines = []
    for key, value in detail.items():
        if key in ("error", "traceback"):
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str, sort_keys=True)
        lines.append(f"{key}: {'' if value is None else value}")
    if detail.get("error"):
        lines.append(f"error: {detail['error']}")
    if detail.get("traceback"):
        lines += ["traceback:", str(detail["traceback"]).rstrip()]
    return "\n".join(lines)
