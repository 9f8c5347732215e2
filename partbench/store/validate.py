"""One check of every result the store takes, wherever it comes from: a task's result
(``Store.finish``), a pending-result file (``Store.flush_pending``) and a run of an exported
file (``partbench db import``, through ``Store.adopt_many``).

What a stored result must be:

- every metric named once, its value and interval bounds finite numbers within the metric's
  range, with ``ci_low <= value <= ci_high`` where bounds are given;
- chance levels finite numbers within their metric's range;
- ``n_items`` a whole number >= 0; per-item arrays that agree with it (for ``mAP`` and ``AP``
  the items counted are the queries with a finite AP, otherwise every row), and where the
  headline metric can be computed from them (``partbench.metrics.score_from_items``) a
  headline value that matches that computation;
- the task's headline metric among its metrics;
- (imports) a known level, a level and headline that agree with this installation's task of
  that name where it has one, times not in the future and a start no later than the finish,
  and whole numbers that fit the store's 64-bit columns.

Ranges. Every metric partbench stores is a percentage (``partbench.specs.MetricValue``), so a
metric's range is [0, 100] (``METRIC_RANGE``): a level's score is a mean of its tasks'
headline metrics, which only means something when they share a scale.

A problem is a ``ResultError`` naming the field (``metrics[1].ci_low``, ``run.seed``); the
caller adds the file, line or run it came from.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from partbench.errors import PartbenchError
from partbench.metrics import ITEM_FIELDS, ItemScorer, score_from_items
from partbench.specs import LEVELS, METRIC_RANGE, metric_range

# Seconds a time may lie ahead of this machine's clock: another host's clock may run ahead.
CLOCK_SKEW = 300.0
# The store's whole-number columns are 64-bit (BIGINT on PostgreSQL, INTEGER on SQLite).
INT64 = (-(2**63), 2**63 - 1)
# How far a stored headline may lie from the one its per-item results give, in points: room
# for float32 accumulation in a task, far below the one decimal a score is shown with.
SCORE_TOLERANCE = 1e-3
# Metrics that are a (weighted) mean over items: the items of a result trained several times
# (each item's mean over the repeats) give its headline, the mean over the repeats, exactly.
# The others (a mean of per-class ratios) are recomputed only for a single repeat.
MEAN_OF_ITEMS = ("top1", "AP")


class ResultError(PartbenchError):
    """A result the store refuses; ``field`` names what is wrong in it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


MetricRow = tuple[str, float, "float | None", "float | None"]


