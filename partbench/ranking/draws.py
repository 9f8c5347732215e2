"""Bootstrap draws of a board: every encoder's score on every column, resampled together.

The draws are partbench.metrics.resampling's (``count_batches`` from a generator seeded per
level), so a complete row's level interval is exactly ``level_bootstrap``'s and a neighbour's
difference exactly ``paired_level_bootstrap``'s; drawing each column once for every encoder
and pair is what makes a board with many encoders fast.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from partbench.metrics.items import ItemScorer
from partbench.metrics.resampling import count_batches, percentiles
from partbench.ranking.model import CONFIDENCE, LEVELS, Column
from partbench.ranking.runs import pairable


@dataclass
class Cell:
    """One encoder's run on one column, with its per-item results (None: not stored)."""

    column: Column
    run: Any
    items: Mapping[str, Any] | None


class Draws:
    """Bootstrap draws of every encoder's score on every column of a board.

    Each column's items are drawn once per resample and every encoder scored on the same
    items is scored on the same draws. A level's draws are the mean of its columns' draws, so
    each draw resamples every task's items, and the difference of two encoders' draws is
    their paired difference, without drawing again for every encoder and every pair. Each
    level's columns are drawn in board order from a generator seeded with ``seed``: for a
    complete row the level's interval is exactly ``metrics.resampling.level_bootstrap``'s, and a
    neighbour's difference exactly ``paired_level_bootstrap``'s. The overall score
    draws the second level again from another generator, so that its two levels' draws are
    independent.

    Encoders whose items differ from the column's main group (another --limit, dataset
    version, options) get draws of their own: resampled, but not paired with the others.
    """

    def __init__(
        self,
        columns: Sequence[Column],
        cells: Mapping[str, Mapping[str, Cell]],
        *,
        n_resamples: int,
        seed: int,
        confidence: float = CONFIDENCE,
    ):
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
                scorer = ItemScorer(col.metric, cell.items)
            except (ValueError, KeyError) as exc:
                self.reason[(encoder, col.key)] = f"cannot resample: {exc}"
                continue
            for group in groups:
                ref = self.cells[group[0][0]][col.key]
                if not pairable(ref.run, cell.run, ref.items, cell.items):
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
        """Each group's draws on ``col``: the same count matrices for every member, drawn in
        batches as partbench.metrics.resampling draws them."""
        out: dict[tuple[str, str], np.ndarray] = {}
        for group in self.groups[col.key]:
            n = group[0][1].n
            mine = {e: np.full(self.n_resamples, np.nan) for e, _ in group}
            start = 0
            for counts in count_batches(rng, n, self.n_resamples) if n else ():
                for e, scorer in group:
                    mine[e][start : start + len(counts)] = scorer.scores(counts)
                start += len(counts)
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
                return pairable(ca.run, cb.run, ca.items, cb.items) or "different items"
        return ""

    def interval(self, draws: np.ndarray) -> tuple[float, float]:
        return percentiles(draws, self.confidence)
