"""The leaderboard as data: CSV (one row per board and encoder) and JSON (everything, ``to_data``).

CSV cells that come from the database or a plugin go through partbench.text.csv_cell, so no
spreadsheet runs them as formulas; numbers are written as numbers.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from partbench.render import formatting
from partbench.text import csv_cell

if TYPE_CHECKING:
    from partbench.ranking.model import Board, Row, Score

CSV_FIXED = (
    "dataset",  # the board: a dataset, or a suite
    "rank",
    "encoder",
    "rank_text",
    "family",
    "kind",
    "level",
    "score",
    "score_ci_low",
    "score_ci_high",
    "object_score",
    "object_ci_low",
    "object_ci_high",
    "part_score",
    "part_ci_low",
    "part_ci_high",
    "object_rank",
    "part_rank",
    "part_awareness",
    "paired",
    "tied_with",
    "missing",
    # Appended, so the columns above keep their places: chance per score, and whether the
    # score's interval contains or falls below it.
    "score_chance",
    "score_at_chance",
    "object_chance",
    "object_at_chance",
    "part_chance",
    "part_at_chance",
)
PER_TASK = ("", " ci_low", " ci_high", " chance", " at_chance")  # each task's columns: key + suffix


def _ci(ci: Sequence[float | None] | None) -> list[float | None]:
    return list(ci) if ci else [None, None]


def csv_text(boards: Sequence[Board]) -> str:
    keys = list(dict.fromkeys(c.key for b in boards for c in b.shown_columns))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*CSV_FIXED, *[csv_cell(f"{k}{suffix}") for k in keys for suffix in PER_TASK]])
    for b in boards:
        for r in b.rows:
            st = r.standings.get(b.level)
            s = r.scores.get(b.level)
            per_task = []
            for k in keys:
                per_task += [
                    r.tasks.get(k),
                    *_ci(r.task_ci.get(k)),
                    r.task_chance.get(k),
                    r.task_at_chance(k) if k in r.tasks else None,
                ]
            writer.writerow(
                [
                    csv_cell(b.name),
                    r.rank,
                    csv_cell(r.encoder),
                    formatting.rank_text(r, b.level),
                    csv_cell(r.family),
                    b.kind,
                    b.level,
                    s.value if s else None,
                    *_ci(s.ci if s else None),
                    r.object_score,
                    *_ci(r.object_ci),
                    r.part_score,
                    *_ci(r.part_ci),
                    r.object_rank,
                    r.part_rank,
                    r.part_awareness,
                    bool(st and st.paired),
                    csv_cell(";".join(st.tied_with) if st else ""),
                    csv_cell(";".join(r.missing)),
                    *_chance(s),
                    *_chance(r.scores.get("object")),
                    *_chance(r.scores.get("part")),
                    *per_task,
                ]
            )
    return buf.getvalue()


def _chance(s: Score | None) -> list[float | bool | None]:
    return [None, None] if s is None else [s.chance, s.at_chance]


def _finite(x: Any) -> Any:
    """NaN and infinities become null: JSON has no word for them."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def json_text(boards: Sequence[Board]) -> str:
    return json.dumps(_finite(to_data(boards)), indent=2, default=str) + "\n"


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
                    "rank_text": formatting.rank_text(r, b.level),
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
                    "object_chance": _level_chance(r, "object"),
                    "object_at_chance": _level_at_chance(r, "object"),
                    "part_score": r.part_score,
                    "part_ci": r.part_ci,
                    "part_chance": _level_chance(r, "part"),
                    "part_at_chance": _level_at_chance(r, "part"),
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


def _level_chance(row: Row, level: str) -> float | None:
    s = row.scores.get(level)
    return None if s is None else s.chance


def _level_at_chance(row: Row, level: str) -> bool:
    s = row.scores.get(level)
    return bool(s and s.at_chance)
