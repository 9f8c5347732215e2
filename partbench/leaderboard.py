"""Ranking: which runs count, level scores with resampled intervals, ranks from paired comparisons.

Which runs count. For each (dataset, encoder, task), one finished run: the latest of those with
the task's default options and no --limit, else the latest of the rest. A board is one
dataset's runs (columns: the tasks run on it) or one suite's (columns: exactly its
(task, dataset) pairs).

Scores. A level's score is the mean of the headline metrics (percent) of that level's columns.
Its 95% interval comes from resampling: each bootstrap draw resamples every column's items
and averages the columns' metrics (``metrics.level_bootstrap``). The overall score ("all") is
the mean of the board's level scores, resampled the same way.

Ranks. Encoders are ordered by score, complete ones (every column of the level) first. Each
pair of neighbours is compared with a paired bootstrap of their score difference over the
items both were scored on (the same draws for both: ``metrics.paired_level_bootstrap``); when
that difference's interval contains 0, the two are tied. A chain of ties is a tie group, and
its members share the group's first rank (``2=``).

Runs without per-item results (stored before partbench kept them) cannot be resampled: their
level interval is the mean of the stored bounds, neighbours are compared by whether their
intervals overlap, and they are marked as not paired. Rendering lives in partbench.render.

Chance. Every run stores the chance level of its metrics on the items it scored
(``partbench.metrics.chance_*``); a task's chance is its run's, for the headline metric. A
level's chance is the mean of its tasks' chance levels, as its score is the mean of their
scores, and the overall chance the mean of the levels'. A score is at chance (marked ``≈``)
when its 95% interval contains or falls below its own chance level, or, with no interval, when
the value does not exceed it. Runs of one task that scored different items (another --limit,
dataset version) have different chance levels: each score is judged against its own run's,
and a board's chance row shows the range over its rows. Runs stored before chance was recorded
have none: shown as "–" and never marked.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from partbench.errors import PartbenchError

if TYPE_CHECKING:  # numpy arrives with the items; the module itself stays light
    import numpy as np

    from partbench.specs import SuiteSpec

LEVELS = ("object", "part")
N_RESAMPLES = 1000
SEED = 0
CONFIDENCE = 0.95
CHANCE_MARK = "≈"  # after a score not clearly above chance, in every text format

# run id -> per-item results ({} or None when the run has none): Store.items, or a Store.
ItemsSource = Callable[[int], "Mapping[str, np.ndarray] | None"]


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

    def rank_text(self, level: str) -> str:
        """The rank as shown: ``2=`` tied, ``*`` some columns missing, ``†`` not paired."""
        st = self.standings.get(level)
        if st is None or st.rank is None:
            return "–"
        return f"{st.rank}{'=' if st.tied_with else ''}{'' if st.complete else '*'}{'' if st.paired else '†'}"


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

    @property
    def dataset(self) -> str:
        return self.name

    @property
    def title(self) -> str:
        return f"{self.name} v{self.version}" if self.kind == "suite" and self.version else self.name

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
        return _span([r.task_chance.get(key) for r in self.rows if key in r.tasks])

    def level_chance(self, level: str) -> tuple[float, float] | None:
        """The lowest and highest chance level of the rows' scores at ``level``."""
        return _span([s.chance for r in self.rows if (s := r.scores.get(level)) is not None])

    @property
    def levels_text(self) -> str:
        """What the headings say about levels, e.g. "object level only (no part tasks)"."""
        if self.level != "all":
            return f"{self.level} level"
        if len(self.levels) == 2:
            return "object and part levels"
        (only,) = self.levels or ("no",)
        other = "part" if only == "object" else "object"
        return f"{only} level only (no {other} tasks)"

    @property
    def ranked_by(self) -> str:
        if self.level == "all" and len(self.levels) == 2:
            return "ranked by the mean of the object and part scores"
        return f"ranked by the {self.shown_levels[0] if self.shown_levels else self.level} score"


def at_chance(value: float | None, ci: Sequence[float | None] | None, chance: float | None) -> bool:
    """Whether a score is not clearly above chance: its 95% interval contains or falls below
    ``chance`` (without a finite interval: the value does not exceed it). Unknown chance: False."""
    if value is None or chance is None or not math.isfinite(chance):
        return False
    low = ci[0] if ci and ci[0] is not None and math.isfinite(ci[0]) else value
    return low <= chance


def _span(values: Sequence[float | None]) -> tuple[float, float] | None:
    known = [v for v in values if v is not None and math.isfinite(v)]
    return (min(known), max(known)) if known else None


