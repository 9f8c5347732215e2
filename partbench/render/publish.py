"""The leaderboard's committed set: Markdown, JSON, SVG and HTML (and a PNG of the page) of the
same boards, written together into one folder (the repository's ``leaderboard/``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from partbench.files import write_atomic
from partbench.render.browser import screenshot as browser_screenshot
from partbench.render.formats import render
from partbench.render.markdown import md
from partbench.render.markdown import render as boards_markdown

if TYPE_CHECKING:
    from partbench.ranking.model import Board


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
    return browser_screenshot(html, png, width=width)
