"""Opening a results database at a SQLAlchemy URL, and writing to it.

- What is opened is checked before anything else: a path that is not a SQLite file is refused
  with a ``PartbenchError`` naming it, before SQLite touches it; the schema is checked (and
  migrated) by ``partbench.store.schema``.
- Every write is one short transaction (``BEGIN IMMEDIATE`` on SQLite, in WAL mode with a busy
  timeout), retried when the database is locked.
- PostgreSQL (``postgresql+psycopg://``, or a plain ``postgresql://`` with psycopg installed):
  sessions in UTC, a lock timeout equal to the busy timeout, connections checked before use.
- JSON columns never receive NaN or Infinity.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from sqlalchemy import create_engine, event, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from partbench.errors import PartbenchError
from partbench.store.models import Meta
from partbench.store.schema import prepare_schema
from partbench.store.values import strict_json

BUSY_TIMEOUT = 30.0
WRITE_RETRIES = 2

_SQLITE_MAGIC = b"SQLite format 3\x00"
_T = TypeVar("_T")


class Unwritable(PartbenchError):
    """A write that failed on every try."""


@dataclass(frozen=True)
class Target:
    path: Path | None  # the SQLite file; None for memory or another database
    read_only: bool  # the URL itself opens it read-only (mode=ro, immutable=1)
    label: str  # how messages name it: the file, or the URL without its password


def _sqlite_target(url: URL) -> Target:
    database = url.database
    if database in (None, "", ":memory:"):
        return Target(None, False, "an in-memory SQLite database")
    query = {k: (v[-1] if isinstance(v, tuple) else v) for k, v in url.query.items()}
    if str(query.get("uri", "")).lower() not in ("true", "1") or not database.startswith("file:"):
        return Target(Path(database), False, database)
    # sqlite:///file:PATH?mode=ro&uri=true: the file is PATH, not a folder named "file:".
    parts = urlsplit(database)
    if parts.netloc not in ("", "localhost"):
        raise PartbenchError(f"SQLite URI '{database}' names a host; only local files can be opened")
    params = {**dict(parse_qsl(parts.query)), **{k: str(v) for k, v in query.items()}}
    path = unquote(parts.path)
    if params.get("mode") == "memory" or path in ("", ":memory:"):
        return Target(None, False, "an in-memory SQLite database")
    read_only = params.get("mode") == "ro" or params.get("immutable", "").lower() in ("1", "true", "yes")
    return Target(Path(path), read_only, path)


def _check_sqlite_file(target: Target) -> None:
    """Refuse, before SQLite touches it, a path that is not a SQLite file."""
    path = target.path
    assert path is not None
    if "\x00" in str(path):
        raise ValueError("the path holds a NUL character")
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


def _postgres_driver(url: URL) -> URL:
    """``postgresql://`` means SQLAlchemy's default driver, psycopg2; partbench installs psycopg
    (version 3), so a plain URL uses it unless psycopg2 is what is installed."""
    if url.drivername != "postgresql":
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        return url.set(drivername="postgresql+psycopg")
    return url


def _engine_arguments(url: URL, busy_timeout: float) -> tuple[URL, Target, dict[str, Any]]:
    """The URL to connect to, what it points at, and ``create_engine``'s keyword arguments."""
    backend = url.get_backend_name()
    kwargs: dict[str, Any] = {}
    if backend in ("sqlite", "postgresql", "mysql"):
        kwargs["json_serializer"] = strict_json
    if backend == "sqlite":
        target = _sqlite_target(url)
        if target.path is not None:
            _check_sqlite_file(target)
        kwargs["connect_args"] = {"timeout": busy_timeout}
    else:
        target = Target(None, False, url.render_as_string(hide_password=True))
    if backend == "postgresql":
        url = _postgres_driver(url)
        if url.get_driver_name() in ("psycopg", "psycopg2"):
            # Every timestamp comes back in UTC, whatever the server's zone; a claim waits
            # at most busy_timeout for a row another writer holds, then is retried.
            options = f"-c timezone=UTC -c lock_timeout={max(1, int(busy_timeout * 1000))}"
            given = url.query.get("options")
            if given:  # the URL's own options come last, so they win
                options += " " + (given[-1] if isinstance(given, tuple) else given)
            kwargs["connect_args"] = {"options": options}
        # A connection dropped by the server (restart, idle timeout) is replaced, not an error.
        kwargs["pool_pre_ping"] = True
    return url, target, kwargs


