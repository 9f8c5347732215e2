"""A run's life in the store: claimed, kept alive, settled; and settled runs adopted from elsewhere.

A run is claimed ('running', with the host, process and a heartbeat of who runs it), then
settled as 'done' (metrics, per-item results, chance levels), 'failed' or 'interrupted' (error
and traceback). A 'running' row whose heartbeat is stale, or whose process is gone from this
host, is *abandoned*: shown so, never blocking a new claim, removed by ``prune``.

- Claiming a configuration is atomic (``partbench.store.claims``).
- A result that cannot be written waits in a pending file (``partbench.store.pending``), stored
  by the next store opened on the database.
- Nothing that is not a finite number reaches a metric or a JSON column.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError, StatementError
from sqlalchemy.orm import Session

from partbench.errors import PartbenchError
from partbench.store.claims import LostRace, adopt_run, claim_run
from partbench.store.engine import Database, Unwritable
from partbench.store.liveness import HEARTBEAT_INTERVAL, HOST, is_abandoned
from partbench.store.models import SETTLED_BY_FAIL, Metric, Run, RunClaim, RunItems
from partbench.store.pending import PendingResult, PendingResults
from partbench.store.validate import CLOCK_SKEW, ResultError, check_headline, check_result
from partbench.store.values import aware, clean_json, decode_items, encode_items, finite, now, text


class _Refused(PartbenchError):
    """A result the validator refused once its run's row was read."""

    def __init__(self, run_id: int, message: str):
        super().__init__(message)
        self.run_id = run_id


class _NotRunning(PartbenchError):
    def __init__(self, run_id: int, status: str):
        super().__init__(f"run {run_id} is already {status}; it is not settled again")
        self.status = status


