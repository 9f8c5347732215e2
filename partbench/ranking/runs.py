"""Which runs count, and what a board needs to know of each: per-item results, provenance,
chance level, and whether two runs' items can be paired.

For each (dataset, encoder, task), one finished run counts: the latest of those with the task's
default options and no --limit, else the latest of the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from partbench.errors import PartbenchError
from partbench.ranking.model import Provenance

# run id -> per-item results ({} or None when the run has none): Store.items, or a Store.
ItemsSource = Callable[[int], "Mapping[str, np.ndarray] | None"]


def chance_of(run: Any) -> float | None:
    """The stored chance level of the run's headline metric (None for runs from before chance
    levels were stored)."""
    value = (getattr(run, "chance", None) or {}).get(run.headline_metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _interval_of(run: Any) -> str | None:
    said = (getattr(run, "details", None) or {}).get("interval")
    return said if isinstance(said, str) and said else None


def _preference(run: Any) -> tuple[bool, bool, int]:
    config = run.config or {}
    task = config.get("task", {}) or {}
    return (bool(task.get("default_options", True)), config.get("limit") is None, run.id)


def choose(runs: Sequence[Any], dataset: str | None = None) -> dict[tuple[str, str, str], Any]:
    """(dataset, encoder, task) -> the run that counts."""
    latest: dict[tuple[str, str, str], Any] = {}
    for run in runs:
        if run.status != "done" or (dataset and run.dataset != dataset) or run.headline is None:
            continue
        key = (run.dataset, run.encoder, run.task)
        if key not in latest or _preference(run) > _preference(latest[key]):
            latest[key] = run
    return latest


class ItemCache:
    """Per-item results of runs, loaded once each.

    The source is a callable (run id -> arrays, ``Store.items``) or a store itself, whose
    ``items_many`` then reads every run a board needs in one query.
    """

    def __init__(self, source: Any):
        self.source = source
        self.cache: dict[int, Mapping[str, Any] | None] = {}

    def prefetch(self, run_ids: Sequence[int]) -> None:
        many = getattr(self.source, "items_many", None)
        wanted = [i for i in run_ids if i not in self.cache]
        if many is None or not wanted:
            return
        got = many(wanted)
        for i in wanted:
            self.cache[i] = got.get(i) or None

    def __call__(self, run: Any) -> Mapping[str, Any] | None:
        if self.source is None:
            return None
        if run.id not in self.cache:
            fetch = self.source if callable(self.source) else self.source.items
            try:
                got = fetch(run.id)
            except (PartbenchError, LookupError):  # a run the source does not know
                got = None
            self.cache[run.id] = got if got else None  # {}: stored before items were kept
        return self.cache[run.id]


def pairable(ra: Any, rb: Any, ia: Mapping[str, Any] | None, ib: Mapping[str, Any] | None) -> str:
    """Why two runs' items cannot be paired index by index ("" when they can)."""
    if ia is None or ib is None:
        return "no per-item results stored"
    if ra.dataset_fingerprint != rb.dataset_fingerprint:
        return "different dataset fingerprints"
    ca, cb = ra.config or {}, rb.config or {}
    if ca.get("limit") != cb.get("limit"):
        return "different --limit"
    if (ca.get("task") or {}).get("options") != (cb.get("task") or {}).get("options"):
        return "different task options"
    if set(ia) != set(ib) or any(np.shape(ia[k]) != np.shape(ib[k]) for k in ia):
        return "different items"
    if "label" in ia and not np.array_equal(ia["label"], ib["label"]):
        return "different item labels"
    return ""


def provenance(run: Any, per_item: bool) -> Provenance:
    finished = getattr(run, "finished_at", None)
    return Provenance(
        run_id=run.id,
        weights_id=run.weights_id,
        device=run.device,
        versions=dict(run.versions or {}),
        finished_at=finished.isoformat(timespec="seconds") if finished is not None else None,
        config_hash=run.config_hash,
        config=dict(run.config or {}),
        n_items=run.n_items,
        per_item=per_item,
        chance=chance_of(run),
        interval=_interval_of(run),
    )


def task_info(registry: Any, runs: Mapping[tuple[str, str, str], Any]) -> dict[str, tuple[str, str]]:
    """task -> (level, headline metric): the registry's, else what the runs stored."""
    info = {run.task: (run.level, run.headline_metric) for run in runs.values()}
    if registry is not None:
        info.update({name: (t.level, t.metric) for name, t in registry.tasks.items()})
    return info
