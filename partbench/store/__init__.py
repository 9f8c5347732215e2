"""The results store: every run with its provenance, in SQLite or PostgreSQL.

Its rooms:

- ``models``: the tables (SQLAlchemy 2 models) and the schema version they make;
- ``values``: what may go in (finite numbers, JSON, per-item arrays as an npz) and times in UTC;
- ``liveness``: whether a running run still has someone running it (heartbeat, process);
- ``engine``: URLs, engines, SQLite pragmas, read and write transactions with retries;
- ``schema``: what an opened database holds, and the migrations run on open;
- ``lifecycle``: claim, heartbeat, finish or fail, prune; adopting runs from another store;
- ``claims``: the atomic claim of a configuration behind claiming and adopting;
- ``pending``: results that could not be written, kept in files until they can;
- ``validate``: the one check of every result stored, wherever it comes from;
- ``queries``: reading runs back.

``Store`` is all of it at one URL.
"""

from __future__ import annotations

from pathlib import Path

from partbench.paths import home
from partbench.store.engine import BUSY_TIMEOUT, WRITE_RETRIES
from partbench.store.lifecycle import AdoptedRun, RunLifecycle
from partbench.store.liveness import HEARTBEAT_TIMEOUT
from partbench.store.models import (
    HEAD_REVISION,
    REVISIONS,
    SCHEMA_VERSION,
    VERSION_TABLE,
    Base,
    Meta,
    Metric,
    Run,
    RunClaim,
    RunItems,
)
from partbench.store.pending import PendingResults, pending_key
from partbench.store.queries import RunQueries
from partbench.store.values import decode_items

__all__ = [
    "HEAD_REVISION",
    "REVISIONS",
    "SCHEMA_VERSION",
    "VERSION_TABLE",
    "AdoptedRun",
    "Base",
    "Meta",
    "Metric",
    "Run",
    "RunClaim",
    "RunItems",
    "Store",
    "decode_items",
]


class Store(RunLifecycle, RunQueries):
    """A results database at any SQLAlchemy URL (SQLite by default).

    ``busy_timeout``: seconds a SQLite statement waits for another writer's lock;
    ``retries``: further tries of a write that still found the database locked;
    ``heartbeat_timeout``: seconds without a heartbeat after which a running run is abandoned;
    ``pending_dir``: where unwritable results wait (default ``PARTBENCH_HOME/pending``); those
    an earlier process left for this database are stored on opening it.
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
        super().__init__(url, busy_timeout=busy_timeout, retries=retries)
        self.heartbeat_timeout = heartbeat_timeout
        folder = home() / "pending" if pending_dir is None else Path(pending_dir)
        self.pending = PendingResults(folder, pending_key(self.target, url), self.where)
        self.flush_pending()

    @property
    def problems(self) -> list[str]:
        """Pending results that could not be stored, for the CLI to show."""
        return self.pending.problems
