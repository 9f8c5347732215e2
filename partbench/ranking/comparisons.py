"""``partbench compare``: encoder a minus encoder b, paired, per task and per level.

Each difference comes with the interval of a paired bootstrap over the items both runs scored
(``metrics.resampling.paired_bootstrap``; a level's, ``paired_level_bootstrap``, draws every
task's items). Runs that cannot be paired (no per-item results, different items) are compared
by whether their stored intervals overlap, and say why.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from partbench.errors import PartbenchError
from partbench.metrics.resampling import paired_bootstrap, paired_level_bootstrap
from partbench.ranking.boards import mean_bounds
from partbench.ranking.model import CONFIDENCE, LEVELS, N_RESAMPLES, SEED, Comparison, Score
from partbench.ranking.runs import ItemCache, ItemsSource, choose, pairable, task_info

# (task, run of a, run of b, items of a, items of b)
_Pair = tuple[str, Any, Any, "Mapping[str, Any] | None", "Mapping[str, Any] | None"]


def _known(encoders: Sequence[str], name: str, dataset: str | None) -> None:
    if name in encoders:
        return
    close = difflib.get_close_matches(name, encoders, n=1, cutoff=0.5)
    raise PartbenchError(
        f"no finished runs of encoder '{name}'"
        + (f" on dataset '{dataset}'" if dataset else "")
        + (f" (did you mean '{close[0]}'?)" if close else "")
        + f"; encoders with runs: {', '.join(encoders) or 'none'}"
    )


def _task(a: str, b: str, ds: str, pair: _Pair, level: str, metric: str, draws: dict[str, Any]) -> Comparison:
    """a minus b on one task: paired where the items allow, else by stored intervals."""
    t, ra, rb, ia, ib = pair
    va, vb = ra.headline.value, rb.headline.value
    comp = Comparison(a, b, level, [t], metric, va, vb, va - vb, None, None, False, dataset=ds)
    comp.n_items = ra.n_items
    reason = pairable(ra, rb, ia, ib)
    if not reason:
        try:
            _, comp.low, comp.high = paired_bootstrap(metric, ia, ib, **draws)  # type: ignore[arg-type]
            comp.paired = True
        except (ValueError, KeyError, NotImplementedError) as exc:
            reason = f"cannot resample: {exc}"
    if reason:
        comp.reason = reason
        sa = Score(va, ra.headline.ci_low, ra.headline.ci_high)
        comp.overlap = sa.overlaps(Score(vb, rb.headline.ci_low, rb.headline.ci_high))
    return comp


def _level(
    a: str, b: str, ds: str, level: str, entries: list[_Pair], metrics: list[str], draws: dict[str, Any]
) -> Comparison:
    """a minus b on the mean of a level's tasks, each draw resampling every task's items."""
    va = sum(ra.headline.value for _, ra, *_ in entries) / len(entries)
    vb = sum(rb.headline.value for _, _, rb, *_ in entries) / len(entries)
    comp = Comparison(
        a, b, level, [t for t, *_ in entries], "score", va, vb, va - vb, None, None, False, dataset=ds
    )
    comp.n_items = sum(e[1].n_items or 0 for e in entries) or None
    reasons = {pairable(ra, rb, ia, ib) for _, ra, rb, ia, ib in entries} - {""}
    if not reasons:
        try:
            _, comp.low, comp.high = paired_level_bootstrap(
                [(m, e[3]) for m, e in zip(metrics, entries, strict=True)],  # type: ignore[misc]
                [(m, e[4]) for m, e in zip(metrics, entries, strict=True)],  # type: ignore[misc]
                **draws,
            )
            comp.paired = True
        except (ValueError, KeyError, NotImplementedError) as exc:
            reasons = {f"cannot resample: {exc}"}
    if reasons:
        comp.reason = "; ".join(sorted(reasons))
        lo_a, hi_a = mean_bounds([[e[1].headline.ci_low, e[1].headline.ci_high] for e in entries])
        lo_b, hi_b = mean_bounds([[e[2].headline.ci_low, e[2].headline.ci_high] for e in entries])
        comp.overlap = Score(va, lo_a, hi_a).overlaps(Score(vb, lo_b, hi_b))
    return comp


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
        _known(encoders, name, dataset)
    info = task_info(registry, chosen)
    get_items = ItemCache(items)
    get_items.prefetch([run.id for key, run in chosen.items() if key[1] in (a, b)])
    draws = {"n_resamples": n_resamples, "seed": seed, "confidence": CONFIDENCE}
    out: list[Comparison] = []
    for ds in sorted({k[0] for k in chosen}):
        tasks = sorted(
            {k[2] for k in chosen if k[0] == ds and k[1] == a}
            & {k[2] for k in chosen if k[0] == ds and k[1] == b},
            key=lambda t: (LEVELS.index(info[t][0]) if info[t][0] in LEVELS else 2, t),
        )
        if task is not None:
            tasks = [t for t in tasks if t == task]
        per_level: dict[str, list[_Pair]] = {}
        for t in tasks:
            ra, rb = chosen[(ds, a, t)], chosen[(ds, b, t)]
            pair = (t, ra, rb, get_items(ra), get_items(rb))
            out.append(_task(a, b, ds, pair, *info[t], draws))
            per_level.setdefault(info[t][0], []).append(pair)
        if task is not None:
            continue
        for lv, entries in per_level.items():
            if len(entries) >= 2:  # one task: the level line would repeat it
                out.append(_level(a, b, ds, lv, entries, [info[t][1] for t, *_ in entries], draws))
    if not out:
        what = f"task '{task}'" if task else "any task"
        where = f" on dataset '{dataset}'" if dataset else ""
        raise PartbenchError(f"'{a}' and '{b}' have no finished run of {what} in common{where}")
    return out
