"""Layer curves: each encoder's score on one (task, dataset) against relative depth, from the
runs a ``-o stage=all`` (or a list of stages) stored, one run per stage.

Relative depth is (stage index + 1) / the number of stages the encoder declares, so the last
declared stage is at 1.0 whatever the encoder's depth, and encoders of different depths share
one axis. A (task, dataset) has a curve only where some encoder has runs at several stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Point:
    stage: int
    depth: float  # (stage + 1) / stages
    value: float
    ci: tuple[float | None, float | None] = (None, None)


@dataclass
class Curve:
    task: str
    dataset: str
    metric: str
    lines: dict[str, list[Point]] = field(default_factory=dict)  # encoder -> points by depth

    @property
    def depths(self) -> list[float]:
        return sorted({p.depth for points in self.lines.values() for p in points})


def _stage_of(run: Any) -> tuple[int, int] | None:
    """(stage, declared stages) of a run that read one declared stage; None otherwise."""
    config = run.config or {}
    stage = ((config.get("task") or {}).get("options") or {}).get("stage")
    stages = (config.get("encoder") or {}).get("stages") or []
    if isinstance(stage, bool) or not isinstance(stage, int) or stage < 0 or stage >= len(stages):
        return None
    return stage, len(stages)


def layer_curves(runs: Sequence[Any], pairs: Sequence[tuple[str, str]] | None = None) -> list[Curve]:
    """The curves the finished runs draw, over ``pairs`` of (task, dataset) when given; of
    several runs at one stage, the latest counts."""
    latest: dict[tuple[str, str, str, int], Any] = {}
    for run in runs:
        if run.status != "done" or run.headline is None or (pairs and (run.task, run.dataset) not in pairs):
            continue
        where = _stage_of(run)
        if where is None:
            continue
        key = (run.task, run.dataset, run.encoder, where[0])
        if key not in latest or run.id > latest[key].id:
            latest[key] = run
    curves: dict[tuple[str, str], Curve] = {}
    for (task, dataset, encoder, _), run in sorted(latest.items(), key=lambda kv: kv[0]):
        stage, stages = _stage_of(run)  # type: ignore[misc]
        curve = curves.setdefault((task, dataset), Curve(task, dataset, run.headline_metric))
        head = run.headline
        point = Point(stage, (stage + 1) / stages, float(head.value), (head.ci_low, head.ci_high))
        curve.lines.setdefault(encoder, []).append(point)
    return [c for c in curves.values() if any(len({p.stage for p in pts}) > 1 for pts in c.lines.values())]
