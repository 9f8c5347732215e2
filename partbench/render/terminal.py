"""Terminal tables that fit the console: nothing is cut to ``…``.

Each table is built from columns in priority order; a column is added only while the table's
natural width still fits, and every cell may wrap (``overflow="fold"``) rather than be cut.
Scores take two lines (the value, then its interval), which keeps score columns 9 characters
wide; a score not clearly above chance carries a one-character mark, ``17.0≈``, and the
leaderboard's chance row sits beneath the header, a range taking no more than an interval.
The leaderboard's per-task columns (``--wide``, ``--level``) go into further tables, each
repeating rank and encoder, when one table would not fit.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from partbench.render import formatting
from partbench.render.curves import curve_table
from partbench.render.notes import notes

if TYPE_CHECKING:
    from partbench.ranking.model import Board, Comparison, Row

DEFAULT_WIDTH = 80


@dataclass
class Col:
    header: str
    cell: Callable[[Any], Any]  # record -> str or rich Text
    justify: str = "left"
    essential: bool = False  # shown whatever the width (wrapping if it must)
    chance: str | None = None  # the cell of a chance row beneath the header (tables that have one)


def _measure_console(width: int) -> Any:
    from rich.console import Console

    return Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)


class _Cells:
    """Each column's cells, made once: choosing columns measures the widest cell of each
    column, never the whole table again (which would be slow for thousands of runs)."""

    def __init__(self, records: Sequence[Any]):
        self.records = records
        self._cells: dict[int, list[Any]] = {}

    def of(self, col: Col) -> list[Any]:
        if id(col) not in self._cells:
            self._cells[id(col)] = [_as_text(col.cell(r)) for r in self.records]
        return self._cells[id(col)]

    def widest(self, col: Col) -> Any:
        from rich.text import Text

        return max(self.of(col), key=_cell_width, default=Text(""))


def _as_text(cell: Any) -> Any:
    from rich.text import Text

    return cell if isinstance(cell, Text) else Text(plain_lines(cell))


def _cell_width(text: Any) -> int:
    from rich.cells import cell_len

    return max((cell_len(line) for line in text.plain.split("\n")), default=0)


def _table(
    cols: Sequence[Col], records: Sequence[Any], title: str | None = None, cells: _Cells | None = None
) -> Any:
    from rich import box
    from rich.table import Table
    from rich.text import Text

    cells = cells or _Cells(records)
    table = Table(
        title=None if title is None else Text(plain(title), style="bold"),
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        padding=(0, 1),
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    for c in cols:
        # Headers and titles are Text: a name like "[bold]" from a plugin is not markup.
        table.add_column(Text(plain_lines(c.header)), justify=c.justify, overflow="fold")  # type: ignore[arg-type]
    if any(c.chance is not None for c in cols):
        table.add_row(*[_text(c.chance or "", "dim") for c in cols], end_section=True)
    columns = [cells.of(c) for c in cols]
    for i in range(len(records)):
        table.add_row(*[column[i] for column in columns])
    return table


def natural_width(renderable: Any) -> int:
    """How wide ``renderable`` would be with no limit."""
    from rich.measure import Measurement

    console = _measure_console(10_000)
    return Measurement.get(console, console.options, renderable).maximum


def _width(cols: Sequence[Col], cells: _Cells) -> int:
    """The natural width of a table of ``cols``: that of its header and widest cells."""
    probe = _Cells([None])
    probe._cells = {id(c): [cells.widest(c)] for c in cols}
    return natural_width(_table(cols, [None], cells=probe))


def fit(cols: Sequence[Col], records: Sequence[Any], width: int, title: str | None = None) -> Any:
    """A table of the essential columns, plus the others (in order) while it stays in ``width``."""
    cells = _Cells(records)
    chosen = [c for c in cols if c.essential]
    for c in cols:
        if c.essential:
            continue
        if _width([x for x in cols if x in chosen or x is c], cells) <= width:
            chosen.append(c)
    return _table([c for c in cols if c in chosen], records, title, cells)


_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(s: Any) -> str:
    """``s`` safe for a terminal: control characters (escape sequences among them) shown as
    ``\\xNN``, never sent to the terminal; tabs and line breaks become spaces."""
    text = str(s).replace("\t", " ").replace("\r\n", " ").replace("\n", " ")
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def plain_lines(s: Any) -> str:
    """As :func:`plain`, keeping the line breaks partbench put in (headers)."""
    return "\n".join(plain(line) for line in str(s).split("\n"))


def _text(s: str, style: str | None = None) -> Any:
    """A cell that rich prints as it is: no markup is read from it, no control character kept."""
    from rich.text import Text

    return Text(plain_lines(s), style=style or "")


def _score_cell(v: float | None, ci: Sequence[float | None] | None, at_chance: bool = False) -> Any:
    from rich.text import Text

    if v is None:
        return Text("–")
    text = Text(formatting.value(v, at_chance))
    ci_text = formatting.interval(ci)
    if ci_text:
        text.append("\n" + ci_text, style="dim")
    return text


# --------------------------------------------------------------------------- leaderboard


def _main_cols(board: Board) -> list[Col]:
    level = board.level
    cols = [
        Col("rank", lambda r: _text(formatting.rank_text(r, level)), "right", essential=True, chance=""),
        Col("encoder", lambda r: _text(r.encoder), essential=True, chance="chance"),
        Col("family", lambda r: _text(formatting.family_short(r.family)), essential=True, chance=""),
    ]
    for lv, header in formatting.score_columns(board):
        cols.append(
            Col(
                header.replace(" ", "\n"),
                lambda r, lv=lv: _score_cell(*(_sc(r, lv))),
                "right",
                essential=True,
                chance=formatting.chance_text(board.level_chance(lv)),
            )
        )
    if level == "all" and len(board.levels) == 2:
        cols.append(
            Col(
                "part\nawareness",
                lambda r: _text(formatting.awareness(r)),
                "right",
                essential=True,
                chance="",
            )
        )
    return cols


def _sc(row: Row, level: str) -> tuple[float | None, list[float | None] | None, bool]:
    s = row.scores.get(level)
    return (None, None, False) if s is None else (s.value, s.ci, s.at_chance)


def _task_cols(board: Board) -> list[Col]:
    return [
        Col(
            "\n".join(formatting.column_header_lines(board, c)),
            lambda r, k=c.key: _score_cell(r.tasks.get(k), r.task_ci.get(k), r.task_at_chance(k)),
            "right",
            chance=formatting.chance_text(board.column_chance(c.key)),
        )
        for c in board.shown_columns
    ]


def _chunks(head: list[Col], extra: list[Col], cells: _Cells, width: int) -> list[list[Col]]:
    """Split ``extra`` into groups that each fit in ``width`` beside ``head``."""
    groups: list[list[Col]] = []
    current: list[Col] = []
    for c in extra:
        if current and _width([*head, *current, c], cells) > width:
            groups.append(current)
            current = []
        current.append(c)
    if current:
        groups.append(current)
    return groups


def leaderboard(boards: Sequence[Board], *, width: int | None = None, wide: bool = False) -> Any:
    """One table per board (plus continuation tables for per-task columns), then its notes."""
    from rich.console import Group
    from rich.text import Text

    width = width or DEFAULT_WIDTH
    parts: list[Any] = []
    for board in boards:
        title = formatting.heading(board)
        main = _main_cols(board)
        per_task = _task_cols(board) if (wide or board.level != "all") else []
        rows = board.rows
        cells = _Cells(rows)
        together = [*main, *per_task]
        parts.append(Text(plain(title), style="bold"))
        if _width(together, cells) <= width:
            parts.append(_table(together, rows, cells=cells))
        else:
            parts.append(_table(main, rows, cells=cells))
            head = main[:2]  # rank and encoder, so each continuation reads on its own
            for group in _chunks(head, per_task, cells, width):
                parts.append(_table([*head, *group], rows, f"{formatting.title(board)}: per task", cells))
        legend = notes(board)
        if any(r.family in formatting.FAMILY_SHORT for r in rows):
            legend.append("MIM: masked image modeling; both: contrastive and MIM.")
        parts.append(Text("\n".join(plain(line) for line in legend), style="dim"))
        parts.append(Text(""))
        parts += [curve_table(c) for c in board.curves]
    return Group(*parts)


def leaderboard_text(boards: Sequence[Board], *, width: int | None = None, wide: bool = False) -> str:
    """The ``table`` format: the leaderboard as printed in a terminal ``width`` columns wide
    (80 by default), as plain text."""
    return render_text(leaderboard(boards, width=width, wide=wide), width=width or DEFAULT_WIDTH)


# --------------------------------------------------------------------------- compare


def comparison(comps: Sequence[Comparison], a: str, b: str, *, width: int | None = None) -> Any:
    """``partbench compare``: one line per task, then per level, with the paired interval."""
    from rich.console import Group
    from rich.text import Text

    width = width or DEFAULT_WIDTH

    def what(c: Comparison) -> str:
        if c.metric == "score":
            return f"{c.level} level\n({len(c.columns)} tasks)"
        return f"{c.columns[0]}\n({c.metric})"

    def diff(c: Comparison) -> Any:
        text = Text(formatting.signed(c.diff))
        if c.paired and c.low is not None:
            text.append(f"\n[{formatting.signed(c.low)}, {formatting.signed(c.high)}]", style="dim")
        else:
            text.append("\nnot paired", style="dim")
        return text

    def verdict(c: Comparison) -> Any:
        # The encoders' names head the table as A and B: the verdict says which, briefly.
        said = plain(c.verdict)
        if not c.tie:
            said = said.replace(plain(c.a if c.diff > 0 else c.b), "A" if c.diff > 0 else "B", 1)
        text = Text(said)
        if not c.paired and c.reason:
            text.append(f"\n({plain(c.reason)})", style="dim")
        return text

    cols = [
        Col("dataset", lambda c: _text(c.dataset), essential=True),
        Col("task", lambda c: _text(what(c)), essential=True),
        Col("A", lambda c: _text(formatting.value(c.a_value)), "right", essential=True),
        Col("B", lambda c: _text(formatting.value(c.b_value)), "right", essential=True),
        Col("difference\n95% interval", diff, "right", essential=True),
        Col("verdict", verdict, essential=True),
        Col("items", lambda c: _text(f"{c.n_items:,}" if c.n_items else "–"), "right"),
    ]
    legend = Text(
        f"A: {plain(a)}; B: {plain(b)}. Difference: A minus B, in points, with the 95% interval "
        "of a paired bootstrap (the same resampled items for both). An interval containing 0: "
        "no clear difference. Not paired: no per-item results (older runs) or different items; "
        "the verdict then says whether the stored intervals overlap.",
        style="dim",
    )
    return Group(fit(cols, comps, width, title=f"A ({a}) against B ({b})"), legend)


# --------------------------------------------------------------------------- runs, tasks


def _run_score(r: dict[str, Any]) -> Any:
    from rich.text import Text

    m = (r.get("metrics") or {}).get(r.get("headline") or "")
    if not m:
        return Text("–")
    text = Text(f"{plain(r['headline'])} {m['value']:.1f}")
    ci = m.get("ci") or [None, None]
    if ci[0] is not None:
        text.append(f"\n{ci[0]:.1f}–{ci[1]:.1f}", style="dim")
    return text


def _all_metrics(r: dict[str, Any]) -> str:
    return "\n".join(
        f"{k} {v['value']:.1f}" + (f" [{v['ci'][0]:.1f}, {v['ci'][1]:.1f}]" if v["ci"][0] is not None else "")
        for k, v in (r.get("metrics") or {}).items()
    )


def _when(r: dict[str, Any]) -> str:
    when = r.get("finished_at") or r.get("started_at")
    if when is None:
        return "–"
    text = when.isoformat(sep=" ", timespec="minutes") if hasattr(when, "isoformat") else str(when)
    return text[:16]


def runs_table(records: Sequence[dict[str, Any]], *, width: int | None = None, wide: bool = False) -> Any:
    """``partbench runs``: id, encoder, task, dataset, status and score always; items, speed,
    device and date while they fit; ``wide`` adds every metric, the error and the hash."""
    width = width or DEFAULT_WIDTH

    def status(r: dict[str, Any]) -> Any:
        if wide and r.get("error"):
            return _text(f"{r['status']}: {r['error']}")
        return _text(str(r["status"]))

    def ips(r: dict[str, Any]) -> str:
        v = (r.get("timing") or {}).get("images_per_second")
        return f"{v:.0f}" if v else "–"

    cols = [
        Col("id", lambda r: _text(str(r["id"])), "right", essential=True),
        Col("encoder", lambda r: _text(r["encoder"]), essential=True),
        Col("task", lambda r: _text(r["task"]), essential=True),
        Col("dataset", lambda r: _text(r["dataset"]), essential=True),
        Col("status", status, essential=True),
        Col("score", _run_score, "right", essential=True),
        Col("items", lambda r: _text(str(r.get("n_items") or "–")), "right"),
        Col("images/s", lambda r: _text(ips(r)), "right"),
        Col("device", lambda r: _text(str(r.get("device") or "–"))),
        Col("finished", lambda r: _text(_when(r))),
    ]
    if wide:
        cols += [
            Col("metrics", lambda r: _text(_all_metrics(r) or "–")),
            Col("config", lambda r: _text(str(r.get("config_hash") or "")[:12])),
        ]
        for c in cols:
            c.essential = True
        from rich.console import Group

        return Group(_table(cols, records, "partbench runs"))
    from rich.console import Group
    from rich.text import Text

    return Group(
        fit(cols, records, width, "partbench runs"),
        Text("Every column: partbench runs --wide; one run in full: partbench runs --id N", style="dim"),
    )


def _options(item: dict[str, Any]) -> str:
    opts = item.get("options") or {}
    return "\n".join(f"{k}={_plain(o.get('default'))}" for k, o in opts.items()) or "–"


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def tasks_table(items: Sequence[dict[str, Any]], *, width: int | None = None) -> Any:
    """``partbench list tasks``: one option per line (key=default); the plugin while it fits."""
    width = width or DEFAULT_WIDTH
    cols = [
        Col("name", lambda i: _text(i["name"]), essential=True),
        Col("level", lambda i: _text(i["level"]), essential=True),
        Col("metric", lambda i: _text(i["metric"]), essential=True),
        Col("needs", lambda i: _text(i["requires"]), essential=True),
        Col("options (default)", lambda i: _text(_options(i)), essential=True),
        Col("plugin", lambda i: _text(i.get("plugin") or "")),
    ]
    return fit(cols, items, width, "partbench tasks")


def outcomes_table(outcomes: Sequence[Any], *, width: int | None = None) -> Any:
    """``partbench run``'s summary (runner Outcomes): encoder, task, status and score always;
    speed and run id while they fit. A failure's reason is printed above it in full."""
    from rich.text import Text

    width = width or DEFAULT_WIDTH

    def score(o: Any) -> Any:
        v = getattr(o, "value", None)
        if v is None:
            return Text("–")
        text = Text(f"{plain(o.metric)} {v.value:.1f}".strip())
        if v.ci_low is not None:
            text.append(f"\n{v.ci_low:.1f}–{v.ci_high:.1f}", style="dim")
        return text

    def status(o: Any) -> Any:
        words = {
            "done": ("done" + (" (cached features)" if getattr(o, "cached", False) else ""), "green"),
            "skipped": ("stored (--force reruns)" if o.error is None else "running elsewhere", ""),
            "failed": ("failed (reason above)", "red"),
        }.get(o.status, (o.status, ""))
        return _text(*words)

    def speed(o: Any) -> str:
        ips = (getattr(o, "timing", None) or {}).get("end_to_end_images_per_second")
        return f"{ips:.0f}" if ips else ("cached" if getattr(o, "cached", False) else "–")

    cols = [
        Col("encoder", lambda o: _text(o.encoder), essential=True),
        Col("task", lambda o: _text(o.task), essential=True),
        Col("score", score, "right", essential=True),
        Col("status", status, essential=True),
        Col("images/s", lambda o: _text(speed(o)), "right"),
        Col("run", lambda o: _text(str(o.run_id or "–")), "right"),
        Col("dataset", lambda o: _text(getattr(o, "dataset", "") or "–")),
    ]
    return fit(cols, outcomes, width, "partbench run")


def render_text(renderable: Any, width: int = DEFAULT_WIDTH) -> str:
    """What ``renderable`` prints in a terminal ``width`` columns wide, as plain text."""
    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True, color_system=None)
    console.print(renderable)
    return console.export_text()