def clean_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A run's columns as the store keeps them: JSON that is JSON, text within its column's length."""
    for key in ("config", "versions"):
        if key in fields:
            fields[key] = clean_json(fields[key], f"the run's {key}")
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
            fields[key] = text(value)
    return fields


def _finish_record(
    run_id: int,
    metrics: Mapping[str, Any],
    n_items: int | None,
    items_per_class: Mapping[str, int] | None,
    timing: Mapping[str, Any] | None,
    details: Mapping[str, Any] | None,
    chance: Mapping[str, float] | None,
    items: Mapping[str, np.ndarray] | None,
    headline: str | None,
) -> dict[str, Any]:
    where = f"the result of run {run_id}"
    try:
        rows = check_result(
            metrics, headline=headline, n_items=n_items, chance=chance, items=items, details=details
        )
    except ResultError as exc:
        raise PartbenchError(f"{where}: {exc}") from None
    return {
        "metrics": [list(row) for row in rows],
        "n_items": None if n_items is None else int(n_items),
        "items_per_class": clean_json(items_per_class, f"items per class of run {run_id}"),
        "timing": clean_json(timing, f"timing of run {run_id}"),
        "details": clean_json(details, f"details of run {run_id}"),
        "chance": None if chance is None else {str(k): float(v) for k, v in chance.items()},
        "finished_at": now().isoformat(),
    }


def check_pending_finish(pending: PendingResult, headline: str | None) -> None:
    """A pending finish record checked as a fresh result is: it was written to a file, which
    anyone may have edited since."""
    record = pending.record
    try:
        if not isinstance(record, Mapping):
            raise ResultError("record", f"expected an object, got {type(record).__name__}")
        missing = [k for k in _FINISH_KEYS if k not in record]
        if missing:
            raise ResultError("record", f"lacks {', '.join(missing)}")
        items = decode_items(pending.blob) if pending.blob is not None else None
        check_result(
            record["metrics"],
            headline=headline,
            n_items=record["n_items"],
            chance=record["chance"],
            items=items,
            details=record["details"] if isinstance(record["details"], Mapping) else None,
        )
        for key in ("items_per_class", "timing", "details"):
            clean_json(record[key], f"record.{key}")
        finished = dt.datetime.fromisoformat(str(record["finished_at"]))
        if finished.tzinfo is None or finished > now() + dt.timedelta(seconds=CLOCK_SKEW):
            raise ResultError(
                "record.finished_at", f"{record['finished_at']!r} is not a time in UTC up to now"
            )
    except ValueError as exc:  # a time, or an npz, that cannot be read
        raise PartbenchError(f"the pending result {pending.path}: {exc}") from None
    except PartbenchError as exc:
        raise PartbenchError(f"the pending result {pending.path}: {exc}") from None


_FINISH_KEYS = ("metrics", "n_items", "items_per_class", "timing", "details", "chance", "finished_at")


def _apply_finish(
    s: Session, run_id: int, record: Mapping[str, Any], blob: bytes | None, summary: dict | None
) -> None:
    finished = dt.datetime.fromisoformat(record["finished_at"])
    headline = s.scalar(select(Run.headline_metric).where(Run.id == run_id))
    if headline is not None:
        try:
            check_headline([tuple(row) for row in record["metrics"]], headline)  # type: ignore[misc]
        except ResultError as exc:
            raise _Refused(run_id, f"the result of run {run_id}: {exc}") from None
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


def _apply_fail(s: Session, run_id: int, record: Mapping[str, Any]) -> None:
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


@dataclass(frozen=True)
class AdoptedRun:
    """A settled run from another store: its columns, metric rows and per-item npz."""

    fields: Mapping[str, Any]
    metrics: Sequence[tuple[str, float, float | None, float | None]]
    blob: bytes | None = None
    summary: dict | None = None


def _adoptable(
    record: AdoptedRun,
) -> tuple[dict[str, Any], list[tuple[str, float, float | None, float | None]]]:
    fields = clean_fields(dict(record.fields))
    status = fields.get("status")
    if status not in ("done", *SETTLED_BY_FAIL):
        raise PartbenchError(f"only settled runs are imported (done, failed, interrupted), not '{status}'")
    rows = [
        (
            name,
            finite(value, f"metric '{name}'"),
            finite(low, f"the lower bound of metric '{name}'", optional=True),
            finite(high, f"the upper bound of metric '{name}'", optional=True),
        )
        for name, value, low, high in record.metrics
    ]
    for key in ("started_at", "finished_at", "heartbeat_at"):
        fields[key] = aware(fields.get(key))
    return fields, rows  # type: ignore[return-value]


def _fail_record(status: str, error: str | None, trace: str | None) -> dict[str, Any]:
    return {
        "status": status,
        "error": text(error),
        "traceback": text(trace),
        "finished_at": now().isoformat(),
    }


def _check_pending_fail(pending: PendingResult) -> None:
    record = pending.record
    ok = (
        isinstance(record, Mapping)
        and record.get("status") in SETTLED_BY_FAIL
        and all(isinstance(record.get(k), (str, type(None))) for k in ("error", "traceback"))
        and isinstance(record.get("finished_at"), str)
    )
    if ok:
        try:
            dt.datetime.fromisoformat(record["finished_at"])
        except ValueError:
            ok = False
    if not ok:
        raise PartbenchError(
            f"the pending result {pending.path}: its record is not a failure "
            "(status, error, traceback, finished_at)"
        )


def _apply(s: Session, pending: PendingResult) -> None:
    if pending.op == "finish":
        _apply_finish(s, pending.run_id, pending.record, pending.blob, pending.summary)
    else:
        _apply_fail(s, pending.run_id, pending.record)


class RunLifecycle(Database):
    """Claiming, keeping alive and settling runs. ``heartbeat_timeout``: seconds without a
    heartbeat after which a running run is abandoned; ``pending``: where unwritable results wait."""

    heartbeat_timeout: float
    pending: PendingResults

    def claim(self, config_hash: str, *, force: bool = False, **fields: Any) -> int | None:
        """Atomically start a 'running' run of this configuration and return its id; None when
        a done run (unless ``force``) or a live running run of it exists, or another process
        claimed it in the same instant. An abandoned run does not block: it is marked
        interrupted, naming the run that took over."""
        fields = clean_fields(dict(fields))
        try:
            return self.write(lambda s: claim_run(s, config_hash, fields, force, self.heartbeat_timeout))
        except LostRace:
            return None
        except Unwritable as exc:
            raise PartbenchError(f"{exc}; nothing was started") from exc

    def adopt_all(self, records: Callable[[], Iterable[AdoptedRun]]) -> list[tuple[str, int | None]]:
        """Insert settled runs that were written elsewhere (``partbench db import``), with their
        metrics and per-item npz as they were, in ONE write transaction: all of them or, when
        any is refused, none. ``records`` gives them (checked by ``partbench.store.validate``
        first: ``partbench.exchange.read_runs`` does); it is called again when the database was
        locked and the transaction is tried again, so a file is read again, not held in memory.
        Each ``fields`` holds the run's columns, ``config_hash`` and ``status`` (done, failed
        or interrupted) included. Returns, per run, what happened and the new id:

        - ``("imported", id)``;
        - ``("done-here", None)``: a done run of this configuration is already here;
        - ``("running-here", None)``: a live run here holds this configuration (it will store it);
        - ``("present", None)``: this very run (configuration, status, start, host and pid) is here.

        A done run takes the configuration's claim exactly as ``claim`` does, so an import and
        a run of the same configuration racing each other store it once."""

        def op(s: Session) -> list[tuple[str, int | None]]:
            outcomes: list[tuple[str, int | None]] = []
            for record in records():
                fields, rows = _adoptable(record)
                for _ in range(2):
                    try:
                        with s.begin_nested():  # a lost race undoes this run only
                            outcomes.append(
                                adopt_run(
                                    s, fields, rows, record.blob, record.summary, self.heartbeat_timeout
                                )
                            )
                        break
                    except LostRace:
                        continue  # another writer took the configuration this instant: look again
                else:
                    outcomes.append(("running-here", None))
            return outcomes

        return self.write(op)

    def start(self, **fields: Any) -> int:
        """A 'running' run without claiming its configuration (prefer ``claim``)."""
        fields = clean_fields(dict(fields))

        def op(s: Session) -> int:
            at = now()
            run = Run(status="running", host=HOST, pid=os.getpid(), heartbeat_at=at, started_at=at, **fields)
            s.add(run)
            s.flush()
            return run.id

        return self.write(op)

    def heartbeat(self, run_ids: Sequence[int]) -> bool:
        """Tell other processes these runs are alive. One try: a missed beat is harmless as long
        as the next arrives within the heartbeat timeout. False when it could not be written."""
        ids = list(run_ids)
        if not ids:
            return True

        def op(s: Session) -> None:
            s.execute(update(Run).where(Run.id.in_(ids), Run.status == "running").values(heartbeat_at=now()))

        try:
            self.write(op, retries=0)
        except Unwritable:
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
        blob, summary = encode_items(items, f"per-item results of run {run_id}") if items else (None, None)
        headline = self._headline(run_id)
        record = _finish_record(
            run_id, metrics, n_items, items_per_class, timing, details, chance, items, headline
        )
        try:
            self.write(lambda s: _apply_finish(s, run_id, record, blob, summary))
        except Unwritable as exc:
            return self.pending.keep("finish", run_id, record, blob, summary, exc)
        return None

    def fail(
        self, run_id: int, error: str, *, traceback: str | None = None, status: str = "failed"
    ) -> Path | None:
        """Mark a running run failed or interrupted with its error and traceback. A run already
        settled keeps its state: an interrupt arriving just after ``finish`` must not hide a
        stored result. Returns as ``finish`` does."""
        if status not in SETTLED_BY_FAIL:
            raise PartbenchError(f"a run fails as one of {', '.join(SETTLED_BY_FAIL)}, not '{status}'")
        record = _fail_record(status, error, traceback)
        try:
            self.write(lambda s: _apply_fail(s, run_id, record))
        except Unwritable as exc:
            return self.pending.keep("fail", run_id, record, None, None, exc)
        return None

    def _headline(self, run_id: int) -> str | None:
        """The run's headline metric, which its result is checked against; None when the row
        cannot be read now (the write that follows checks it again, in its transaction)."""
        try:
            with self.session() as s:
                return s.scalar(select(Run.headline_metric).where(Run.id == run_id))
        except (DBAPIError, StatementError):
            return None

    def prune(self) -> int:
        """Delete abandoned runs (with their metrics and items); the number deleted. A run whose
        result waits in a pending file is kept: it is not abandoned, only not yet written."""
        waiting = self.pending.run_ids()

        def op(s: Session) -> int:
            at = now()
            doomed = [
                r.id
                for r in s.scalars(select(Run).where(Run.status == "running"))
                if r.id not in waiting and is_abandoned(r, self.heartbeat_timeout, at)
            ]
            if doomed:
                s.execute(delete(Metric).where(Metric.run_id.in_(doomed)))
                s.execute(delete(RunItems).where(RunItems.run_id.in_(doomed)))
                s.execute(delete(RunClaim).where(RunClaim.run_id.in_(doomed)))
                s.execute(delete(Run).where(Run.id.in_(doomed)).execution_options(synchronize_session=False))
            return len(doomed)

        return self.write(op)

    def flush_pending(self) -> int:
        """Store the results that earlier processes kept in pending files for this database,
        oldest first, removing each file once stored; the number stored. Stops at the first
        that still cannot be written (the files stay for next time). A file that does not
        validate is set aside (named in ``problems``) and its run failed with the reason;
        the rest are stored."""
        if self.target.read_only:
            return 0
        stored = 0
        for pending in self.pending.waiting():
            try:
                if pending.op == "finish":
                    check_pending_finish(pending, self._headline(pending.run_id))
                else:
                    _check_pending_fail(pending)
                self.write(partial(_apply, pending=pending), retries=0)
            except Unwritable:
                break
            except _NotRunning as exc:
                if pending.op == "finish" and exc.status != "done":
                    self.pending.set_aside(pending.path, exc)
                    continue
                # Already stored (a flush that crashed before removing its file), or a failure
                # of a run that was settled another way: nothing left to do.
            except (PartbenchError, DBAPIError, StatementError) as exc:
                # Refused by the validator or the database: kept aside, and its run (still
                # running, its process gone) failed with the reason instead of waiting forever.
                why = exc if isinstance(exc, PartbenchError) else f"the database refused it: {exc.orig}"
                self.pending.set_aside(pending.path, why)
                if pending.op == "finish":
                    self._fail_quietly(pending.run_id, f"its result could not be stored: {why}")
                continue
            else:
                stored += 1
            pending.path.unlink(missing_ok=True)
        return stored

    def _fail_quietly(self, run_id: int, error: str) -> None:
        # When it cannot be written, the run is shown abandoned once its heartbeat is stale.
        with contextlib.suppress(Unwritable, PartbenchError):
            self.write(lambda s: _apply_fail(s, run_id, _fail_record("failed", error, None)), retries=0)
