"""What the marks under a board's table mean, and its tie groups, as plain sentences: the notes
every text format (terminal, Markdown, HTML) prints beneath the table, escaped its own way."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from partbench.render import formatting

if TYPE_CHECKING:
    from partbench.ranking.model import Board, Comparison, Row


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
    marks = {formatting.rank_text(row, level) for row in board.rows}
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
            f"{formatting.CHANCE_MARK}: not clearly above chance (the score's 95% interval contains or falls "
            "below its chance level)."
        )
    return lines


def _diff_text(c: Comparison) -> str:
    if c.paired and c.low is not None:
        return formatting.difference_text(c.diff, c.low, c.high)
    return f"{formatting.signed(c.diff)} (not paired)"
