"""Who holds a configuration: the atomic claim behind ``claim`` and ``adopt``.

Of several processes claiming a configuration at once exactly one gets a run id. On SQLite the
write transaction is serialized as a whole; on PostgreSQL (read committed) the claim row is
locked first and the runs of the configuration are read in one statement, and a new claim row
is settled by its primary key.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from partbench.store.liveness import HOST, is_abandoned
from partbench.store.models import Metric, Run, RunClaim, RunItems
from partbench.store.values import aware, now


class LostRace(Exception):
    """Another process claimed the configuration in the same instant."""


def _locked_holder(s: Session, config_hash: str) -> int | None:
    """The run holding a configuration's claim, its row locked first of all. On a server with
    row locks (PostgreSQL, read committed) every read after the lock sees what the previous
    holder committed, so two claimers cannot both see "nobody runs it" and both swap the claim.
    A claim row that does not exist yet is settled by its primary key instead. On SQLite
    (no FOR UPDATE) BEGIN IMMEDIATE already serializes the whole transaction."""
    return s.scalar(select(RunClaim.run_id).where(RunClaim.config_hash == config_hash).with_for_update())


def _take_claim(s: Session, config_hash: str, run_id: int, holder: int | None, at: dt.datetime) -> None:
    """Make ``run_id`` the configuration's holder, or raise LostRace when another process
    took it in the same instant."""
    if holder is None:
        try:
            with s.begin_nested():
                s.add(RunClaim(config_hash=config_hash, run_id=run_id, claimed_at=at))
        except IntegrityError:
            raise LostRace from None
    else:  # compare and swap: only the process that still sees the old holder wins
        swapped = s.execute(
            update(RunClaim)
            .where(RunClaim.config_hash == config_hash, RunClaim.run_id == holder)
            .values(run_id=run_id, claimed_at=at)
        )
        if swapped.rowcount != 1:
            raise LostRace


def claim_run(
    s: Session, config_hash: str, fields: dict[str, Any], force: bool, timeout: float
) -> int | None:
    """In ``s``, a new 'running' run holding the configuration, its id; None when a done run
    (unless ``force``) or a live running run holds it. Abandoned runs of it become interrupted."""
    at = now()
    holder = _locked_holder(s, config_hash)
    # Done and running rows in one statement, so one snapshot: asked apart, a run that
    # finishes between the two questions would be seen neither done nor running.
    rows = list(
        s.scalars(select(Run).where(Run.config_hash == config_hash, Run.status.in_(("done", "running"))))
    )
    if not force and any(r.status == "done" for r in rows):
        return None
    running = [r for r in rows if r.status == "running"]
    if any(not is_abandoned(r, timeout, at) for r in running):
        return None
    run = Run(
        status="running",
        config_hash=config_hash,
        host=HOST,
        pid=os.getpid(),
        heartbeat_at=at,
        started_at=at,
        **fields,
    )
    s.add(run)
    s.flush()
    _take_claim(s, config_hash, run.id, holder, at)
    for old in running:
        old.status, old.finished_at = "interrupted", at
        old.error = f"abandoned (no live process: {old.host}, pid {old.pid}); run {run.id} took over"
    return run.id


def adopt_run(
    s: Session,
    fields: dict[str, Any],
    metrics: Sequence[tuple[str, float, float | None, float | None]],
    blob: bytes | None,
    summary: dict | None,
    timeout: float,
) -> tuple[str, int | None]:
    """In ``s``, a settled run from another store, as ``Store.adopt`` describes."""
    status, config_hash = fields["status"], fields.get("config_hash")
    at = now()
    holder = _locked_holder(s, config_hash) if status == "done" else None
    here = list(s.scalars(select(Run).where(Run.config_hash == config_hash)))  # one snapshot
    if any(r.status == "done" for r in here):
        return "done-here", None
    if any(
        r.status == status
        and aware(r.started_at) == fields["started_at"]
        and (r.host, r.pid) == (fields.get("host"), fields.get("pid"))
        for r in here
    ):
        return "present", None
    if status == "done" and any(r.status == "running" and not is_abandoned(r, timeout, at) for r in here):
        return "running-here", None
    run = Run(**fields)
    s.add(run)
    s.flush()
    if status == "done":
        _take_claim(s, config_hash, run.id, holder, at)
    for name, value, low, high in metrics:
        s.add(Metric(run_id=run.id, name=name, value=value, ci_low=low, ci_high=high))
    if blob is not None:
        s.add(RunItems(run_id=run.id, summary=summary or {}, nbytes=len(blob), data=blob))
    return "imported", run.id
