"""Resampling: percentile bootstrap intervals of scores, of level means and of paired differences.

bootstrap_ci            a percentile interval of any statistic over resampled items
count_batches           bootstrap draws as count matrices, a batch at a time
paired_bootstrap        the difference of two runs on the same items, with its interval
level_bootstrap         the mean of several tasks' scores; each draw resamples every task
paired_level_bootstrap  the difference of two such means, with the same draws for both

Every bootstrap here draws its resamples as ``bootstrap_ci`` does (``rng.integers(0, n, n)``
per resample from ``np.random.default_rng(seed)``, tasks in order), so an interval recomputed
from stored per-item results equals the one the task computed when it ran.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from partbench.metrics.items import ItemScorer
from partbench.metrics.scores import to_numpy

# Entries of one bootstrap count matrix (resamples x items), float64: about 32 MiB.
DRAW_ENTRIES = 2**22


def bootstrap_ci(
    data: Any,
    statistic: Callable[[np.ndarray], float] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval.

    ``data`` is either a 1-D array (the statistic defaults to its mean) or an item count n, in
    which case ``statistic`` receives an array of counts (how often each of the n items was
    drawn) and computes the statistic from them, which covers class means and summed IoUs.
    """
    rng = np.random.default_rng(seed)
    if np.ndim(data) == 0:
        n = int(data)
        if statistic is None:
            raise ValueError("bootstrap_ci(n) needs a statistic of item counts")
        stat = statistic
    else:
        values = to_numpy(data).astype(np.float64)
        n = len(values)
        if statistic is None:

            def stat(counts: np.ndarray) -> float:
                return float(np.sum(values * counts) / counts.sum())
        else:
            fn = statistic

            def stat(counts: np.ndarray) -> float:
                return float(fn(np.repeat(values, counts)))

    if n == 0:
        return (float("nan"), float("nan"))
    draws = np.array([stat(np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(n_resamples)])
    return percentiles(draws, confidence)


def percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    """The percentile interval of ``draws`` at ``confidence``, NaN draws left out (NaN, NaN
    when every draw is NaN)."""
    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def count_batches(
    rng: np.random.Generator, n: int, n_resamples: int, *, entries: int = DRAW_ENTRIES
) -> Iterator[np.ndarray]:
    """Bootstrap draws as count matrices (resamples x items), a batch at a time.

    One ``rng.integers(0, n, (b, n))`` call yields the same indices as b successive calls of
    ``rng.integers(0, n, n)`` (``bootstrap_ci``'s draws); one bincount over offset indices
    counts them all. A batch holds at most ``entries`` counts (at least one draw); the size
    of the batches changes the memory taken, never the draws.
    """
    per = max(1, min(n_resamples, entries // max(n, 1)))
    for b0 in range(0, n_resamples, per):
        b = min(per, n_resamples - b0)
        idx = rng.integers(0, n, (b, n))
        idx += (np.arange(b) * n)[:, None]
        yield np.bincount(idx.reshape(-1), minlength=b * n).reshape(b, n).astype(np.float64)


def _draws(
    sides: Sequence[Sequence[ItemScorer]], *, n_resamples: int, seed: int, draw_entries: int
) -> tuple[list[float], list[np.ndarray]]:
    """Point estimate and draws of the mean over tasks, for each side; the same item draws
    for every side, one task after another from one generator."""
    if not sides or not sides[0]:
        raise ValueError("no tasks to score")
    rng = np.random.default_rng(seed)
    k = len(sides[0])
    points = [sum(float(t.scores(None)[0]) for t in side) / k for side in sides]
    totals = [np.zeros(n_resamples) for _ in sides]
    ns = tuple(t.n for t in sides[0])
    for j in range(k):
        n = ns[j]
        if n == 0:
            for total in totals:
                total[:] = np.nan
            continue
        # Task j's draws follow from the seed, the draw count and the item counts up to j.
        drawn = (seed, n_resamples, ns[: j + 1])
        keys = [(drawn, side[j].digest()) for side in sides]
        found = [_DRAW_MEMO.get(key) for key in keys]
        state = _DRAW_MEMO.get((drawn, "state"))
        if state is None or any(f is None for f in found):
            made = [np.zeros(n_resamples) if f is None else None for f in found]
            b0 = 0
            for counts in count_batches(rng, n, n_resamples, entries=draw_entries):
                for out, side in zip(made, sides, strict=True):
                    if out is not None:
                        out[b0 : b0 + len(counts)] = side[j].scores(counts)
                b0 += len(counts)
            for i, out in enumerate(made):
                if out is not None:
                    out.flags.writeable = False
                    found[i] = _DRAW_MEMO.put(keys[i], out)
            _DRAW_MEMO.put((drawn, "state"), rng.bit_generator.state)
        else:
            rng.bit_generator.state = state  # where drawing task j would have left it
        for total, scores in zip(totals, found, strict=True):
            total += scores
    return points, [total / k for total in totals]


class _Memo:
    """A bounded store, oldest use evicted first."""

    def __init__(self, entries: int):
        self.entries = entries
        self.store: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self.store.get(key)
        if value is not None:
            self.store.move_to_end(key)
        return value

    def clear(self) -> None:
        self.store.clear()

    def put(self, key: Any, value: Any) -> Any:
        self.store[key] = value
        self.store.move_to_end(key)
        while len(self.store) > self.entries:
            self.store.popitem(last=False)
        return value


# A leaderboard and a study's claims pair every run with several others under the same draws,
# and scoring the draws again each time was 25 s of a 530 s study. A run's scores on task j's
# draws are a pure function of its items, the seed, the draw count and the item counts of
# tasks 0..j, so they are kept (8 KB per 1,000 draws), with the generator's state after task j,
# and a call whose every side is known skips drawing that task.
_DRAW_MEMO = _Memo(4096)


def _prepare(tasks: Sequence[tuple[str, Mapping[str, np.ndarray]]]) -> list[ItemScorer]:
    return [ItemScorer(metric, items) for metric, items in tasks]


def level_bootstrap(
    tasks: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    draw_entries: int = DRAW_ENTRIES,
) -> tuple[float, float, float]:
    """The mean over tasks of ``score_from_items`` and its percentile interval, (mean, lo, hi).

    Each draw resamples every task's items (tasks drawn independently, in order, from one
    generator), so the interval is one of the mean, not a mean of intervals. ``draw_entries``
    bounds the counts held at once (``count_batches``); it never changes the draws.
    """
    prepared = _prepare(tasks)
    (point,), (draws,) = _draws([prepared], n_resamples=n_resamples, seed=seed, draw_entries=draw_entries)
    return (point, *percentiles(draws, confidence))


def paired_level_bootstrap(
    tasks_a: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    tasks_b: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    draw_entries: int = DRAW_ENTRIES,
) -> tuple[float, float, float]:
    """The difference a - b of two level means (points), with the same draws of each task's
    items for a and b: tasks are paired by position and must score the same items."""
    a, b = _prepare(tasks_a), _prepare(tasks_b)
    if len(a) != len(b):
        raise ValueError(f"cannot pair {len(a)} tasks with {len(b)}")
    for ta, tb in zip(a, b, strict=True):
        ta.same_items(tb)
    (pa, pb), (da, db) = _draws([a, b], n_resamples=n_resamples, seed=seed, draw_entries=draw_entries)
    return (pa - pb, *percentiles(da - db, confidence))


def paired_bootstrap(
    metric: str,
    items_a: Mapping[str, np.ndarray],
    items_b: Mapping[str, np.ndarray],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    draw_entries: int = DRAW_ENTRIES,
) -> tuple[float, float, float]:
    """The difference a - b of one task's metric in points and its percentile interval, from
    the same item draws for a and b (a paired bootstrap over the shared items)."""
    return paired_level_bootstrap(
        [(metric, items_a)],
        [(metric, items_b)],
        n_resamples=n_resamples,
        seed=seed,
        confidence=confidence,
        draw_entries=draw_entries,
    )
