"""The leaderboard as GitHub-flavoured Markdown: a heading and a table per board, notes below.

Every name comes from the database or a plugin, so every cell holding one goes through
partbench.text.markdown_cell (no ``|`` that ends a cell, no newline that ends a row, no HTML,
no emphasis or link markers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from partbench.render import formatting
from partbench.render.notes import notes
from partbench.text import markdown_cell

if TYPE_CHECKING:
    from partbench.ranking.model import Board


def md(value: Any) -> str:
    """``value`` as inert Markdown text, inside or outside a table (partbench.text escapes
    pipes, line breaks, HTML, emphasis, code and link markers)."""
    return markdown_cell(value)


def table(board: Board) -> list[str]:
    level = board.level
    headers = ["rank", "encoder", "family"]
    align = ["---:", "---", "---"]
    for _lv, header in formatting.score_columns(board):
        headers.append(header)
        align.append("---:")
    both = level == "all" and len(board.levels) == 2
    if both:
        headers.append("part awareness")
        align.append("---:")
    for c in board.shown_columns:
        headers.append(formatting.column_label(board, c))
        align.append("---:")
    lines = ["| " + " | ".join(md(h) for h in headers) + " |", "|" + "|".join(align) + "|"]
    # The chance row first, its rank cell empty: a reader meets chance before the scores.
    chance = ["", "chance", ""]
    chance += [formatting.chance_text(board.level_chance(lv)) for lv, _ in formatting.score_columns(board)]
    if both:
        chance.append("")
    chance += [formatting.chance_text(board.column_chance(c.key)) for c in board.shown_columns]
    lines.append("| " + " | ".join(chance) + " |")
    for r in board.rows:
        # Names come from the database or a plugin: escaped. Numbers and marks are partbench's.
        cells = [formatting.rank_text(r, level), md(r.encoder), md(r.family)]
        for lv, _ in formatting.score_columns(board):
            s = r.scores.get(lv)
            cells.append(formatting.score_text(s.value, s.ci, s.at_chance) if s else "–")
        if both:
            cells.append(formatting.awareness(r))
        cells += [
            formatting.score_text(r.tasks.get(c.key), r.task_ci.get(c.key), r.task_at_chance(c.key))
            for c in board.shown_columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(boards: Sequence[Board], heading_level: int = 3) -> str:
    out: list[str] = []
    for b in boards:
        out.append(f"{'#' * heading_level} {md(formatting.heading(b))}")
        out.append("")
        if b.kind == "suite" and b.description:
            out += [md(b.description), ""]
        out += table(b)
        out.append("")
        for line in notes(b):
            out += [md(line), ""]
    return "\n".join(out).rstrip("\n") + "\n"
