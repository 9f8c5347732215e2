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

import datetime as dt
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from partbench.errors import PartbenchError
from partbench.store.claims import LostRace, adopt_run, claim_run
from partbench.store.engine import Database, Unwritable
from partbench.store.liveness import HEARTBEAT_INTERVAL, HOST, is_abandoned
from partbench.store.models import SETTLED_BY_FAIL, Metric, Run, RunClaim, RunItems
from partbench.store.pending import PendingResult, PendingResults
from partbench.store.values import aware, clean_json, encode_items, finite, now, text


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
) -> dict[str, Any]:
    rows = []
    for name, m in metrics.items():
        if not isinstance(name, str) or not 0 < len(name) <= 60:
            raise PartbenchError(f"run {run_id}: metric name {name!r} is not 1 to 60 characters long")
        where = f"metric '{name}' of run {run_id}"
        rows.append(
            [
                name,
                finite(getattr(m, "value", m), where),
                finite(getattr(m, "ci_low", None), f"the lower bound of {where}", optional=True),
                finite(getattr(m, "ci_high", None), f"the upper bound of {where}", optional=True),
            ]
        )
    if n_items is not None and (isinstance(n_items, bool) or not isinstance(n_items, (int, np.integer))):
        raise PartbenchError(f"run {run_id}: n_items is {n_items!r}, not a whole number")
    return {
        "metrics": rows,
        "n_items": None if n_items is None else int(n_items),
        "items_per_class": clean_json(items_per_class, f"items per class of run {run_id}"),
        "timing": clean_json(timing, f"timing of run {run_id}"),
        "details": clean_json(details, f"details of run {run_id}"),
        "chance": None
        if chance is None
        else {str(k): finite(v, f"chance level of '{k}' of run {run_id}") for k, v in chance.items()},
        "finished_at": now().isoformat(),
    }


def _apply_finish(
    s: Session, run_id: int, record: Mapping[str, Any], blob: bytes | None, summary: dict | None
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
        fields = clean_fields(dict(fields))
        status = fields.get("status")
        if status not in ("done", *SETTLED_BY_FAIL):
            raise PartbenchError(
                f"only settled runs are imported (done, failed, interrupted), not '{status}'"
            )
        rows = [
            (
                name,
                finite(value, f"metric '{name}'"),
                finite(low, f"the lower bound of metric '{name}'", optional=True),
                finite(high, f"the upper bound of metric '{name}'", optional=True),
            )
            for name, value, low, high in metrics
        ]
        for key in ("started_at", "finished_at", "heartbeat_at"):
            fields[key] = aware(fields.get(key))
        for _ in range(2):
            try:
                return self.write(lambda s: adopt_run(s, fields, rows, blob, summary, self.heartbeat_timeout))
            except LostRace:
                continue  # another writer took the configuration this instant: look again
        return "running-here", None

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
        record = _finish_record(run_id, metrics, n_items, items_per_class, timing, details, chance)
        blob, summary = encode_items(items, f"per-item results of run {run_id}") if items else (None, None)
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
        record = {
            "status": status,
            "error": text(error),
            "traceback": text(traceback),
            "finished_at": now().isoformat(),
        }
        try:
            self.write(lambda s: _apply_fail(s, run_id, record))
        except Unwritable as exc:
            return self.pending.keep("fail", run_id, record, None, None, exc)
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
        that still cannot be written (the files stay for next time)."""
        if self.target.read_only:
            return 0
        stored = 0
        for pending in self.pending.waiting():
            try:
                self.write(partial(_apply, pending=pending), retries=0)
            except Unwritable:
                break
            except _NotRunning as exc:
                if pending.op == "finish" and exc.status != "done":
                    self.pending.set_aside(pending.path, exc)
                    continue
                # Already stored (a flush that crashed before removing its file), or a failure
                # of a run that was settled another way: nothing left to do.
            except PartbenchError as exc:
                self.pending.set_aside(pending.path, exc)
                continue
            else:
                stored += 1
            pending.path.unlink(missing_ok=True)
        return stored
