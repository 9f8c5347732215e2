"""Object score against part score: one panel per board that has both levels, whiskers for the
95% intervals, one colour per family. What the plot leaves out (a board with one level, an
encoder lacking a level's score) is said in a note under it, never dropped silently.

Each point is a ``<g class="point">`` whose ``data-*`` attributes carry the encoder, its rank,
both scores in full, their chance levels and whether each is at chance, so the plot can be read
back by a program. Chance levels are dashed lines (a band where runs differ) where they fall
inside the axes, which stay fitted to the scores; the legend gives them either way. A point
with a score not clearly above chance is drawn hollow, and its title marks that score ``≈``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from partbench.render import formatting
from partbench.text import xml_text

if TYPE_CHECKING:
    from partbench.ranking.model import Board, Row

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
            out.append(f"{formatting.title(b)}: {formatting.levels_text(b)}, not plotted.")
            continue
        missing = [r.encoder for r in b.rows if r.object_score is None or r.part_score is None]
        if missing:
            names = ", ".join(missing)
            out.append(f"{formatting.title(b)}: not plotted (no object or no part score): {names}.")
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
        f'<text x="{m["l"]}" y="{top + 20}" font-size="14">{xml_text(formatting.title(board))}: '
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
    chance = {lv: _chance_span(rows, lv) for lv in ("object", "part")}
    _chance_marks(chance, (x0, x1), (y0, y1), sx, sy, out)
    hollow = _points(board, rows, sx, sy, out)
    _legend(rows, chance, hollow, top, out)


def _points(
    board: Board,
    rows: Sequence[Row],
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    out: list[str],
) -> bool:
    """Each encoder's point with its whiskers and label; whether any is drawn hollow (at chance)."""
    hollow = False
    for r in rows:
        colour = formatting.FAMILY_COLOURS.get(r.family, formatting.OTHER_COLOUR)
        cx, cy = sx(r.object_score), sy(r.part_score)  # type: ignore[arg-type]
        rank = formatting.rank_text(r, board.level)
        obj, part = r.scores["object"], r.scores["part"]
        title = (
            f"{r.encoder} (rank {rank}): object {formatting.score_text(obj.value, obj.ci, obj.at_chance)}, "
            f"part {formatting.score_text(part.value, part.ci, part.at_chance)}"
        )
        out.append(
            f'<g class="point" data-encoder="{xml_text(r.encoder)}" data-rank="{xml_text(rank)}" '
            f'data-object="{r.object_score!r}" data-part="{r.part_score!r}" '
            f'data-object-chance="{_attr(obj.chance)}" data-part-chance="{_attr(part.chance)}" '
            f'data-object-at-chance="{str(obj.at_chance).lower()}" '
            f'data-part-at-chance="{str(part.at_chance).lower()}">'
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
        if obj.at_chance or part.at_chance:
            hollow = True
            out.append(
                f'<circle class="at-chance" cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="#fff" stroke="{colour}"/>'
            )
        else:
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}">{xml_text(r.encoder)}</text></g>')
    return hollow


def _legend(
    rows: Sequence[Row],
    chance: dict[str, tuple[float, float] | None],
    hollow: bool,
    top: float,
    out: list[str],
) -> None:
    """The families' colours and the chance levels, right of the plot."""
    m = MARGIN
    families = list(dict.fromkeys(r.family for r in rows))
    for i, family in enumerate(families):
        colour = formatting.FAMILY_COLOURS.get(family, formatting.OTHER_COLOUR)
        y = top + m["t"] + 14 + 18 * i
        out.append(f'<circle cx="{WIDTH - m["r"] + 16}" cy="{y - 4}" r="4" fill="{colour}"/>')
        out.append(f'<text x="{WIDTH - m["r"] + 26}" y="{y}">{xml_text(family)}</text>')
    legend = [
        "chance (dashed/shaded):",
        f"object {formatting.chance_text(chance['object'])}",
        f"part {formatting.chance_text(chance['part'])}",
    ]
    if hollow:
        legend.append(f"hollow: a score {formatting.CHANCE_MARK} chance")
    y = top + m["t"] + 14 + 18 * (len(families) + 1)
    for i, line in enumerate(legend):
        at = f'x="{WIDTH - m["r"] + 10}" y="{y + 18 * i}"'
        out.append(f'<text class="chance" {at} fill="#555">{xml_text(line)}</text>')


def _attr(v: float | None) -> str:
    return "" if v is None else repr(v)


def _chance_span(rows: Sequence[Row], level: str) -> tuple[float, float] | None:
    known = [s.chance for r in rows if (s := r.scores.get(level)) is not None and s.chance is not None]
    return (min(known), max(known)) if known else None


def _chance_marks(
    chance: dict[str, tuple[float, float] | None],
    xs: tuple[float, float],
    ys: tuple[float, float],
    sx: Callable[[float], float],
    sy: Callable[[float], float],
    out: list[str],
) -> None:
    """Dashed lines at the chance levels (bands where runs differ), clipped to the axes: a
    chance level far below every score is left to the legend rather than squeezing the plot."""
    span = chance["object"]
    if span is not None and span[1] >= xs[0] and span[0] <= xs[1]:
        x0, x1 = sx(max(span[0], xs[0])), sx(min(span[1], xs[1]))
        _chance_area(x0, sy(ys[1]), x1, sy(ys[0]), out)
    span = chance["part"]
    if span is not None and span[1] >= ys[0] and span[0] <= ys[1]:
        y0, y1 = sy(min(span[1], ys[1])), sy(max(span[0], ys[0]))
        _chance_area(sx(xs[0]), y0, sx(xs[1]), y1, out)


def _chance_area(x0: float, y0: float, x1: float, y1: float, out: list[str]) -> None:
    """A shaded band, or a dashed line where the band is under a pixel across."""
    style = 'stroke="#888" stroke-dasharray="4 3"'
    if x1 - x0 < 1:
        out.append(f'<line class="chance" x1="{x0:.1f}" y1="{y0:.1f}" x2="{x0:.1f}" y2="{y1:.1f}" {style}/>')
    elif y1 - y0 < 1:
        out.append(f'<line class="chance" x1="{x0:.1f}" y1="{y1:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" {style}/>')
    else:
        out.append(
            f'<rect class="chance" x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
            f'height="{y1 - y0:.1f}" fill="#888" fill-opacity="0.12"/>'
        )


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