def _mean_known(values: Sequence[float | None]) -> float | None:
    """The mean, or None when any value is unknown: a level's chance needs every task's."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def _chance_of(run: Any) -> float | None:
    """The stored chance level of the run's headline metric (None for runs from before chance
    levels were stored)."""
    value = (getattr(run, "chance", None) or {}).get(run.headline_metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _interval_of(run: Any) -> str | None:
    said = (getattr(run, "details", None) or {}).get("interval")
    return said if isinstance(said, str) and said else None


# --------------------------------------------------------------------------- which runs count


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


class _ItemCache:
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


def _pairable(ra: Any, rb: Any, ia: Mapping[str, Any] | None, ib: Mapping[str, Any] | None) -> str:
    """Why two runs' items cannot be paired index by index ("" when they can)."""
    import numpy as np

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


def _provenance(run: Any, per_item: bool) -> Provenance:
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
        chance=_chance_of(run),
        interval=_interval_of(run),
    )


# --------------------------------------------------------------------------- resampling

_DRAW_ENTRIES = 2**22  # item draws held at once (resamples x items): about 32 MiB of counts


def _scorer(metric: str, items: Mapping[str, Any]) -> Any:
    """partbench.metrics' scorer of one task's items, which scores many draws at once."""
    from partbench import metrics

    cls = getattr(metrics, "ItemScorer", None) or metrics._Items
    return cls(metric, items)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    import numpy as np

    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