def _use_wal(dbapi_connection: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
    except Exception:
        pass  # a read-only file keeps its journal mode; reading works in either
    finally:
        cursor.close()


class _SqliteMode:
    """Whether the file is known to be partbench's: only then is it switched to WAL, a change
    written into the file that another application's database must never receive."""

    def __init__(self) -> None:
        self.wal = False


def _sqlite_events(engine: Engine, mode: _SqliteMode) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own BEGIN handling is off: the store says when and how a transaction begins.
        dbapi_connection.isolation_level = None
        if mode.wal:
            _use_wal(dbapi_connection)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        # A writer takes the write lock up front (waiting up to the busy timeout), so two
        # writers never deadlock upgrading read locks and a claim's check-then-insert is atomic.
        write = connection.get_execution_options().get("partbench_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _hide_password(url: str) -> str:
    """The URL as messages show it: the password of ``scheme://user:password@host`` hidden."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{head}://{user}{':***' if ':' in credentials else ''}@{host}"


def _reason(exc: BaseException) -> str:
    """What a database error is, in words: a lock, a disk that failed, a server that is not
    there; then the driver's own message."""
    orig = getattr(exc, "orig", None) or exc
    message = str(orig).strip()
    low = message.lower()
    if "disk i/o error" in low or "input/output error" in low:
        return f"a disk I/O error (the disk or file system under the database failed): {message}"
    if "database or disk is full" in low or "no space left" in low:
        return f"the disk is full: {message}"
    if any(
        w in low
        for w in (
            "connection refused",
            "could not connect",
            "connection failed",
            "server closed the connection",
            "terminating connection",
            "connection is closed",
            "the database system is shutting down",
            "no route to host",
        )
    ):
        return f"the database server cannot be reached (stopped, or the network is down): {message}"
    if _is_lock_error(exc):
        return f"the database is locked by another writer: {message}"
    return message


def _is_lock_error(exc: BaseException) -> bool:
    message = str(getattr(exc, "orig", exc)).lower()
    return any(word in message for word in ("locked", "busy", "lock timeout", "could not obtain lock"))


class Database:
    """One results database, opened and its schema made current: read and write transactions.

    ``busy_timeout``: seconds a SQLite statement waits for another writer's lock;
    ``retries``: further tries of a write that still found the database locked.
    """

    def __init__(self, url: str, *, busy_timeout: float = BUSY_TIMEOUT, retries: int = WRITE_RETRIES) -> None:
        self.url = url
        self.busy_timeout, self.retries = busy_timeout, retries
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError) as exc:
            # A port that is not a number is a ValueError from int() inside make_url.
            why = f"its port is not a number: {exc}" if "int()" in str(exc) else str(exc)
            raise PartbenchError(f"not a database URL: '{_hide_password(url)}' ({why})") from None
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        self.is_postgres = parsed.get_backend_name() == "postgresql"
        try:
            parsed, self.target, kwargs = _engine_arguments(parsed, busy_timeout)
        except ValueError as exc:  # a NUL in a path, a malformed query
            raise PartbenchError(f"not a usable database URL: '{_hide_password(url)}' ({exc})") from None
        try:
            self.engine: Engine = create_engine(parsed, **kwargs)
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            hint = ""
            if self.is_postgres:
                hint = "; PostgreSQL needs psycopg: pip install 'partbench[postgres]'"
            raise PartbenchError(f"cannot open the results database {self.where}: {exc}{hint}") from exc
        mode = _SqliteMode()
        if self.is_sqlite:
            _sqlite_events(self.engine, mode)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = self.engine.execution_options(partbench_write=True)
        self._write_session = sessionmaker(self._writer, expire_on_commit=False)
        try:
            prepare_schema(self.engine, self._writer, self.where, read_only=self.target.read_only)
            if self.is_sqlite and self.target.path is not None:
                mode.wal = True  # partbench's (or made so just now): every connection uses WAL
                raw = self.engine.raw_connection()
                try:
                    _use_wal(raw.driver_connection)
                finally:
                    raw.close()
        except DBAPIError as exc:
            raise PartbenchError(f"cannot open the results database {self.where}: {_reason(exc)}") from exc

    @property
    def where(self) -> str:
        return self.target.label

    def close(self) -> None:
        """Close the pooled connections (a server counts them); the store opens new ones if used again."""
        self.engine.dispose()

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
            raise PartbenchError(
                f"the results database {self.where} is not writable: {_reason(exc)}"
            ) from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A read transaction (on SQLite a deferred BEGIN: never waits for a writer in WAL mode)."""
        with self._session() as s, s.begin():
            yield s

    def write(self, op: Callable[[Session], _T], *, retries: int | None = None) -> _T:
        """``op`` in one write transaction, tried again while the database is locked."""
        tries = (self.retries if retries is None else retries) + 1
        for attempt in range(tries):
            try:
                with self._write_session() as s, s.begin():
                    return op(s)
            except OperationalError as exc:
                if attempt + 1 == tries:
                    message = f"cannot write to the results database {self.where}: {_reason(exc)}"
                    raise Unwritable(message) from exc
                time.sleep(min(0.2 * 2**attempt, 5.0))
        raise AssertionError("unreachable")
