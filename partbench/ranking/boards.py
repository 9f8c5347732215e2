"""Ranking: a board's level scores with resampled intervals, and ranks from paired comparisons.

Scores. A level's score is the mean of the headline metrics (percent) of that level's columns.
Its 95% interval comes from resampling: each bootstrap draw resamples every column's items
and averages the columns' metrics (``metrics.resampling.level_bootstrap``). The overall score
("all") is the mean of the board's level scores, resampled the same way.

Ranks. Encoders are ordered by score, complete ones (every column of the level) first. Each
pair of neighbours is compared with a paired bootstrap of their score difference over the
items both were scored on (the same draws for both: ``paired_level_bootstrap``); when that
difference's interval contains 0, the two are tied. A chain of ties is a tie group, and its
members share the group's first rank (``2=``).

Runs without per-item results (stored before partbench kept them) cannot be resampled: their
level interval is the mean of the stored bounds, neighbours are compared by whether their
intervals overlap, and they are marked as not paired.

Chance. Every run stores the chance level of its metrics on the items it scored
(``partbench.metrics.chance``); a task's chance is its run's, for the headline metric. A
level's chance is the mean of its tasks' chance levels, as its score is the mean of their
scores, and the overall chance the mean of the levels'. Runs of one task that scored different
items (another --limit, dataset version) have different chance levels: each score is judged
against its own run's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from partbench.errors import PartbenchError
from partbench.ranking.curves import layer_curves
from partbench.ranking.draws import Cell, Draws
from partbench.ranking.model import LEVELS, N_RESAMPLES, SEED, Board, Column, Comparison, Row, Score, Standing
from partbench.ranking.runs import ItemCache, ItemsSource, chance_of, choose, provenance, task_info

if TYPE_CHECKING:
    from partbench.specs import SuiteSpec


def mean_known(values: Sequence[float | None]) -> float | None:
    """The mean, or None when any value is unknown: a level's chance needs every task's."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return sum(values) / len(values)  # type: ignore[arg-type]


def mean_bounds(cis: Sequence[Sequence[float | None]]) -> tuple[float | None, float | None]:
    """The mean of stored bounds: the fallback for runs without per-item results (not an
    interval of the mean, which is why such rows are marked as not paired)."""
    lows = [ci[0] for ci in cis]
    highs = [ci[1] for ci in cis]
    if not cis or None in lows or None in highs:
        return None, None
    return sum(lows) / len(lows), sum(highs) / len(highs)  # type: ignore[arg-type]


class _BoardBuilder:
    def __init__(self, board: Board, draws: Draws):
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
        chance = mean_known([row.task_chance.get(c.key) for c in cols])
        draws = self.draws(row, level)
        if draws is not None:
            return Score(value, *self.d.interval(draws), paired=True, chance=chance)
        return Score(value, *mean_bounds([row.task_ci[c.key] for c in cols]), chance=chance)

    def overall_score(self, row: Row) -> Score | None:
        levels = self.board.levels
        parts = [row.scores.get(lv) for lv in levels]
        if not parts or any(p is None for p in parts):
            return None
        if len(levels) == 1:
            return parts[0]
        value = sum(p.value for p in parts) / len(parts)  # type: ignore[union-attr]
        chance = mean_known([p.chance for p in parts])  # type: ignore[union-attr]
        draws = self.draws(row, "all")
        if draws is not None:
            return Score(value, *self.d.interval(draws), paired=True, chance=chance)
        return Score(value, *mean_bounds([p.ci for p in parts]), chance=chance)  # type: ignore[union-attr]

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


@dataclass
class _Spec:
    """A board before its rows: its name, kind and columns."""

    name: str
    kind: str  # "dataset" or "suite"
    version: str | None
    description: str
    columns: list[Column]


def _column_order(c: Column) -> tuple[int, str]:
    return (LEVELS.index(c.level) if c.level in LEVELS else len(LEVELS), c.key)


def _specs(
    chosen: dict[tuple[str, str, str], Any], info: dict[str, tuple[str, str]], suite: SuiteSpec | None
) -> list[_Spec]:
    """The boards to build: the suite's one, else one per dataset with the tasks run on it."""
    if suite is not None:
        cols = []
        for task, ds in suite.pairs:
            if task not in info:
                raise PartbenchError(f"suite '{suite.name}': task '{task}' is not registered")
            lv, metric = info[task]
            cols.append(Column(f"{task}@{ds}", task, ds, lv, metric))
        return [_Spec(suite.name, "suite", suite.version, suite.description, cols)]
    specs = []
    for ds in sorted({k[0] for k in chosen}):
        tasks = sorted({k[2] for k in chosen if k[0] == ds})
        cols = sorted((Column(t, t, ds, *info[t]) for t in tasks), key=_column_order)
        specs.append(_Spec(ds, "dataset", None, "", cols))
    return specs


def _rows(
    spec: _Spec, chosen: dict[tuple[str, str, str], Any], get_items: ItemCache
) -> tuple[dict[str, Row], dict[str, dict[str, Cell]]]:
    """The board's rows with their per-column scores, and each encoder's cells (run and items)."""
    by_pair = {(c.dataset, c.task): c for c in spec.columns}
    cells: dict[str, dict[str, Cell]] = {}
    rows: dict[str, Row] = {}
    for (ds, encoder, task), run in sorted(chosen.items(), key=lambda kv: kv[1].id):
        col = by_pair.get((ds, task))
        if col is None:
            continue
        row = rows.setdefault(encoder, Row(encoder, run.family, spec.name))
        row.family = run.family  # the latest run's word
        head = run.headline
        row.tasks[col.key] = head.value
        row.task_ci[col.key] = [head.ci_low, head.ci_high]
        row.task_chance[col.key] = chance_of(run)
        got = get_items(run)
        row.runs[col.key] = provenance(run, got is not None)
        cells.setdefault(encoder, {})[col.key] = Cell(col, run, got)
    return rows, cells


def _rank(board: Board, builder: _BoardBuilder) -> None:
    """Score every row at every level, rank each level, and order the rows at the board's."""
    level = board.level
    for row in board.rows:
        row.missing = [c.key for c in board.columns if c.key not in row.tasks]
        for lv in board.levels:
            s = builder.level_score(row, lv)
            if s is not None:
                row.scores[lv] = s
        overall = builder.overall_score(row)
        if overall is not None:
            row.scores["all"] = overall
    ranked: dict[str, list[Comparison]] = {}
    for lv in (*board.levels, "all"):
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
    specs = _specs(chosen, task_info(registry, chosen), suite)
    get_items = ItemCache(items)
    get_items.prefetch([run.id for run in chosen.values()])
    curves = layer_curves(runs)
    boards = []
    for spec in specs:
        rows, cells = _rows(spec, chosen, get_items)
        levels = tuple(lv for lv in LEVELS if any(c.level == lv for c in spec.columns))
        if level != "all" and level not in levels and spec.kind == "dataset":
            continue  # a dataset with no task at this level (CIFAR-10 at the part level)
        board = Board(
            name=spec.name,
            level=level,
            columns=spec.columns,
            levels=levels,
            rows=sorted(rows.values(), key=lambda r: r.encoder),
            kind=spec.kind,
            version=spec.version,
            description=spec.description,
            n_resamples=n_resamples,
            curves=[
                c
                for c in curves
                if (c.task, c.dataset) in suite.pairs or (spec.kind == "dataset" and c.dataset == spec.name)
            ]
            if suite
            else [c for c in curves if c.dataset == spec.name],
        )
        _rank(board, _BoardBuilder(board, Draws(spec.columns, cells, n_resamples=n_resamples, seed=seed)))
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