class _Draws:
    """Bootstrap draws of every encoder's score on every column of a board.

    Each column's items are drawn once per resample and every encoder scored on the same
    items is scored on the same draws. A level's draws are the mean of its columns' draws, so
    each draw resamples every task's items, and the difference of two encoders' draws is
    their paired difference, without drawing again for every encoder and every pair. Each
    level's columns are drawn in board order from a generator seeded with ``seed``: for a
    complete row the level's interval is exactly ``metrics.level_bootstrap``'s, and a
    neighbour's difference exactly ``metrics.paired_level_bootstrap``'s. The overall score
    draws the second level again from another generator, so that its two levels' draws are
    independent.

    Encoders whose items differ from the column's main group (another --limit, dataset
    version, options) get draws of their own: resampled, but not paired with the others.
    """

    def __init__(
        self,
        columns: Sequence[Column],
        cells: Mapping[str, Mapping[str, _Cell]],
        *,
        n_resamples: int,
        seed: int,
        confidence: float = CONFIDENCE,
    ):
        import numpy as np

        self.n_resamples, self.confidence = n_resamples, confidence
        self.cells = cells
        self.draws: dict[tuple[str, str], np.ndarray] = {}
        self.second: dict[tuple[str, str], np.ndarray] = {}  # the overall score's second level
        self.group: dict[tuple[str, str], int] = {}  # same group on a column: paired
        self.reason: dict[tuple[str, str], str] = {}  # why an encoder has no draws there
        self.groups = {c.key: self._groups(c) for c in columns}
        levels = [lv for lv in LEVELS if any(c.level == lv for c in columns)]
        for i, lv in enumerate(levels):
            rng = np.random.default_rng(seed)
            for col in (c for c in columns if c.level == lv):
                self.draws.update(self._draw(col, rng))
            if i > 0:
                rng = np.random.default_rng([seed, i])
                for col in (c for c in columns if c.level == lv):
                    self.second.update(self._draw(col, rng))

    def _groups(self, col: Column) -> list[list[tuple[str, Any]]]:
        """The encoders with items on ``col``, grouped by identical items, largest group first."""
        groups: list[list[tuple[str, Any]]] = []
        for encoder in sorted(self.cells):
            cell = self.cells[encoder].get(col.key)
            if cell is None:
                continue
            if cell.items is None:
                self.reason[(encoder, col.key)] = "no per-item results stored"
                continue
            try:
                scorer = _scorer(col.metric, cell.items)
            except (ValueError, KeyError) as exc:
                self.reason[(encoder, col.key)] = f"cannot resample: {exc}"
                continue
            for group in groups:
                ref = self.cells[group[0][0]][col.key]
                if not _pairable(ref.run, cell.run, ref.items, cell.items):
                    group.append((encoder, scorer))
                    break
            else:
                groups.append([(encoder, scorer)])
        groups.sort(key=len, reverse=True)
        for g, group in enumerate(groups):
            for encoder, _ in group:
                self.group[(encoder, col.key)] = g
        return groups

    def _draw(self, col: Column, rng: Any) -> dict[tuple[str, str], np.ndarray]:
        """Each group's draws on ``col``: the same count matrices for every member. Drawn in
        batches as metrics does; a batch of b draws takes the same indices as b single ones."""
        import numpy as np

        out: dict[tuple[str, str], np.ndarray] = {}
        for group in self.groups[col.key]:
            n = group[0][1].n
            mine = {e: np.full(self.n_resamples, np.nan) for e, _ in group}
            per = max(1, min(self.n_resamples, _DRAW_ENTRIES // max(n, 1)))
            for start in range(0, self.n_resamples if n else 0, per):
                b = min(per, self.n_resamples - start)
                idx = rng.integers(0, n, (b, n))
                idx += (np.arange(b) * n)[:, None]
                counts = np.bincount(idx.reshape(-1), minlength=b * n).reshape(b, n).astype(np.float64)
                for e, scorer in group:
                    mine[e][start : start + b] = scorer.scores(counts)
            out.update({(e, col.key): d for e, d in mine.items()})
        return out

    def level(self, encoder: str, cols: Sequence[Column]) -> np.ndarray | None:
        """Draws of the mean over ``cols``; None when a column has none."""
        got = [self.draws.get((encoder, c.key)) for c in cols]
        if not got or any(d is None for d in got):
            return None
        return sum(got) / len(got)  # type: ignore[return-value]

    def weighted(self, encoder: str, parts: Sequence[Sequence[Column]]) -> np.ndarray | None:
        """Draws of the mean over ``parts`` (levels) of the mean over each part's columns; the
        levels after the first from their own draws."""
        levels = []
        for i, cols in enumerate(parts):
            got = [(self.second if i else self.draws).get((encoder, c.key)) for c in cols]
            if not got or any(d is None for d in got):
                return None
            levels.append(sum(got) / len(got))
        return sum(levels) / len(levels) if levels else None  # type: ignore[return-value]

    def paired(self, a: str, b: str, cols: Sequence[Column]) -> str:
        """Why a and b cannot be compared paired on ``cols`` ("" when they can)."""
        for c in cols:
            for e in (a, b):
                if (e, c.key) not in self.draws:
                    return self.reason.get((e, c.key), "no per-item results stored")
            if self.group[(a, c.key)] != self.group[(b, c.key)]:
                ca, cb = self.cells[a][c.key], self.cells[b][c.key]
                return _pairable(ca.run, cb.run, ca.items, cb.items) or "different items"
        return ""

    def interval(self, draws: np.ndarray) -> tuple[float, float]:
        return _percentiles(draws, self.confidence)


@dataclass
class _Resampler:
    """compare's resampling: partbench.metrics' paired bootstrap, for one pair of encoders."""

    n_resamples: int
    seed: int
    confidence: float = CONFIDENCE

    def kwargs(self) -> dict[str, Any]:
        return {"n_resamples": self.n_resamples, "seed": self.seed, "confidence": self.confidence}

    def paired_level(
        self, a: Sequence[tuple[str, Mapping[str, Any]]], b: Sequence[tuple[str, Mapping[str, Any]]]
    ) -> tuple[float, float, float]:
        from partbench.metrics import paired_level_bootstrap

        return paired_level_bootstrap(a, b, **self.kwargs())

    def paired(self, metric: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> tuple[float, float, float]:
        from partbench.metrics import paired_bootstrap

        return paired_bootstrap(metric, a, b, **self.kwargs())


# --------------------------------------------------------------------------- building boards


@dataclass
class _Cell:
    column: Column
    run: Any
    items: Mapping[str, Any] | None


class _BoardBuilder:
    def __init__(self, board: Board, draws: _Draws):
        self.board = board
        self.d = draws

    # A row's columns at a level: the board's columns there that the row has.
    def have(self, row: Row, level: str) -> list[Column]:
        return [c for c in self.board.columns_at(level) if c.key in row.tasks]

    def _parts(self, row: Row) -> list[list[Column]]:
        return [self.have(row, lv) for lv in self.board.levels]

    def draws(self, row: Row, level: str) -> Any:
        if level == "all":
            return self.d.weighted(row.encoder, self._parts(row))
        return self.d.level(row.encoder, self.have(row, level))

    def level_score(self, row: Row, level: str) -> Score | None:
        cols = self.have(row, level)
        if not cols:
            return None
        value = sum(row.tasks[c.key] for c in cols) / len(cols)
        chance = _mean_known([row.task_chance.get(c.key) for c in cols])
        draws = self.draws(row, level)
        if draws is not None:
            return Score(value, *self.d.interval(draws), paired=True, chance=chance)
        return Score(value, *_mean_bounds([row.task_ci[c.key] for c in cols]), chance=chance)

    def overall_score(self, row: Row) -> Score | None:
        levels = self.board.levels
        parts = [row.scores.get(lv) for lv in levels]
        if not parts or any(p is None for p in parts):
            return None
        if len(levels) == 1:
            return parts[0]
        value = sum(p.value for p in parts) / len(parts)  # type: ignore[union-attr]
        chance = _mean_known([p.chance for p in parts])  # type: ignore[union-attr]
        draws = self.draws(row, "all")
        if draws is not None:
            return Score(value, *self.d.interval(draws), paired=True, chance=chance)
        return Score(value, *_mean_bounds([p.ci for p in parts]), chance=chance)  # type: ignore[union-attr]

    def compare(self, a: Row, b: Row, level: str) -> Comparison | None:
        """a minus b at ``level`` over the columns both have; None when their columns differ
        (different footing: no tie is claimed)."""
        cols_a, cols_b = self.have(a, level), self.have(b, level)
        if [c.key for c in cols_a] != [c.key for c in cols_b] or not cols_a:
            return None
        sa, sb = a.scores[level], b.scores[level]
        comp = Comparison(
            a=a.encoder,
            b=b.encoder,
            level=level,
            columns=[c.key for c in cols_a],
            metric="score",
            a_value=sa.value,
            b_value=sb.value,
            diff=sa.value - sb.value,
            low=None,
            high=None,
            paired=False,
            n_items=sum(a.runs[c.key].n_items or 0 for c in cols_a) or None,
            dataset=self.board.name,
        )
        reason = self.d.paired(a.encoder, b.encoder, cols_a)
        if not reason:
            comp.low, comp.high = self.d.interval(self.draws(a, level) - self.draws(b, level))
            comp.paired = True
            return comp
        comp.reason = reason
        comp.overlap = sa.overlaps(sb)
        return comp

    def rank(self, level: str) -> list[Comparison]:
        """Order, compare neighbours and give ranks at ``level``; the neighbour comparisons."""
        rows = self.board.rows
        cols = self.board.columns_at(level)

        def complete(r: Row) -> bool:
            return all(c.key in r.tasks for c in cols)

        scored = [r for r in rows if r.scores.get(level) is not None]
        ordered = sorted(scored, key=lambda r: (not complete(r), -r.scores[level].value, r.encoder))
        comps: list[Comparison | None] = [self.compare(a, b, level) for a, b in itertools.pairwise(ordered)]
        groups: list[list[Row]] = []
        for i, row in enumerate(ordered):
            comp = comps[i - 1] if i > 0 else None
            if groups and comp is not None and comp.tie:
                groups[-1].append(row)
            else:
                groups.append([row])
        position = 1
        for group in groups:
            for row in group:
                row.standings[level] = Standing(
                    rank=position,
                    tied_with=[r.encoder for r in group if r is not row],
                    complete=complete(row),
                    paired=row.scores[level].paired,
                )
            position += len(group)
        for i, comp in enumerate(comps):
            if comp is not None and not comp.paired:
                for row in ordered[i : i + 2]:
                    row.standings[level].paired = False
        for row in rows:
            row.standings.setdefault(level, Standing(rank=None, complete=complete(row), paired=False))
        return [c for c in comps if c is not None]


def _mean_bounds(cis: Sequence[Sequence[float | None]]) -> tuple[float | None, float | None]:
    """The mean of stored bounds: the fallback for runs without per-item results (not an
    interval of the mean, which is why such rows are marked as not paired)."""
    lows = [ci[0] for ci in cis]
    highs = [ci[1] for ci in cis]
    if not cis or None in lows or None in highs:
        return None, None
    return sum(lows) / len(lows), sum(highs) / len(highs)  # type: ignore[arg-type]


def _task_info(registry: Any, runs: Mapping[tuple[str, str, str], Any]) -> dict[str, tuple[str, str]]:
    """task -> (level, headline metric): the registry's, else what the runs stored."""
    info = {run.task: (run.level, run.headline_metric) for run in runs.values()}
    if registry is not None:
        info.update({name: (t.level, t.metric) for name, t in registry.tasks.items()})
    return info


def _column_order(c: Column) -> tuple[int, str]:
    return (LEVELS.index(c.level) if c.level in LEVELS else len(LEVELS), c.key)


def build(
    runs: Sequence[Any],
    level: str = "all",
    dataset: str | None = None,
    *,
    suite: SuiteSpec | None = None,
    registry: Any = None,
    items: ItemsSource | Any = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> list[Board]:
    """Boards ranked at ``level`` (object, part or all): one per dataset, or one for ``suite``.

    ``items`` gives a run's per-item results (``Store.items``); without it, or for runs that
    have none, intervals and comparisons fall back to the stored intervals (not paired).
    """
    if level not in ("all", *LEVELS):
        raise PartbenchError(f"unknown level '{level}'; known levels: all, object, part")
    chosen = choose(runs, None if suite else dataset)
    info = _task_info(registry, chosen)
    specs: list[tuple[str, str, str | None, str, list[Column]]] = []
    if suite is not None:
        cols = []
        for task, ds in suite.pairs:
            if task not in info:
                raise PartbenchError(f"suite '{suite.name}': task '{task}' is not registered")
            lv, metric = info[task]
            cols.append(Column(f"{task}@{ds}", task, ds, lv, metric))
        specs.append((suite.name, "suite", suite.version, suite.description, cols))
    else:
        for ds in sorted({k[0] for k in chosen}):
            tasks = sorted({k[2] for k in chosen if k[0] == ds})
            cols = sorted((Column(t, t, ds, *info[t]) for t in tasks), key=_column_order)
            specs.append((ds, "dataset", None, "", cols))

    get_items = _ItemCache(items)
    get_items.prefetch([run.id for run in chosen.values()])
    boards = []
    for name, kind, version, description, cols in specs:
        by_pair = {(c.dataset, c.task): c for c in cols}
        cells: dict[str, dict[str, _Cell]] = {}
        rows: dict[str, Row] = {}
        for (ds, encoder, task), run in sorted(chosen.items(), key=lambda kv: kv[1].id):
            col = by_pair.get((ds, task))
            if col is None:
                continue
            row = rows.setdefault(encoder, Row(encoder, run.family, name))
            row.family = run.family  # the latest run's word
            head = run.headline
            row.tasks[col.key] = head.value
            row.task_ci[col.key] = [head.ci_low, head.ci_high]
            row.task_chance[col.key] = _chance_of(run)
            got = get_items(run)
            row.runs[col.key] = _provenance(run, got is not None)
            cells.setdefault(encoder, {})[col.key] = _Cell(col, run, got)
        levels = tuple(lv for lv in LEVELS if any(c.level == lv for c in cols))
        if level != "all" and level not in levels and kind == "dataset":
            continue  # a dataset with no task at this level (CIFAR-10 at the part level)
        board = Board(
            name=name,
            level=level,
            columns=cols,
            levels=levels,
            rows=sorted(rows.values(), key=lambda r: r.encoder),
            kind=kind,
            version=version,
            description=description,
            n_resamples=n_resamples,
        )
        builder = _BoardBuilder(board, _Draws(cols, cells, n_resamples=n_resamples, seed=seed))
        for row in board.rows:
            row.missing = [c.key for c in cols if c.key not in row.tasks]
            for lv in levels:
                s = builder.level_score(row, lv)
                if s is not None:
                    row.scores[lv] = s
            overall = builder.overall_score(row)
            if overall is not None:
                row.scores["all"] = overall
        ranked: dict[str, list[Comparison]] = {}
        for lv in (*levels, "all"):
            ranked[lv] = builder.rank(lv)
        for row in board.rows:
            row.object_rank = row.standings["object"].rank if "object" in row.standings else None
            row.part_rank = row.standings["part"].rank if "part" in row.standings else None
            if row.object_rank is not None and row.part_rank is not None:
                row.part_awareness = row.object_rank - row.part_rank
            row.rank = row.standings[level].rank if level in row.standings else None
        board.comparisons = ranked.get(level, [])
        # In rank order at the board's level; rows without a score there go last (level
        # "all") or are left out (a single level's board shows only that level's scores).
        order = {r.encoder: i for i, r in enumerate(_ordered(board.rows, level))}
        board.rows.sort(key=lambda r: order[r.encoder])
        if level != "all":
            board.left_out = [r.encoder for r in board.rows if r.scores.get(level) is None]
            board.rows = [r for r in board.rows if r.scores.get(level) is not None]
        boards.append(board)
    return boards


def _ordered(rows: Sequence[Row], level: str) -> list[Row]:
    def key(r: Row) -> tuple[Any, ...]:
        st = r.standings.get(level)
        s = r.scores.get(level)
        if st is None or st.rank is None or s is None:
            return (1, 0, 0.0, r.encoder)
        return (0, st.rank, -s.value, r.encoder)

    return sorted(rows, key=key)


# --------------------------------------------------------------------------- compare A B


def compare(
    runs: Sequence[Any],
    a: str,
    b: str,
    *,
    task: str | None = None,
    dataset: str | None = None,
    items: ItemsSource | Any = None,
    registry: Any = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = SEED,
) -> list[Comparison]:
    """Paired differences a minus b: one per task both have (per dataset), then one per level
    over the tasks both have there (unless ``task`` picks one)."""
    if a == b:
        raise PartbenchError("compare needs two different encoders")
    chosen = choose(runs, dataset)
    encoders = sorted({k[1] for k in chosen})
    for name in (a, b):
        if name not in encoders:
            import difflib

            close = difflib.get_close_matches(name, encoders, n=1, cutoff=0.5)
            raise PartbenchError(
                f"no finished runs of encoder '{name}'"
                + (f" on dataset '{dataset}'" if dataset else "")
                + (f" (did you mean '{close[0]}'?)" if close else "")
                + f"; encoders with runs: {', '.join(encoders) or 'none'}"
            )
    info = _task_info(registry, chosen)
    get_items = _ItemCache(items)
    get_items.prefetch([run.id for key, run in chosen.items() if key[1] in (a, b)])
    rs = _Resampler(n_resamples, seed)
    out: list[Comparison] = []
    for ds in sorted({k[0] for k in chosen}):
        tasks = sorted(
            {k[2] for k in chosen if k[0] == ds and k[1] == a}
            & {k[2] for k in chosen if k[0] == ds and k[1] == b},
            key=lambda t: (LEVELS.index(info[t][0]) if info[t][0] in LEVELS else 2, t),
        )
        if task is not None:
            tasks = [t for t in tasks if t == task]
        per_level: dict[str, list[tuple[str, Any, Any, Any, Any]]] = {}
        for t in tasks:
            ra, rb = chosen[(ds, a, t)], chosen[(ds, b, t)]
            ia, ib = get_items(ra), get_items(rb)
            lv, metric = info[t]
            va, vb = ra.headline.value, rb.headline.value
            comp = Comparison(a, b, lv, [t], metric, va, vb, va - vb, None, None, False, dataset=ds)
            comp.n_items = ra.n_items
            reason = _pairable(ra, rb, ia, ib)
            if not reason:
                try:
                    _, comp.low, comp.high = rs.paired(metric, ia, ib)  # type: ignore[arg-type]
                    comp.paired = True
                except (ValueError, KeyError, NotImplementedError) as exc:
                    reason = f"cannot resample: {exc}"
            if reason:
                comp.reason = reason
                sa = Score(va, ra.headline.ci_low, ra.headline.ci_high)
                comp.overlap = sa.overlaps(Score(vb, rb.headline.ci_low, rb.headline.ci_high))
            out.append(comp)
            per_level.setdefault(lv, []).append((t, ra, rb, ia, ib))
        if task is not None:
            continue
        for lv, entries in per_level.items():
            if len(entries) < 2:  # one task: the level line would repeat it
                continue
            metrics_ = [info[t][1] for t, *_ in entries]
            va = sum(ra.headline.value for _, ra, *_ in entries) / len(entries)
            vb = sum(rb.headline.value for _, _, rb, *_ in entries) / len(entries)
            comp = Comparison(
                a, b, lv, [t for t, *_ in entries], "score", va, vb, va - vb, None, None, False, dataset=ds
            )
            comp.n_items = sum(e[1].n_items or 0 for e in entries) or None
            reasons = {_pairable(ra, rb, ia, ib) for _, ra, rb, ia, ib in entries} - {""}
            if not reasons:
                try:
                    _, comp.low, comp.high = rs.paired_level(
                        [(m, e[3]) for m, e in zip(metrics_, entries, strict=True)],
                        [(m, e[4]) for m, e in zip(metrics_, entries, strict=True)],
                    )
                    comp.paired = True
                except (ValueError, KeyError, NotImplementedError) as exc:
                    reasons = {f"cannot resample: {exc}"}
            if reasons:
                comp.reason = "; ".join(sorted(reasons))
                lo_a, hi_a = _mean_bounds([[e[1].headline.ci_low, e[1].headline.ci_high] for e in entries])
                lo_b, hi_b = _mean_bounds([[e[2].headline.ci_low, e[2].headline.ci_high] for e in entries])
                comp.overlap = Score(va, lo_a, hi_a).overlaps(Score(vb, lo_b, hi_b))
            out.append(comp)
    if not out:
        what = f"task '{task}'" if task else "any task"
        where = f" on dataset '{dataset}'" if dataset else ""
        raise PartbenchError(f"'{a}' and '{b}' have no finished run of {what} in common{where}")
    return out


# --------------------------------------------------------------------------- notes and data


def notes(board: Board) -> list[str]:
    """What the marks under a table mean, and the board's tie groups, as plain sentences."""
    level = board.level
    lines = [
        f"Scores in percent with 95% intervals ({board.n_resamples:,} bootstrap draws, each "
        "resampling every task's items). Each rank is compared with the next by a paired "
        "bootstrap of their score difference over the same items."
    ]
    resampled = _resampled(board)
    if resampled:
        lines.append(resampled)
    lines += _chance_notes(board)
    groups: list[list[Row]] = []
    for row in board.rows:
        if row.tied(level) and (not groups or row.encoder not in [r.encoder for r in groups[-1]]):
            st = row.standings[level]
            groups.append([row, *[r for r in board.rows if r.encoder in st.tied_with]])
    if groups:
        comps = {(c.a, c.b): c for c in board.comparisons}
        for group in groups:
            rank = group[0].standings[level].rank
            diffs = []
            for x, y in itertools.pairwise(group):
                c = comps.get((x.encoder, y.encoder))
                if c is not None:
                    diffs.append(f"{x.encoder} − {y.encoder} {_diff_text(c)}")
            lines.append(
                f"{rank}= ({', '.join(r.encoder for r in group)}): tied, the 95% interval of the "
                f"difference between neighbours contains 0" + (f": {'; '.join(diffs)}." if diffs else ".")
            )
    marks = {row.rank_text(level) for row in board.rows}
    if any("*" in m for m in marks):
        lines.append("*: some of the level's columns are missing (ranked after the complete encoders).")
        shown = {c.key for c in board.columns_at(level)}
        lacking = [(r.encoder, [k for k in r.missing if k in shown]) for r in board.rows]
        lines += [f"{e} lacks {len(m)} of {len(shown)}: {', '.join(m)}." for e, m in lacking if m]
    unranked = [r.encoder for r in board.rows if r.standings.get(level) and r.standings[level].rank is None]
    if unranked:
        lines.append(
            f"–: not ranked overall, no score at every level ({', '.join(unranked)}); "
            "see --level object and --level part."
        )
    if any("†" in m for m in marks):
        lines.append(
            "†: not paired: no per-item results stored (runs from before partbench kept them) or "
            "items that differ; the interval is the mean of the tasks' stored bounds and "
            "neighbours are compared by whether their intervals overlap."
        )
    if level == "all" and len(board.levels) == 2:
        lines.append("Part awareness: object rank minus part rank (positive: higher on parts).")
    if board.left_out:
        lines.append(f"Not shown (no {level} score): {', '.join(board.left_out)}.")
    incomplete = [c.key for c in board.shown_columns if not any(c.key in r.tasks for r in board.rows)]
    if board.kind == "suite" and incomplete:
        lines.append(f"No results yet for: {', '.join(incomplete)}.")
    return lines


def _resampled(board: Board) -> str | None:
    """What each shown task's interval resamples, in the words its runs stored (retrieval
    resamples queries against a fixed gallery, probes test items, segmentation images)."""
    said: dict[str, list[str]] = {}
    unsaid: list[str] = []
    for col in board.shown_columns:
        runs = [p for r in board.rows if (p := r.runs.get(col.key)) is not None]
        for text in dict.fromkeys(p.interval.rstrip(".") for p in runs if p.interval):
            said.setdefault(text, []).append(col.key)
        if runs and not any(p.interval for p in runs):
            unsaid.append(col.key)
    if not said:
        return None
    parts = [f"{', '.join(keys)}: {text}." for text, keys in said.items()]
    if unsaid:
        parts.append(f"{', '.join(unsaid)}: not stored (runs from before partbench recorded it).")
    return "What each task's interval resamples: " + " ".join(parts)


def _chance_notes(board: Board) -> list[str]:
    cols = board.shown_columns
    if not cols:
        return []
    line = (
        "chance (the row beneath the header): what chance-level predictions score on the items "
        "each run scored, as stored with the run; a level's is the mean of its tasks', as is its "
        "score; a range where runs scored different items."
    )
    if any(r.task_chance.get(c.key) is None for c in cols for r in board.rows if c.key in r.tasks):
        line += " Chance –: not stored (runs from before partbench recorded chance levels)."
    lines = [line]
    marked = any(r.task_at_chance(c.key) for c in cols for r in board.rows) or any(
        s.at_chance for r in board.rows for lv in board.shown_levels if (s := r.scores.get(lv)) is not None
    )
    if marked:
        lines.append(
            f"{CHANCE_MARK}: not clearly above chance (the score's 95% interval contains or falls "
            "below its chance level)."
        )
    return lines


def _diff_text(c: Comparison) -> str:
    from partbench.render.formatting import difference_text, signed  # it imports this module

    if c.paired and c.low is not None:
        return difference_text(c.diff, c.low, c.high)
    return f"{signed(c.diff)} (not paired)"


def to_data(boards: Sequence[Board]) -> list[dict[str, Any]]:
    """One record per (board, encoder), in rank order: what the JSON format holds.

    Each record names its board (``dataset``: the dataset, or the suite on a suite board) and
    carries the scores with intervals, ranks per level with their tie groups, the paired
    comparison with the next rank (``next``), per-column scores and each score's provenance.
    Every score comes with its chance level (``*_chance``, ``task_chance``; null where the run
    stored none) and whether it is at chance (``*_at_chance``, ``task_at_chance``).
    """
    out: list[dict[str, Any]] = []
    for b in boards:
        nexts = {c.a: c for c in b.comparisons}
        for r in b.rows:
            st = r.standings.get(b.level)
            s = r.scores.get(b.level)
            nxt = nexts.get(r.encoder)
            out.append(
                {
                    "dataset": b.name,
                    "kind": b.kind,
                    "suite_version": b.version,
                    "level": b.level,
                    "levels": list(b.levels),
                    "rank": r.rank,
                    "rank_text": r.rank_text(b.level),
                    "tied_with": list(st.tied_with) if st else [],
                    "paired": bool(st and st.paired),
                    "encoder": r.encoder,
                    "family": r.family,
                    "score": s.value if s else None,
                    "score_ci": s.ci if s else None,
                    "score_chance": s.chance if s else None,
                    "score_at_chance": bool(s and s.at_chance),
                    "object_score": r.object_score,
                    "object_ci": r.object_ci,
                    "object_chance": _chance(r, "object"),
                    "object_at_chance": _marked(r, "object"),
                    "part_score": r.part_score,
                    "part_ci": r.part_ci,
                    "part_chance": _chance(r, "part"),
                    "part_at_chance": _marked(r, "part"),
                    "object_rank": r.object_rank,
                    "part_rank": r.part_rank,
                    "part_awareness": r.part_awareness,
                    "standings": {
                        lv: {
                            "rank": x.rank,
                            "tied_with": x.tied_with,
                            "complete": x.complete,
                            "paired": x.paired,
                        }
                        for lv, x in r.standings.items()
                    },
                    "next": None
                    if nxt is None
                    else {
                        "encoder": nxt.b,
                        "diff": nxt.diff,
                        "ci": [nxt.low, nxt.high],
                        "paired": nxt.paired,
                        "tie": nxt.tie,
                        "reason": nxt.reason,
                    },
                    "tasks": dict(r.tasks),
                    "task_ci": {k: list(v) for k, v in r.task_ci.items()},
                    "task_chance": {k: r.task_chance.get(k) for k in r.tasks},
                    "task_at_chance": {k: r.task_at_chance(k) for k in r.tasks},
                    "metrics": {c.key: c.metric for c in b.columns},
                    "missing": list(r.missing),
                    "runs": {k: vars(p) for k, p in r.runs.items()},
                }
            )
    return out


def _chance(row: Row, level: str) -> float | None:
    s = row.scores.get(level)
    return None if s is None else s.chance


def _marked(row: Row, level: str) -> bool:
    s = row.scores.get(level)
    return bool(s and s.at_chance)


# --------------------------------------------------------------------------- rendering (compat)
# The renderers live in partbench.render; these names keep existing callers working.


def to_markdown(boards: Sequence[Board]) -> str:
    from partbench.render.markdown import render

    return render(boards)


def to_csv(boards: Sequence[Board]) -> str:
    from partbench.render.tabular import csv_text

    return csv_text(boards)


def to_json(boards: Sequence[Board]) -> str:
    from partbench.render.tabular import json_text

    return json_text(boards)


def to_svg(boards: Sequence[Board]) -> str:
    from partbench.render.svg import render

    return render(boards)


def to_html(boards: Sequence[Board], **kwargs: Any) -> str:
    from partbench.render.html import render

    return render(boards, **kwargs)


def to_rich(boards: Sequence[Board], *, width: int | None = None, wide: bool = False) -> Any:
    from partbench.render.terminal import leaderboard

    return leaderboard(boards, width=width, wide=wide)


def format_for(path: Path | None) -> str:
    from partbench.render import format_for as fmt

    return fmt(path)


def render(boards: Sequence[Board], fmt: str, **kwargs: Any) -> str:
    from partbench.render import render as go

    return go(boards, fmt, **kwargs)


def write_all(boards: Sequence[Board], output_dir: Path, command: str, **kwargs: Any) -> list[Path]:
    from partbench.render import write_all as go

    return go(boards, output_dir, command, **kwargs)
