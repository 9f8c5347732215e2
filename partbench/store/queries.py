"""Reading stored runs: for ``partbench runs``, the leaderboard, comparisons and export."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from sqlalchemy import select

from partbench.errors import PartbenchError
from partbench.store.engine import Database
from partbench.store.liveness import is_abandoned
from partbench.store.models import LISTED_STATUSES, Run, RunItems
from partbench.store.values import aware, decode_items, now


class RunQueries(Database):
    """Runs as stored, each judged abandoned or not with ``heartbeat_timeout``."""

    heartbeat_timeout: float

    def _mark(self, runs: Iterable[Run]) -> None:
        at = now()
        for run in runs:
            run.__dict__["_pb_abandoned"] = is_abandoned(run, self.heartbeat_timeout, at)

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
            "heartbeat_at": aware(run.heartbeat_at),
            "started_at": aware(run.started_at),
            "finished_at": aware(run.finished_at),
            "error": run.error,
            "traceback": run.traceback,
        }
