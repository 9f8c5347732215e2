"""Ranking and rendering.

For each dataset, one finished run of every (encoder, task) counts: the latest of those with
the task's default options and no --limit, else the latest of the rest. A level's score is
the mean of the headline metrics (in percent) of that level's tasks; its interval is the mean
of the tasks' interval bounds. Encoders are ranked within each level by that score; one that
lacks some of the level's tasks is marked and ranked after the complete ones. Ranks whose
intervals overlap the neighbouring rank's are marked, since that difference may not be real.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from partbench.store import Run

LEVELS = ("object", "part")


@dataclass
class Score:
    value: float
    low: float | None
    high: float | None

    def overlaps(self, other: Score) -> bool:
        if None in (self.low, self.high, other.low, other.high):
            return False
        return self.low <= other.high and other.low <= self.high  # type: ignore[operator]


@dataclass
class Row:
    encoder: str
    family: str
    dataset: str
    tasks: dict[str, float] = field(default_factory=dict)
    task_ci: dict[str, list[float | None]] = field(default_factory=dict)
    object_score: float | None = None
    object_ci: list[float | None] | None = None
    part_score: float | None = None
    part_ci: list[float | None] | None = None
    object_rank: int | None = None
    part_rank: int | None = None
    part_awareness: int | None = None  # object rank minus part rank: > 0 ranks higher on parts
    missing: list[str] = field(default_factory=list)
    rank: int | None = None
    overlaps_with: list[str] = field(default_factory=list)

    def score(self, level: str) -> Score | None:
        if level == "all":
            if self.object_score is None or self.part_score is None:
                return None
            lo = [self.object_ci[0], self.part_ci[0]] if self.object_ci and self.part_ci else []
            hi = [self.object_ci[1], self.part_ci[1]] if self.object_ci and self.part_ci else []
            return Score(
                (self.object_score + self.part_score) / 2,
                sum(lo) / 2 if lo and None not in lo else None,  # type: ignore[arg-type]
                sum(hi) / 2 if hi and None not in hi else None,  # type: ignore[arg-type]
            )
        value = getattr(self, f"{level}_score")
        ci = getattr(self, f"{level}_ci") or [None, None]
        return None if value is None else Score(value, ci[0], ci[1])


@dataclass
class Board:
    dataset: str
    level: str
    tasks: dict[str, list[str]]  # level -> task names, each with its headline metric
    metrics: dict[str, str]
    rows: list[Row]


def _rank(rows: list[Row], level: str, task_names: Sequence[str], set_field: str) -> list[Row]:
    """Order rows by their score at ``level``; complete rows first."""

    def complete(r: Row) -> bool:
        return not any(t in r.missing for t in task_names)

    scored = [r for r in rows if r.score(level) is not None]
    ordered = sorted(scored, key=lambda r: (not complete(r), -r.score(level).value, r.encoder))  # type: ignore[union-attr]
    for i, r in enumerate(ordered, start=1):
        setattr(r, set_field, i)
    return ordered + [r for r in rows if r.score(level) is None]


def _preference(run: Run) -> tuple[bool, bool, int]:
    task = (run.config or {}).get("task", {})
    return (task.get("default_options", True), (run.config or {}).get("limit") is None, run.id)


def build(runs: Sequence[Run], level: str = "all", dataset: str | None = None) -> list[Board]:
    latest: dict[tuple[str, str, str], Run] = {}
    for run in runs:
        if run.status != "done" or (dataset and run.dataset != dataset):
            continue
        key = (run.dataset, run.encoder, run.task)
        if key not in latest or _preference(run) > _preference(latest[key]):
            latest[key] = run
    boards = []
    for ds in sorted({k[0] for k in latest}):
        mine = [r for k, r in latest.items() if k[0] == ds]
        tasks = {lv: sorted({r.task for r in mine if r.level == lv}) for lv in LEVELS}
        metrics = {r.task: r.headline_metric for r in mine}
        rows: dict[str, Row] = {}
        for r in mine:
            row = rows.setdefault(r.encoder, Row(r.encoder, r.family, ds))
            head = r.headline
            if head is not None:
                row.tasks[r.task] = head.value
                row.task_ci[r.task] = [head.ci_low, head.ci_high]
        for row in rows.values():
            for lv in LEVELS:
                have = [t for t in tasks[lv] if t in row.tasks]
                row.missing += [t for t in tasks[lv] if t not in row.tasks]
                if have:
                    setattr(row, f"{lv}_score", sum(row.tasks[t] for t in have) / len(have))
                    lows = [row.task_ci[t][0] for t in have]
                    highs = [row.task_ci[t][1] for t in have]
                    setattr(
                        row,
                        f"{lv}_ci",
                        [
                            sum(lows) / len(lows) if None not in lows else None,  # type: ignore[arg-type]
                            sum(highs) / len(highs) if None not in highs else None,  # type: ignore[arg-type]
                        ],
                    )
        all_rows = list(rows.values())
        for lv in LEVELS:
            _rank(all_rows, lv, tasks[lv], f"{lv}_rank")
        for row in all_rows:
            if row.object_rank is not None and row.part_rank is not None:
                row.part_awareness = row.object_rank - row.part_rank
        ranked_tasks = tasks["object"] + tasks["part"] if level == "all" else tasks[level]
        ordered = _rank(all_rows, level, ranked_tasks, "rank")
        if level != "all":
            ordered = [r for r in ordered if r.score(level) is not None]
        for a, b in itertools.pairwise(ordered):
            sa, sb = a.score(level), b.score(level)
            if sa and sb and sa.overlaps(sb):
                a.overlaps_with.append(b.encoder)
                b.overlaps_with.append(a.encoder)
        shown = {lv: tasks[lv] for lv in LEVELS if level in ("all", lv)}
        boards.append(Board(ds, level, shown, metrics, ordered))
    return boards


def _fmt(v: float | None, ci: Sequence[float | None] | None = None) -> str:
    if v is None:
        return "–"
    if ci and None not in ci:
        return f"{v:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"
    return f"{v:.1f}"


def _rank_text(row: Row) -> str:
    if row.rank is None:
        return "–"
    return f"{row.rank}{'≈' if row.overlaps_with else ''}{'*' if row.missing else ''}"


def _columns(board: Board) -> list[str]:
    cols = ["rank", "encoder", "family"]
    if "object" in board.tasks:
        cols.append("object score")
    if "part" in board.tasks:
        cols.append("part score")
    if board.level == "all":
        cols.append("part awareness")
    for lv in board.tasks:
        cols += [f"{t} ({board.metrics[t]})" for t in board.tasks[lv]]
    return cols


def _cells(board: Board, row: Row, plain: bool = False) -> list[str]:
    cells = [_rank_text(row), row.encoder, row.family]
    if "object" in board.tasks:
        cells.append(_fmt(row.object_score, row.object_ci))
    if "part" in board.tasks:
        cells.append(_fmt(row.part_score, row.part_ci))
    if board.level == "all":
        cells.append("–" if row.part_awareness is None else f"{row.part_awareness:+d}")
    for lv in board.tasks:
        cells += [_fmt(row.tasks.get(t), row.task_ci.get(t)) for t in board.tasks[lv]]
    return cells


LEGEND = (
    "Scores in percent with 95% bootstrap intervals. ≈: the interval overlaps a neighbouring "
    "rank's. *: some of the level's tasks are missing (ranked after complete encoders). "
    "Part awareness: object rank minus part rank."
)


def to_markdown(boards: Sequence[Board]) -> str:
    out = []
    for b in boards:
        out.append(f"### {b.dataset} ({'object and part' if b.level == 'all' else b.level} level)\n")
        cols = _columns(b)
        out.append("| " + " | ".join(cols) + " |")
        out.append("|" + "|".join("---" for _ in cols) + "|")
        for row in b.rows:
            cells = [c.replace("|", "\\|") for c in _cells(b, row)]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out.append(LEGEND)
    return "\n".join(out) + "\n"


def to_csv(boards: Sequence[Board]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    tasks = sorted({t for b in boards for lv in b.tasks.values() for t in lv})
    writer.writerow(
        [
            "dataset",
            "rank",
            "encoder",
            "family",
            "object_score",
            "object_ci_low",
            "object_ci_high",
            "part_score",
            "part_ci_low",
            "part_ci_high",
            "object_rank",
            "part_rank",
            "part_awareness",
            "missing",
            "overlaps_with",
            *tasks,
        ]
    )
    for b in boards:
        for r in b.rows:
            oc, pc = r.object_ci or [None, None], r.part_ci or [None, None]
            writer.writerow(
                [
                    b.dataset,
                    r.rank,
                    r.encoder,
                    r.family,
                    r.object_score,
                    oc[0],
                    oc[1],
                    r.part_score,
                    pc[0],
                    pc[1],
                    r.object_rank,
                    r.part_rank,
                    r.part_awareness,
                    ";".join(r.missing),
                    ";".join(r.overlaps_with),
                    *[r.tasks.get(t) for t in tasks],
                ]
            )
    return buf.getvalue()


def to_json(boards: Sequence[Board]) -> str:
    rows: list[dict[str, Any]] = []
    for b in boards:
        for r in b.rows:
            d = asdict(r)
            d["level"] = b.level
            rows.append(d)
    return json.dumps(rows, indent=2) + "\n"


def to_rich(boards: Sequence[Board]):
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    tables: list[Any] = []
    for b in boards:
        table = Table(title=f"{b.dataset} · {b.level} level", title_justify="left")
        for i, col in enumerate(_columns(b)):
            table.add_column(col, justify="left" if i in (1, 2) else "right", no_wrap=i < 2)
        for row in b.rows:
            table.add_row(*_cells(b, row))
        tables.append(table)
    tables.append(Text(LEGEND, style="dim"))
    return Group(*tables)


FAMILY_COLOURS = {
    "supervised": "#d62728",
    "contrastive": "#1f77b4",
    "masked-image-modeling": "#2ca02c",
    "both": "#9467bd",
    "none": "#7f7f7f",
    "unknown": "#8c564b",
}


def to_svg(boards: Sequence[Board], width: int = 620, height: int = 420) -> str:
    """Object score against part score, one panel per dataset, whiskers for the intervals."""
    from xml.sax.saxutils import escape

    panels = [
        b for b in boards if any(r.object_score is not None and r.part_score is not None for r in b.rows)
    ]
    m = {"l": 60, "r": 190, "t": 36, "b": 48}
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height * max(1, len(panels))}" '
        'font-family="sans-serif" font-size="12">'
    ]
    for p, board in enumerate(panels):
        rows = [r for r in board.rows if r.object_score is not None and r.part_score is not None]
        xs = [v for r in rows for v in (r.object_score, *(r.object_ci or [])) if v is not None]
        ys = [v for r in rows for v in (r.part_score, *(r.part_ci or [])) if v is not None]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        padx, pady = max((x1 - x0) * 0.1, 1.0), max((y1 - y0) * 0.1, 1.0)
        x0, x1, y0, y1 = x0 - padx, x1 + padx, y0 - pady, y1 + pady
        top = p * height
        pw, ph = width - m["l"] - m["r"], height - m["t"] - m["b"]

        def sx(v: float) -> float:
            return m["l"] + (v - x0) / (x1 - x0) * pw  # noqa: B023

        def sy(v: float) -> float:
            return top + m["t"] + (1 - (v - y0) / (y1 - y0)) * ph  # noqa: B023

        out.append(
            f'<text x="{m["l"]}" y="{top + 20}" font-size="14">{escape(board.dataset)}: '
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
            f'<text x="{m["l"] + pw / 2}" y="{top + height - 10}" text-anchor="middle">object score</text>'
        )
        out.append(
            f'<text transform="translate(16 {top + m["t"] + ph / 2}) rotate(-90)" text-anchor="middle">'
            "part score</text>"
        )
        for r in rows:
            colour = FAMILY_COLOURS.get(r.family, "#000")
            cx, cy = sx(r.object_score), sy(r.part_score)  # type: ignore[arg-type]
            if r.object_ci and None not in r.object_ci:
                out.append(
                    f'<line x1="{sx(r.object_ci[0]):.1f}" y1="{cy:.1f}" x2="{sx(r.object_ci[1]):.1f}" '
                    f'y2="{cy:.1f}" stroke="{colour}" stroke-opacity="0.5"/>'
                )
            if r.part_ci and None not in r.part_ci:
                out.append(
                    f'<line x1="{cx:.1f}" y1="{sy(r.part_ci[0]):.1f}" x2="{cx:.1f}" '
                    f'y2="{sy(r.part_ci[1]):.1f}" stroke="{colour}" stroke-opacity="0.5"/>'
                )
            out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4" fill="{colour}"/>')
            out.append(f'<text x="{cx + 6:.1f}" y="{cy - 6:.1f}">{escape(r.encoder)}</text>')
        for i, (family, colour) in enumerate(
            (f, c) for f, c in FAMILY_COLOURS.items() if any(r.family == f for r in rows)
        ):
            y = top + m["t"] + 14 + 18 * i
            out.append(f'<circle cx="{width - m["r"] + 16}" cy="{y - 4}" r="4" fill="{colour}"/>')
            out.append(f'<text x="{width - m["r"] + 26}" y="{y}">{escape(family)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


FORMATS = ("table", "markdown", "csv", "json", "svg")


def format_for(path: Path | None) -> str:
    """The format a file name asks for; plain text tables otherwise."""
    suffixes = {".md": "markdown", ".csv": "csv", ".json": "json", ".svg": "svg"}
    return suffixes.get(path.suffix.lower() if path else "", "table")


def render(boards: Sequence[Board], fmt: str) -> str:
    if fmt == "table":
        from rich.console import Console

        console = Console(record=True, width=200, file=io.StringIO())
        console.print(to_rich(boards))
        return console.export_text()
    return {"markdown": to_markdown, "csv": to_csv, "json": to_json, "svg": to_svg}[fmt](boards)
