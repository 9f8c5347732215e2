"""The leaderboard's output formats, one module each, all from the same boards:

table     partbench.render.terminal  (rich; fits the console, 80 columns by default)
markdown  partbench.render.markdown
csv/json  partbench.render.tabular
svg       partbench.render.svg       (object against part score)
html      partbench.render.html      (one self-contained page; screenshot via render.browser)

``write_all`` writes the committed set (Markdown, JSON, SVG, HTML, optionally a PNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from partbench.leaderboard import Board

FORMATS = ("table", "markdown", "csv", "json", "html", "svg")
_SUFFIXES = {
    ".md": "markdown",
    ".markdown": "markdown",
    ".csv": "csv",
    ".json": "json",
    ".svg": "svg",
    ".html": "html",
    ".htm": "html",
    ".txt": "table",
}


def format_for(path: Path | None) -> str:
    """The format a file name asks for; the terminal table otherwise."""
    return _SUFFIXES.get(path.suffix.lower() if path else "", "table")


def render(
    boards: Sequence[Board], fmt: str, *, width: int | None = None, wide: bool = False, **kwargs: Any
) -> str:
    """The boards in ``fmt`` as text (``table``: as printed at ``width`` columns)."""
    if fmt == "table":
        from partbench.render.terminal import leaderboard, render_text

        return render_text(leaderboard(boards, width=width, wide=wide), width=width or 80)
    if fmt == "markdown":
        from partbench.render.markdown import render as markdown

        return markdown(boards)
    if fmt == "csv":
        from partbench.render.tabular import csv_text

        return csv_text(boards)
    if fmt == "json":
        from partbench.render.tabular import json_text

        return json_text(boards)
    if fmt == "svg":
        from partbench.render.svg import render as svg

        return svg(boards)
    if fmt == "html":
        from partbench.render.html import render as html

        return html(boards, **kwargs)
    raise ValueError(f"unknown format '{fmt}'; known formats: {', '.join(FORMATS)}")


def write_all(
    boards: Sequence[Board],
    output_dir: Path,
    command: str,
    *,
    stem: str = "mini",
    title: str = "partbench leaderboard",
    markdown: str | None = None,
    screenshot: bool = False,
) -> list[Path]:
    """Write ``{stem}.md``, ``.json``, ``.svg`` and ``.html`` (and ``.png`` with ``screenshot``)
    into ``output_dir``; the paths written.

    ``command`` is the command that regenerates them, quoted in the Markdown and the page.
    ``markdown`` replaces the generated Markdown (a study report that embeds the boards).
    """
    from partbench.files import write_atomic
    from partbench.render.markdown import md
    from partbench.render.markdown import render as boards_markdown

    output_dir.mkdir(parents=True, exist_ok=True)
    if markdown is None:
        markdown = f"# {md(title)}\n\nRegenerate with\n\n    {command}\n\n" + boards_markdown(boards)
    texts = {
        f"{stem}.md": markdown,
        f"{stem}.json": render(boards, "json"),
        f"{stem}.svg": render(boards, "svg"),
        f"{stem}.html": render(boards, "html", title=title, command=command),
    }
    written = []
    for name, text in texts.items():
        write_atomic(output_dir / name, text)
        written.append(output_dir / name)
    if screenshot:
        written.append(take_screenshot(output_dir / f"{stem}.html", output_dir / f"{stem}.png"))
    return written


def take_screenshot(html: Path, png: Path, *, width: int = 1280) -> Path:
    """A PNG of the whole page ``html``, rendered by headless Chromium."""
    from partbench.render.browser import screenshot

    return screenshot(html, png, width=width)
