"""Formatting shared by every output format: numbers, intervals, headings, family words.

Numbers are formatted here once so that every format shows the same rounding; escaping for
each format is partbench.text's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from partbench.ranking.model import Board, Column, Row, Score

CHANCE_MARK = "≈"  # after a score not clearly above chance, in every text format
# Short words where a terminal column is narrow; every other format writes the family whole.
FAMILY_SHORT = {"masked-image-modeling": "MIM"}

FAMILY_COLOURS = {
    "supervised": "#d62728",
    "contrastive": "#1f77b4",
    "masked-image-modeling": "#2ca02c",
    "both": "#9467bd",
    "none": "#7f7f7f",
    "unknown": "#8c564b",
}
OTHER_COLOUR = "#333333"


def value(v: float | None, at_chance: bool = False) -> str:
    """``61.2``; ``17.0≈`` when the score is not clearly above chance."""
    if v is None:
        return "–"
    return f"{v:.1f}{CHANCE_MARK if at_chance else ''}"


def signed(x: float) -> str:
    """A difference in points, signed, to one decimal. One that rounds to 0.0 but is not 0 gets
    one significant digit instead (``-0.04``): an interval's bound printed as ``-0.0`` would
    hide on which side of 0 it lies, which is the one thing a reader looks for."""
    if x != 0 and round(abs(x), 1) == 0:
        return f"{x:+.1g}"
    return f"{x:+.1f}"


def difference_text(diff: float, low: float | None = None, high: float | None = None) -> str:
    """``+1.2 [+0.4, +2.0]``: a difference and, when it has one, its interval."""
    if low is None or high is None:
        return signed(diff)
    return f"{signed(diff)} [{signed(low)}, {signed(high)}]"


def _has(ci: Sequence[float | None] | None) -> bool:
    """An interval with two finite bounds (a resample of items with no valid score has none)."""
    return bool(ci) and all(b is not None and math.isfinite(b) for b in ci)  # type: ignore[union-attr]


def interval(ci: Sequence[float | None] | None) -> str:
    """A compact interval, ``59.8–62.6``; empty when there is none."""
    if not _has(ci):
        return ""
    return f"{ci[0]:.1f}–{ci[1]:.1f}"  # type: ignore[index]


def score_text(v: float | None, ci: Sequence[float | None] | None, at_chance: bool = False) -> str:
    """``61.2 [59.8, 62.6]`` on one line (Markdown, HTML titles); ``17.0≈ [15.1, 18.9]`` at chance."""
    if v is None:
        return "–"
    if not _has(ci):
        return value(v, at_chance)
    return f"{value(v, at_chance)} [{ci[0]:.1f}, {ci[1]:.1f}]"  # type: ignore[index]


def chance_text(span: tuple[float, float] | None) -> str:
    """A column's chance level, ``16.7``, or the range over its runs, ``16.7–20.0``; ``–`` when
    no run stored one. Runs whose levels round alike show one value."""
    if span is None:
        return "–"
    low, high = f"{span[0]:.1f}", f"{span[1]:.1f}"
    return low if low == high else f"{low}–{high}"


def score_of(row: Row, level: str) -> Score | None:
    return row.scores.get(level)


def awareness(row: Row) -> str:
    return "–" if row.part_awareness is None else f"{row.part_awareness:+d}"


def rank_text(row: Row, level: str) -> str:
    """The rank as shown: ``2=`` tied, ``*`` some columns missing, ``†`` not paired."""
    st = row.standings.get(level)
    if st is None or st.rank is None:
        return "–"
    return f"{st.rank}{'=' if st.tied_with else ''}{'' if st.complete else '*'}{'' if st.paired else '†'}"


def title(board: Board) -> str:
    """The board's name; a suite's with its version, ``study v1``."""
    return f"{board.name} v{board.version}" if board.kind == "suite" and board.version else board.name


def levels_text(board: Board) -> str:
    """What the headings say about levels, e.g. "object level only (no part tasks)"."""
    if board.level != "all":
        return f"{board.level} level"
    if len(board.levels) == 2:
        return "object and part levels"
    (only,) = board.levels or ("no",)
    other = "part" if only == "object" else "object"
    return f"{only} level only (no {other} tasks)"


def ranked_by(board: Board) -> str:
    if board.level == "all" and len(board.levels) == 2:
        return "ranked by the mean of the object and part scores"
    return f"ranked by the {board.shown_levels[0] if board.shown_levels else board.level} score"


def heading(board: Board) -> str:
    """``synparts: object and part levels, ranked by the mean of the object and part scores``."""
    what = f"suite {title(board)}" if board.kind == "suite" else title(board)
    return f"{what}: {levels_text(board)}, {ranked_by(board)}"


def column_label(board: Board, col: Column) -> str:
    """A column's name on one line: ``part-retrieval (mAP)``, with the dataset on a suite."""
    where = f" on {col.dataset}" if board.kind == "suite" else ""
    return f"{col.task}{where} ({col.metric})"


def hyphen_lines(text: str) -> list[str]:
    """``part-retrieval`` -> ``["part-", "retrieval"]``: where a narrow header may break."""
    parts = text.split("-")
    return [p + "-" for p in parts[:-1]] + [parts[-1]]


def column_header_lines(board: Board, col: Column) -> list[str]:
    lines = hyphen_lines(col.task)
    if board.kind == "suite":
        lines += hyphen_lines(col.dataset)
    return [*lines, col.metric]


def family_short(family: str) -> str:
    return FAMILY_SHORT.get(family, family)


def score_columns(board: Board) -> list[tuple[str, str]]:
    """(level, header) of the score columns a board's main table shows."""
    if board.level != "all":
        return [(board.level, f"{board.level} score")]
    return [(lv, f"{lv} score") for lv in board.levels]


def size_text(n: float) -> str:
    """A byte count in binary units."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
