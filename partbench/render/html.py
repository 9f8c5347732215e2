"""The leaderboard as one self-contained HTML page: nothing is fetched to open it.

Per board: a sortable table (click a header; click again to reverse), families, scores with
their intervals, each column's chance level in a row beneath the header (scores not clearly
above it carry ``≈`` and the class ``at-chance``), tie groups explained under the table, each
result's provenance (weights, device, versions, date, chance, configuration) in a
``<details>`` under the encoder's name, and the object-against-part scatter plot inlined as SVG.

Everything from the database or a plugin passes through partbench.text.xml_text. As a second
line of defence the page's Content-Security-Policy admits only its own script and style (by
hash) and no network at all, so even markup that slipped through could not run or load.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

from partbench.render import formatting
from partbench.render.curves import curves_html
from partbench.render.notes import notes
from partbench.render.svg import render as svg
from partbench.text import xml_text

if TYPE_CHECKING:
    from partbench.ranking.model import Board, Provenance, Row

STYLE = """
:root { color-scheme: light; --line: #d0d7de; --dim: #57606a; --tie: #fff8c5; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.5rem; margin-bottom: .25rem; }
h2 { font-size: 1.15rem; margin-top: 2.5rem; }
p.meta, .notes { color: var(--dim); }
.scroll { overflow-x: auto; }
table.board { border-collapse: collapse; width: 100%; }
table.board th, table.board td { border-bottom: 1px solid var(--line); padding: .35rem .6rem;
       text-align: left; vertical-align: top; }
table.board th { background: #f6f8fa; white-space: nowrap; }
table.board th button { all: unset; cursor: pointer; font-weight: 600; }
table.board th button:focus-visible { outline: 2px solid #0969da; }
table.board th[aria-sort=ascending] button::after { content: " \\25B2"; }
table.board th[aria-sort=descending] button::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.num .ci { display: block; color: var(--dim); font-size: .85em; }
td.num.at-chance { color: var(--dim); background: #f6f8fa; }
table.board tr.chance th { font-weight: normal; color: var(--dim); background: #fff; }
table.board tr.chance th.num { font-variant-numeric: tabular-nums; }
tr.tied td.rank { background: var(--tie); }
td.rank { font-weight: 600; white-space: nowrap; }
td.encoder summary, td.fam { white-space: nowrap; }
.family { display: inline-block; width: .7em; height: .7em; border-radius: 50%;
          margin-right: .35em; vertical-align: baseline; }
details summary { cursor: pointer; }
table.prov { border-collapse: collapse; margin: .4rem 0 .6rem; font-size: .85em; }
table.prov th, table.prov td { border: 1px solid var(--line); padding: .2rem .4rem; text-align: left;
       vertical-align: top; }
table.prov code { word-break: break-all; }
pre { max-width: 60ch; overflow-x: auto; background: #f6f8fa; padding: .4rem; }
figure { margin: 1.5rem 0; }
"""

# Sorts the rows of a table by the clicked column: numbers by value (data-sort), text
# alphabetically, empty cells last either way; a second click reverses the order.
SCRIPT = """
(function () {
  "use strict";
  function key(cell) {
    var raw = cell.getAttribute("data-sort");
    if (raw === null) { raw = cell.textContent.trim(); }
    var number = Number(raw);
    return { empty: raw === "", number: raw !== "" && isFinite(number), n: number, s: raw.toLowerCase() };
  }
  function sortBy(table, th, index) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var now = th.getAttribute("aria-sort");
    var dir = now === "ascending" ? "descending" :
              now === "descending" ? "ascending" : (th.getAttribute("data-first") || "ascending");
    var sign = dir === "ascending" ? 1 : -1;
    rows.sort(function (a, b) {
      var x = key(a.cells[index]), y = key(b.cells[index]);
      if (x.empty !== y.empty) { return x.empty ? 1 : -1; }
      var c = (x.number && y.number) ? x.n - y.n : x.s.localeCompare(y.s);
      if (c === 0) { return Number(a.getAttribute("data-order")) - Number(b.getAttribute("data-order")); }
      return sign * c;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", dir);
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.board"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, index) {
      th.addEventListener("click", function () { sortBy(table, th, index); });
    });
  });
})();
"""


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _num(v: float | None) -> str:
    return "" if v is None else repr(float(v))


def _score_td(
    v: float | None, ci: Sequence[float | None] | None, at_chance: bool = False, chance: float | None = None
) -> str:
    if v is None:
        return '<td class="num" data-sort="">–</td>'
    ci_text = formatting.interval(ci)
    span = f'<span class="ci">{xml_text(ci_text)}</span>' if ci_text else ""
    attrs = f'class="num" data-sort="{_num(v)}" data-chance="{_num(chance)}"'
    if at_chance:
        why = f"not clearly above chance: the 95% interval contains or falls below {formatting.value(chance)}"
        attrs = attrs.replace('"num"', '"num at-chance"') + f' title="{why}"'
    return f"<td {attrs}>{formatting.value(v, at_chance)}{span}</td>"


def _versions(p: Provenance) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(p.versions.items())) or "–"


def _provenance(board: Board, row: Row) -> str:
    if not row.runs:
        return ""
    lines = [
        '<table class="prov"><tr><th>task</th><th>run</th><th>weights</th><th>device</th>'
        "<th>versions</th><th>finished</th><th>items</th><th>chance</th><th>interval</th>"
        "<th>configuration</th></tr>"
    ]
    for col in board.columns:
        p = row.runs.get(col.key)
        if p is None:
            continue
        config = json.dumps(p.config, indent=1, sort_keys=True, default=str)
        lines.append(
            "<tr>"
            f"<td>{xml_text(formatting.column_label(board, col))}</td>"
            f"<td>{p.run_id}</td>"
            f"<td><code>{xml_text(p.weights_id)}</code></td>"
            f"<td>{xml_text(p.device)}</td>"
            f"<td>{xml_text(_versions(p))}</td>"
            f"<td>{xml_text(p.finished_at or '–')}</td>"
            f"<td>{'–' if p.n_items is None else p.n_items}{'' if p.per_item else ' (not per item)'}</td>"
            f"<td>{formatting.value(p.chance)}</td>"
            f"<td>{xml_text(p.interval or '–')}</td>"
            f"<td><details><summary><code>{xml_text(p.config_hash[:12])}</code></summary>"
            f"<pre>{xml_text(config)}</pre></details></td>"
            "</tr>"
        )
    lines.append("</table>")
    return "".join(lines)


def _board(board: Board, index: int) -> str:
    level = board.level
    both = level == "all" and len(board.levels) == 2
    heads: list[tuple[str, str]] = [("rank", "ascending"), ("encoder", "ascending"), ("family", "ascending")]
    heads += [(header, "descending") for _, header in formatting.score_columns(board)]
    if both:
        heads.append(("part awareness", "descending"))
    heads += [(formatting.column_label(board, c), "descending") for c in board.shown_columns]
    out = [f'<section id="board-{index}">', f"<h2>{xml_text(formatting.heading(board))}</h2>"]
    if board.kind == "suite" and board.description:
        out.append(f'<p class="meta">{xml_text(board.description)}</p>')
    out.append(f'<div class="scroll"><table class="board" data-board="{xml_text(board.name)}"><thead><tr>')
    for i, (label, first) in enumerate(heads):
        sort = ' aria-sort="ascending"' if i == 0 else ""
        button = f'<button type="button">{xml_text(label)}</button>'
        out.append(f'<th scope="col" data-first="{first}"{sort}>{button}</th>')
    out.append("</tr>")
    # Beneath the header, outside the sorted body; th cells, so no reader takes it for a result.
    chance = ["", '<th scope="row">chance</th>', ""]
    chance += [formatting.chance_text(board.level_chance(lv)) for lv, _ in formatting.score_columns(board)]
    if both:
        chance.append("")
    chance += [formatting.chance_text(board.column_chance(c.key)) for c in board.shown_columns]
    out.append(
        '<tr class="chance">'
        + "".join(
            c if c.startswith("<th") else f'<th class="num">{c}</th>' if c else "<th></th>" for c in chance
        )
        + "</tr></thead><tbody>"
    )
    for order, r in enumerate(board.rows):
        st = r.standings.get(level)
        rank_sort = "" if st is None or st.rank is None else str(st.rank)
        colour = formatting.FAMILY_COLOURS.get(r.family, formatting.OTHER_COLOUR)
        cells = [
            f'<td class="rank" data-sort="{rank_sort}">{xml_text(formatting.rank_text(r, level))}</td>',
            f'<td class="encoder" data-sort="{xml_text(r.encoder)}"><details><summary>{xml_text(r.encoder)}'
            f"</summary>{_provenance(board, r)}</details></td>",
            f'<td class="fam" data-sort="{xml_text(r.family)}">'
            f'<span class="family" data-colour="{colour}"></span>'
            f"{xml_text(r.family)}</td>",
        ]
        for lv, _ in formatting.score_columns(board):
            s = r.scores.get(lv)
            cells.append(_score_td(s.value, s.ci, s.at_chance, s.chance) if s else _score_td(None, None))
        if both:
            cells.append(
                f'<td class="num" data-sort="{_num(r.part_awareness)}">{formatting.awareness(r)}</td>'
            )
        cells += [
            _score_td(
                r.tasks.get(c.key), r.task_ci.get(c.key), r.task_at_chance(c.key), r.task_chance.get(c.key)
            )
            for c in board.shown_columns
        ]
        tied = " tied" if r.tied(level) else ""
        out.append(
            f'<tr class="result{tied}" data-order="{order}" data-encoder="{xml_text(r.encoder)}" '
            f'data-rank="{xml_text(formatting.rank_text(r, level))}">' + "".join(cells) + "</tr>"
        )
    out.append("</tbody></table></div>")
    out.append('<div class="notes">' + "".join(f"<p>{xml_text(n)}</p>" for n in notes(board)) + "</div>")
    out.append(curves_html(board.curves))
    out.append("</section>")
    return "\n".join(out)


def _family_style(boards: Sequence[Board]) -> str:
    """A colour rule per family shown (data attributes, since the policy forbids style="")."""
    colours = {
        formatting.FAMILY_COLOURS.get(r.family, formatting.OTHER_COLOUR) for b in boards for r in b.rows
    }
    return "".join(f'.family[data-colour="{c}"] {{ background: {c}; }}\n' for c in sorted(colours))


def render(boards: Sequence[Board], *, title: str = "partbench leaderboard", command: str = "") -> str:
    from partbench import __version__

    style = STYLE + _family_style(boards)
    policy = (
        f"default-src 'none'; style-src {_hash(style)}; script-src {_hash(SCRIPT)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    generated = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
    meta = f"Generated {generated} by partbench {xml_text(__version__)}"
    if command:
        meta += f"; regenerate with <code>{xml_text(command)}</code>"
    sections = "\n".join(_board(b, i) for i, b in enumerate(boards))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>{xml_text(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        f'<header><h1>{xml_text(title)}</h1><p class="meta">{meta}. Click a column header to sort; '
        "click an encoder for where each score came from.</p></header>\n"
        f'<main>\n{sections}\n<figure>{svg(boards)}<figcaption class="notes">Object score against part '
        "score, 95% intervals as whiskers, one colour per family.</figcaption></figure>\n</main>\n"
        f"<script>{SCRIPT}</script>\n</body>\n</html>\n"
    )
