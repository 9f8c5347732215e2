"""Layer curves as a table (terminal: encoder x relative depth) and as an SVG plot (one line
per encoder, score against relative depth): what a ``-o stage=all`` run shows, only where a
board holds runs over several stages of one task."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from partbench.text import xml_text

if TYPE_CHECKING:
    from partbench.ranking.curves import Curve

WIDTH, HEIGHT = 520, 300
MARGIN = {"l": 50, "r": 150, "t": 28, "b": 40}
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def title(curve: Curve) -> str:
    return f"layer curve · {curve.task} on {curve.dataset} ({curve.metric} against relative depth)"


def curve_table(curve: Curve) -> Any:
    """Its title, then a table: rows encoders, columns relative depths (stage + 1) / stages,
    cells the score."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("encoder")
    depths = curve.depths
    for d in depths:
        table.add_column(f"{d:.2f}", justify="right")
    for encoder, points in curve.lines.items():
        at = {p.depth: p.value for p in points}
        table.add_row(encoder, *(f"{at[d]:.1f}" if d in at else "·" for d in depths))
    return Group(Text(title(curve), style="bold"), table)


def curve_svg(curve: Curve) -> str:
    """One line per encoder over [0, 1] of relative depth, the score axis fitted to the points."""
    values = [p.value for pts in curve.lines.values() for p in pts]
    low, high = min(values), max(values)
    pad = max((high - low) * 0.08, 0.5)
    low, high = low - pad, high + pad
    w = WIDTH - MARGIN["l"] - MARGIN["r"]
    h = HEIGHT - MARGIN["t"] - MARGIN["b"]

    def x(depth: float) -> float:
        return MARGIN["l"] + depth * w

    def y(value: float) -> float:
        return MARGIN["t"] + (high - value) / (high - low) * h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="curve" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" data-task="{xml_text(curve.task)}" '
        f'data-dataset="{xml_text(curve.dataset)}">',
        f'<text x="{MARGIN["l"]}" y="18" font-size="13">{xml_text(title(curve))}</text>',
        f'<line x1="{x(0):.1f}" y1="{y(low):.1f}" x2="{x(1):.1f}" y2="{y(low):.1f}" stroke="#444"/>',
        f'<line x1="{x(0):.1f}" y1="{y(low):.1f}" x2="{x(0):.1f}" y2="{y(high):.1f}" stroke="#444"/>',
    ]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        out.append(
            f'<text x="{x(t):.1f}" y="{HEIGHT - MARGIN["b"] + 16}" font-size="11" '
            f'text-anchor="middle">{t:.2f}</text>'
        )
    for v in (low + pad, high - pad):
        out.append(
            f'<text x="{MARGIN["l"] - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.1f}</text>'
        )
    out.append(
        f'<text x="{x(0.5):.1f}" y="{HEIGHT - 6}" font-size="11" text-anchor="middle">'
        "relative depth: (stage + 1) / stages</text>"
    )
    for i, (encoder, points) in enumerate(curve.lines.items()):
        colour = COLOURS[i % len(COLOURS)]
        pts = sorted(points, key=lambda p: p.depth)
        path = " ".join(f"{x(p.depth):.1f},{y(p.value):.1f}" for p in pts)
        out.append(f'<g class="line" data-encoder="{xml_text(encoder)}">')
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for p in pts:
            out.append(
                f'<circle cx="{x(p.depth):.1f}" cy="{y(p.value):.1f}" r="3" fill="{colour}" '
                f'data-stage="{p.stage}" data-depth="{p.depth:.4f}" data-value="{p.value:.4f}">'
                f"<title>{xml_text(encoder)} stage {p.stage}: {p.value:.1f}</title></circle>"
            )
        out.append("</g>")
        ly = MARGIN["t"] + 14 * i + 6
        out.append(
            f'<text x="{WIDTH - MARGIN["r"] + 10}" y="{ly}" font-size="11" fill="{colour}">'
            f"{xml_text(encoder)}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def curves_html(curves: Sequence[Curve]) -> str:
    """The HTML section of a board's layer curves ("" when it has none)."""
    if not curves:
        return ""
    figures = "\n".join(
        f'<figure>{curve_svg(c)}<figcaption class="notes">{xml_text(c.task)} on {xml_text(c.dataset)}: '
        "each encoder's score at each stage it was run on.</figcaption></figure>"
        for c in curves
    )
    return f'<section class="curves"><h3>Layer curves</h3>\n{figures}\n</section>'
