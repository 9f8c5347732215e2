"""What a database holds before the store uses it, and the migrations run on open.

Not SQLite, another application's tables or a newer partbench's schema are refused with a
``PartbenchError`` naming the database; an older partbench's schema is upgraded by the Alembic
migrations in ``partbench/migrations``, under an advisory lock on PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from partbench.errors import PartbenchError
from partbench.store.models import HEAD_REVISION, REVISIONS, SCHEMA_VERSION, VERSION_TABLE


@dataclass(frozen=True)
class _SchemaState:
    kind: str  # empty, current, upgradable, legacy, refused
    reason: str = ""


def _schema_state(conn: Connection, where: str) -> _SchemaState:
    tables = set(inspect(conn).get_table_names())
    if not tables:
        return _SchemaState("empty")
    if "partbench_meta" not in tables:
        listed = ", ".join(sorted(tables)[:6]) + (", ..." if len(tables) > 6 else "")
        return _SchemaState(
            "refused",
            f"{where} is another application's database (its tables: {listed}), "
            "not a partbench results store; point --db or PARTBENCH_DB at another file",
        )
    raw = conn.execute(text("SELECT value FROM partbench_meta WHERE key = 'schema_version'")).scalar()
    try:
        version = int(raw)
    except (TypeError, ValueError):
        return _SchemaState("refused", f"{where} has no readable partbench schema version ({raw!r})")
    newer = (
        f"{where} was written by a newer partbench (schema version {{}}; this partbench "
        f"knows up to {SCHEMA_VERSION}); upgrade partbench to use it"
    )
    if version > SCHEMA_VERSION:
        return _SchemaState("refused", newer.format(version))
    if VERSION_TABLE not in tables:
        if version == 1:  # partbench 0.1.0: schema 1, from before the migrations
            return _SchemaState("legacy")
        return _SchemaState("refused", f"{where} says schema version {version} but has no migration record")
    revision = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    if revision not in REVISIONS:
        return _SchemaState("refused", newer.format(revision))
    if revision == HEAD_REVISION and version == SCHEMA_VERSION:
        return _SchemaState("current")
    return _SchemaState("upgradable")


def prepare_schema(engine: Engine, writer: Engine, where: str, *, read_only: bool) -> None:
    """Make the database's schema current, or refuse it. ``writer`` is ``engine`` with write
    transactions (on SQLite ``BEGIN IMMEDIATE``), so one process migrates and the others wait."""
    with engine.connect() as conn:
        state = _schema_state(conn, where)
        conn.rollback()
    if state.kind == "current":  # the common case: no write, no Alembic import
        return
    if state.kind == "refused":
        raise PartbenchError(state.reason)
    if read_only:
        raise PartbenchError(
            f"{where} needs its schema created or upgraded to version {SCHEMA_VERSION}, "
            "but the URL opens it read-only; open it once without mode=ro"
        )
    from partbench.migrations import upgrade

    with writer.connect() as conn, conn.begin():
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242071)")  # one migrator at a time
        # Again under the write lock: another process may have migrated it meanwhile.
        state = _schema_state(conn, where)
        if state.kind == "refused":
            raise PartbenchError(state.reason)
        if state.kind != "current":
            try:
                upgrade(conn, stamp="0001" if state.kind == "legacy" else None)
            except DBAPIError as exc:
                raise PartbenchError(
                    f"cannot upgrade the results database {where} to schema version "
                    f"{SCHEMA_VERSION}: {exc.orig}"
                ) from exc