def _number(value: Any, field: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ResultError(field, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        raise ResultError(field, f"{value} is too large to be a score") from None
    if not math.isfinite(number):
        raise ResultError(field, f"{number} is not a finite number")
    return number


def _in_range(value: float, field: str, name: str, headline: bool = False) -> None:
    low, high = METRIC_RANGE if headline else metric_range(name)
    if not low <= value <= high:
        raise ResultError(
            field, f"{value:g} is outside the range of metric '{name}' ({low:g} to {high:g}, percent)"
        )


def whole_number(value: Any, field: str, *, minimum: int = INT64[0], optional: bool = False) -> int | None:
    """``value`` as an int that a 64-bit column holds and that is at least ``minimum``."""
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ResultError(field, f"expected a whole number, got {value!r}")
    number = int(value)
    if not max(minimum, INT64[0]) <= number <= INT64[1]:
        if number > INT64[1] or number < INT64[0]:
            raise ResultError(field, f"{number} does not fit the store (a 64-bit whole number)")
        raise ResultError(field, f"{number} is below {minimum}")
    return number


def _metric_rows(metrics: Sequence[Any] | Mapping[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """(name, value, low, high) from a mapping of MetricValue or numbers, or from rows."""
    if isinstance(metrics, Mapping):
        return [
            (name, getattr(m, "value", m), getattr(m, "ci_low", None), getattr(m, "ci_high", None))
            for name, m in metrics.items()
        ]
    rows = []
    for i, row in enumerate(metrics):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise ResultError(f"metrics[{i}]", f"expected name, value, ci_low, ci_high; got {row!r}")
        rows.append(tuple(row))
    return rows  # type: ignore[return-value]


def _items_count(headline: str | None, items: Mapping[str, np.ndarray]) -> tuple[int, str]:
    """How many items the arrays say the headline was computed over, and why: as the metric's
    scorer counts them where the arrays are the metric's, else their rows."""
    if headline in ITEM_FIELDS and all(k in items for k in ITEM_FIELDS[headline]):
        try:
            return ItemScorer(headline, items).counted()
        except ValueError:
            pass  # arrays the scorer refuses: _check_items says why, naming them
    name, array = next(iter(items.items()))
    return int(np.shape(array)[0]), f"rows of '{name}'"


def _check_items(
    items: Mapping[str, np.ndarray],
    n_items: int | None,
    headline: str | None,
    rows: Sequence[MetricRow],
    value_fields: Mapping[str, str],
    repeated: bool,
) -> None:
    lengths = {name: int(np.shape(a)[0]) if np.ndim(a) else 0 for name, a in items.items()}
    if len(set(lengths.values())) > 1:
        raise ResultError("items", f"the arrays disagree on the number of items: {lengths}")
    if n_items is not None:
        counted, what = _items_count(headline, items)
        if counted != n_items:
            raise ResultError("n_items", f"is {n_items}, but the per-item results hold {counted} ({what})")
    if headline not in ITEM_FIELDS or any(k not in items for k in ITEM_FIELDS[headline]):
        return
    stored = next((value for name, value, _, _ in rows if name == headline), None)
    if stored is None or (repeated and headline not in MEAN_OF_ITEMS):
        return
    try:
        with np.errstate(all="ignore"):
            computed = score_from_items(headline, items)
    except ValueError as exc:
        raise ResultError("items", f"cannot compute '{headline}' from them ({exc})") from None
    if not math.isfinite(computed):
        raise ResultError("items", f"give no finite '{headline}'")
    if abs(computed - stored) > SCORE_TOLERANCE * max(1.0, abs(computed)):
        raise ResultError(
            value_fields[headline],
            f"is {stored:g}, but its per-item results give {computed:g} (partbench.metrics.score_from_items)",
        )


def _check_repeats(
    repeats: list[Any], headline: str, rows: Sequence[MetricRow], value_fields: Mapping[str, str]
) -> None:
    stored = next((value for name, value, _, _ in rows if name == headline), None)
    numbers = [_number(v, f"details['{headline}_repeats'][{i}]") for i, v in enumerate(repeats)]
    if stored is None:
        return
    mean = math.fsum(numbers) / len(numbers)  # type: ignore[arg-type]
    if abs(mean - stored) > SCORE_TOLERANCE * max(1.0, abs(mean)):
        raise ResultError(value_fields[headline], f"is {stored:g}, but the mean of its repeats is {mean:g}")


def check_result(
    metrics: Sequence[Any] | Mapping[str, Any],
    *,
    headline: str | None,
    n_items: Any,
    chance: Mapping[str, Any] | None,
    items: Mapping[str, np.ndarray] | None = None,
    details: Mapping[str, Any] | None = None,
    status: str = "done",
) -> list[MetricRow]:
    """The metrics of a result as the store keeps them, (name, value, ci_low, ci_high), once
    every check above has passed; a ``ResultError`` naming the field otherwise. ``headline``
    None: the headline is checked later, by whoever knows it (``check_headline``).
    ``details``: a result trained several times holds each repeat's headline there
    (``<metric>_repeats``), and its headline is their mean."""
    repeats = (details or {}).get(f"{headline}_repeats") if headline is not None else None
    repeated = isinstance(repeats, list) and len(repeats) > 1
    rows: list[MetricRow] = []
    seen: set[str] = set()
    value_fields: dict[str, str] = {}  # metric -> how a refusal names its value
    keyed = not isinstance(metrics, Mapping)  # rows from a file: fields named by key
    for i, (name, value, low, high) in enumerate(_metric_rows(metrics)):
        if keyed:
            fields = {part: f"metrics[{i}].{part}" for part in ("name", "value", "ci_low", "ci_high")}
        else:
            fields = {
                "name": f"metric {name!r}",
                "value": f"metric '{name}'",
                "ci_low": f"the lower bound of metric '{name}'",
                "ci_high": f"the upper bound of metric '{name}'",
            }
        if not isinstance(name, str) or not 0 < len(name) <= 60:
            raise ResultError(fields["name"], f"{name!r} is not a name of 1 to 60 characters")
        if name in seen:
            raise ResultError(fields["name"], f"metric '{name}' is listed twice; a metric has one value")
        seen.add(name)
        v = _number(value, fields["value"])
        lo = _number(low, fields["ci_low"], optional=True)
        hi = _number(high, fields["ci_high"], optional=True)
        assert v is not None
        _in_range(v, fields["value"], name, headline=name == headline)
        for bound, part in ((lo, "ci_low"), (hi, "ci_high")):
            if bound is not None:
                _in_range(bound, fields[part], name, headline=name == headline)
        if lo is not None and hi is not None and lo > hi:
            raise ResultError(
                fields["ci_low"], f"the interval's lower bound {lo:g} is above its upper {hi:g}"
            )
        # A mean over repeats of a per-class ratio (mIoU) need not lie in the interval of
        # its items' score, which is what the interval resamples.
        contained = not (repeated and name == headline and name not in MEAN_OF_ITEMS)
        if contained and ((lo is not None and v < lo) or (hi is not None and v > hi)):
            raise ResultError(
                fields["value"],
                f"{v:g} lies outside its own interval [{lo if lo is not None else '-'}, "
                f"{hi if hi is not None else '-'}]",
            )
        rows.append((name, v, lo, hi))
        value_fields[name] = fields["value"]
    if chance is not None:
        if not isinstance(chance, Mapping):
            raise ResultError("chance", f"expected an object of metric -> chance level, got {chance!r}")
        for name, level in chance.items():
            field = f"chance['{name}']" if keyed else f"chance level of '{name}'"
            number = _number(level, field)
            assert number is not None
            _in_range(number, field, str(name))
    n = whole_number(n_items, "n_items", minimum=0, optional=True)
    if status == "done" and headline is not None:
        check_headline(rows, headline)
    if repeated:
        _check_repeats(repeats, headline, rows, value_fields)  # type: ignore[arg-type]
    if items:
        _check_items(items, n, headline, rows, value_fields, repeated)
    return rows


def check_headline(rows: Sequence[MetricRow], headline: str) -> None:
    """A done run's metrics hold its task's headline metric: the one every board ranks by."""
    names = [row[0] for row in rows]
    if headline not in names:
        raise ResultError(
            "metrics",
            f"the task's headline metric '{headline}' is not among them ({', '.join(names) or 'none'})",
        )


def check_run_fields(
    fields: Mapping[str, Any], *, tasks: Mapping[str, Any] | None = None, at: dt.datetime | None = None
) -> None:
    """The columns of a settled run from elsewhere: a known level, a task that agrees with this
    installation's task of that name (``tasks``: name -> TaskSpec; a task not installed here is
    kept with the level and headline it came with), times not in the future, whole numbers
    the store holds."""
    level = fields.get("level")
    if level not in LEVELS:
        raise ResultError("run.level", f"'{level}' is not a level; levels: {', '.join(LEVELS)}")
    spec = (tasks or {}).get(fields.get("task"))
    if spec is not None and getattr(spec, "plugin", None) in (None, "", fields.get("task_plugin")):
        if spec.level != level:
            raise ResultError(
                "run.level", f"is '{level}', but task '{spec.name}' is a {spec.level}-level task here"
            )
        if spec.metric != fields.get("headline_metric"):
            raise ResultError(
                "run.headline_metric",
                f"is '{fields.get('headline_metric')}', but task '{spec.name}' is ranked by "
                f"'{spec.metric}' here",
            )
    whole_number(fields.get("seed"), "run.seed", minimum=0)
    whole_number(fields.get("pid"), "run.pid", minimum=0, optional=True)
    latest = (at or dt.datetime.now(dt.timezone.utc)) + dt.timedelta(seconds=CLOCK_SKEW)
    for key in ("started_at", "finished_at", "heartbeat_at"):
        when = fields.get(key)
        if when is not None and when > latest:
            raise ResultError(f"run.{key}", f"{when.isoformat()} is in the future")
    started, finished = fields.get("started_at"), fields.get("finished_at")
    if started is not None and finished is not None and finished < started:
        raise ResultError(
            "run.finished_at", f"{finished.isoformat()} is before the start, {started.isoformat()}"
        )
