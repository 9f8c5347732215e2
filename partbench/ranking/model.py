"""The ranked board as data: what ranking produces and every output format reads.

A board is one dataset's runs (columns: the tasks run on it) or one suite's (columns: exactly
its (task, dataset) pairs). Each row is an encoder with its per-column scores, its level scores
(``object``, ``part`` and ``all``, the mean of the board's levels) with their intervals and
chance levels, and its standing at each level: a rank shared by a tie group, whether it has
every column, whether its comparisons were paired. Nothing here knows how a board is shown.

Chance. A score is at chance when its 95% interval contains or falls below its own chance
level, or, with no interval, when the value does not exceed it (``at_chance``). Runs stored
before chance was recorded have none and are never at chance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from partbench.ranking.curves import Curve

LEVELS = ("object", "part")
N_RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Column:
    """One scored column of a board: a task on a dataset."""

    key: str  # the task's name on a dataset board, "task@dataset" on a suite board
    task: str
    dataset: str
    level: str
    metric: str


@dataclass
class Provenance:
    """Where one score came from."""

    run_id: int
    weights_id: str
    device: str
    versions: dict[str, Any]
    finished_at: str | None
    config_hash: str
    config: dict[str, Any]
    n_items: int | None
    per_item: bool  # per-item results are stored: the score can be resampled and paired
    chance: float | None = None  # the headline metric's chance level; None: not stored
    interval: str | None = None  # what the run's interval resamples, in the task's words


@dataclass
class Score:
    value: float
    low: float | None
    high: float | None
    paired: bool = False  # the interval comes from resampling items (else: stored bounds)
    chance: float | None = None  # the chance level on the same items and tasks; None: unknown

    @property
    def at_chance(self) -> bool:
        return at_chance(self.value, self.ci, self.chance)

    def overlaps(self, other: Score) -> bool:
        if None in (self.low, self.high, other.low, other.high):
            return False
        return self.low <= other.high and other.low <= self.high  # type: ignore[operator]

    @property
    def ci(self) -> list[float | None]:
        return [self.low, self.high]


@dataclass
class Standing:
    """An encoder's place at one level of a board."""

    rank: int | None = None  # shared by a tie group (competition ranking: 1, 2, 2, 4)
    tied_with: list[str] = field(default_factory=list)  # the other members of its tie group
    complete: bool = True  # has every column of the level
    paired: bool = True  # its interval and its comparisons came from per-item results


@dataclass
class Comparison:
    """Encoder a minus encoder b, on one column or averaged over a level's columns."""

    a: str
    b: str
    level: str
    columns: list[str]  # column keys the difference averages over
    metric: str  # the column's metric; "score" for a level
    a_value: float
    b_value: float
    diff: float
    low: float | None  # interval of the difference: paired bootstrap
    high: float | None
    paired: bool
    overlap: bool | None = None  # unpaired: whether the two stored intervals overlap
    n_items: int | None = None
    reason: str = ""  # why a comparison is not paired
    dataset: str = ""

    @property
    def tie(self) -> bool:
        """No evidence of a difference: 0 is inside the paired interval (or, unpaired, the
        two marginal intervals overlap)."""
        if self.paired and self.low is not None and self.high is not None:
            return self.low <= 0 <= self.high
        return bool(self.overlap)

    @property
    def verdict(self) -> str:
        if self.tie:
            return "no clear difference" if self.paired else "intervals overlap"
        better = self.a if self.diff > 0 else self.b
        return f"{better} higher" if self.paired else f"{better} higher (intervals apart)"


@dataclass
class Row:
    encoder: str
    family: str
    board: str
    tasks: dict[str, float] = field(default_factory=dict)  # column key -> headline metric
    task_ci: dict[str, list[float | None]] = field(default_factory=dict)
    task_chance: dict[str, float | None] = field(default_factory=dict)  # None: not stored
    runs: dict[str, Provenance] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # column keys without a result
    scores: dict[str, Score] = field(default_factory=dict)  # "object", "part", "all"
    standings: dict[str, Standing] = field(default_factory=dict)
    object_rank: int | None = None
    part_rank: int | None = None
    part_awareness: int | None = None  # object rank minus part rank: > 0 ranks higher on parts
    rank: int | None = None  # at the board's level

    def score(self, level: str) -> Score | None:
        return self.scores.get(level)

    @property
    def object_score(self) -> float | None:
        s = self.scores.get("object")
        return None if s is None else s.value

    @property
    def part_score(self) -> float | None:
        s = self.scores.get("part")
        return None if s is None else s.value

    @property
    def object_ci(self) -> list[float | None] | None:
        s = self.scores.get("object")
        return None if s is None else s.ci

    @property
    def part_ci(self) -> list[float | None] | None:
        s = self.scores.get("part")
        return None if s is None else s.ci

    def task_at_chance(self, key: str) -> bool:
        return at_chance(self.tasks.get(key), self.task_ci.get(key), self.task_chance.get(key))

    def tied(self, level: str) -> bool:
        st = self.standings.get(level)
        return bool(st and st.tied_with)


@dataclass
class Board:
    name: str  # the dataset, or the suite
    level: str  # what `rank` ranks: "object", "part" or "all" (the mean of the board's levels)
    columns: list[Column]  # every column of the board (a suite's: all its pairs)
    levels: tuple[str, ...]  # the levels the board has columns at
    rows: list[Row]  # in rank order at `level`; unranked rows last
    kind: str = "dataset"  # or "suite"
    version: str | None = None  # the suite's version
    description: str = ""
    comparisons: list[Comparison] = field(default_factory=list)  # neighbours at `level`
    n_resamples: int = N_RESAMPLES
    left_out: list[str] = field(default_factory=list)  # encoders with no score at `level`
    curves: list[Curve] = field(default_factory=list)  # layer curves of the board's tasks

    @property
    def dataset(self) -> str:
        return self.name

    @property
    def shown_levels(self) -> tuple[str, ...]:
        return self.levels if self.level == "all" else tuple(lv for lv in self.levels if lv == self.level)

    def columns_at(self, level: str) -> list[Column]:
        return [c for c in self.columns if level == "all" or c.level == level]

    @property
    def shown_columns(self) -> list[Column]:
        return [c for c in self.columns if c.level in self.shown_levels]

    @property
    def tasks(self) -> dict[str, list[str]]:
        """Level -> column keys, for the levels shown."""
        return {lv: [c.key for c in self.columns if c.level == lv] for lv in self.shown_levels}

    @property
    def metrics(self) -> dict[str, str]:
        return {c.key: c.metric for c in self.columns}

    def column_chance(self, key: str) -> tuple[float, float] | None:
        """The lowest and highest chance level of a column's runs; None when none stored one."""
        return span([r.task_chance.get(key) for r in self.rows if key in r.tasks])

    def level_chance(self, level: str) -> tuple[float, float] | None:
        """The lowest and highest chance level of the rows' scores at ``level``."""
        return span([s.chance for r in self.rows if (s := r.scores.get(level)) is not None])


def at_chance(value: float | None, ci: Sequence[float | None] | None, chance: float | None) -> bool:
    """Whether a score is not clearly above chance: its 95% interval contains or falls below
    ``chance`` (without a finite interval: the value does not exceed it). Unknown chance: False."""
    if value is None or chance is None or not math.isfinite(chance):
        return False
    low = ci[0] if ci and ci[0] is not None and math.isfinite(ci[0]) else value
    return low <= chance


def span(values: Sequence[float | None]) -> tuple[float, float] | None:
    """The lowest and highest of the known, finite values; None when there is none."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    return (min(known), max(known)) if known else None
