"""Object score against part score: one panel per board that has both levels, whiskers for the
95% intervals, one colour per family. What the plot leaves out (a board with one level, an
encoder lacking a level's score) is said in a note under it, never dropped silently.

Each point is a ``<g class="point">`` whose ``data-*`` attributes carry the encoder, its rank
and both scores in full, so the plot can be read back by a program.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from partbench.render import formatting
from partbench.text import xml_text

if TYPE_CHECKING:
    from partbench.leaderboard import Board, Row

WIDTH = 640
PANEL_HEIGHT = 420
MARGIN = {"l": 60, "r": 190, "t": 36, "b": 48}
NOTE_LINE = 18


def _plotted(board: Board) -> list[Row]:
    return [r for r in board.rows if r.object_score is not None and r.part_score is not None]


def left_out(boards: Sequence[Board]) -> list[str]:
    """Sentences naming what the plot does not show."""
    out = []
    for b in boards:
        if not {"object", "part"} <= set(b.levels):
            out.append(f"{b.title}: {b.levels_text}, not plotted.")
            continue
        missing = [r.encoder for r in b.rows if r.object_score is None or r.part_score is None]
        if missing:
            out.append(f"{b.title}: not plotted (no object or no part score): {', '.join(missing)}.")
    return out


def _panel(board: Board, top: float, out: list[str]) -> None:
    rows = _plotted(board)
    m = MARGIN
    xs = [v for r in rows for v in (r.object_score, *(r.object_ci or [])) if v is not None]
    ys = [v for r in rows for v in (r.part_score, *(r.part_ci or [])) if v is not None]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    padx, pady = max((x1 - x0) * 0.1, 1.0), max((y1 - y0) * 0.1, 1.0)
    x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
    pw, ph = WIDTH - m["l"] - m["r"], PANEL_HEIGHT - m["t"] - m["b"]

    def sx(v: float) -> float:
        return m["l"] + (v - x0) / (x1 - x0) * pw

    def sy(v: float) -> float:
        return top + m["t"] + (1 - (v - y0) / (y1 - y0)) * ph

    out.append(
        f'<text x="{m["l"]}" y="{top + 20}" font-size="14">{xml_text(board.title)}: '
        "object against part score (%, 95% intervals)</text>"
    )
    out.append(
        f'<rect x="{m["l"]}" y="{top + m["t"]}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>'
    )
    for i in range(5):
        vx, vy = x0 + (x1 - x0) * i / 4, y0 + (y1 - y0) * i / 4
        out.append(
            f'<text x="{sx(vx):.1f}" y="{top + m["t"] + ph + 16}" text-anchor="middle">{vx:.1f}</text>'
        )
        out.append(f'<text x="{m["l"] - 6}" y="{sy(vy) + 4:.1f}" text-anchor="end">{vy:.1f}</text>')
    out.append(
        f'<text x="{m["l"] + pw / 2}" y="{top + PANEL_HEIGHT - 10}" text-anchor="middle">object score</text>'
    )
    out.append(
        f'<text transform="translate(16 {top + m["t"] + ph / 2}) rotate(-90)" text-anchor="middle">'
        "part score</text>"
    )
    for r in rows:
        colour = formatting.FAMILY_COLOURS.get(r.family, formatting.OTHER_COLOUR)
        cx, cy = sx(r.object_score), sy(r.part_score)  # type: ignore[arg-type]
        rank = r.rank_text(board.level)
        title = (
            f"{r.encoder} (rank {rank}): object {formatting.score_text(r.object_score, r.object_ci)}, "
            f"part {formatting.score_text(r.part_score, r.part_ci)}"
        )
        out.append(
            f'<g class="point" data-encoder="{xml_text(r.encoder)}" data-rank="{xml_text(rank)}" '
            f'data-object="{r.object_score!r}" data-part="{r.part_score!r}">'
            f"<title>{xml_text(title)}</title>"
        )
        if r.object_ci and None not in r.object_ci:
            out.append(
                f'<line x1="{sx(r.object_ci[0]):.1f}" y1="{cy:.1f}" x2="{sx(r.object_ci[1]):.1f}" '  # type: ignore[arg-type]
                f'y2="{cy:.1f}" stroke="{colour}" stroke-opacity="0.5"/>'
            )
        if r.part_ci and None not in r.part_ci:
            out.append(
                f'<line x1="{cx:.1f}" y1="{sy(r.part_ci[0]):.1f}" x2="{cx:.1f}" '  # type: ignore[arg-type]
                f'y2="{sy(r.part_ci[1]):.1f}" stroke="{colour}" stroke-opacity="0.5"/>'  # type: ignore[arg-type]
            )
        out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}">{xml_text(r.encoder)}</text></g>')
    families = list(dict.fromkeys(r.family for r in rows))
    for i, family in enumerate(families):
        colour = formatting.FAMILY_COLOURS.get(family, formatting.OTHER_COLOUR)
        y = top + m["t"] + 14 + 18 * i
        out.append(f'<circle cx="{WIDTH - m["r"] + 16}" cy="{y - 4}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{WIDTH - m["r"] + 26}" y="{y}">{xml_text(family)}</text>')


def render(boards: Sequence[Board]) -> str:
    """The plot as an SVG document; the same text inlines into HTML."""
    panels = [b for b in boards if {"object", "part"} <= set(b.levels) and _plotted(b)]
    notes = left_out(boards)
    if not panels and not notes:
        notes = ["Nothing to plot: no encoder has both an object and a part score."]
    height = PANEL_HEIGHT * len(panels) + NOTE_LINE * len(notes) + (12 if notes else 0)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{max(height, 40)}" '
        f'viewBox="0 0 {WIDTH} {max(height, 40)}" font-family="sans-serif" font-size="12" role="img">',
        "<title>partbench: object score against part score</title>",
    ]
    for i, board in enumerate(panels):
        _panel(board, i * PANEL_HEIGHT, out)
    base = PANEL_HEIGHT * len(panels)
    for i, note in enumerate(notes):
        out.append(
            f'<text class="note" x="10" y="{base + 16 + NOTE_LINE * i}" fill="#555">{xml_text(note)}</text>'
        )
    out.append("</svg>")
    return "\n".join(out) + "\n"
