"""The leaderboard's output formats: one registry that ``partbench leaderboard --format`` and
``--output``'s file suffixes read.

A format is a module whose function turns ranked boards into text, and one line in ``FORMATS``
below: its name, that function and the file suffixes that ask for it. The function is named
as ``module:function`` and imported when the format is first used: the CLI reads this registry
at start-up, and the renderers (and what they import) would slow every ``partbench --help``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from partbench.ranking.model import Board


@dataclass(frozen=True)
class Format:
    name: str
    renderer: str  # "module:function", the function (boards, **the format's own options) -> text
    suffixes: tuple[str, ...]  # file suffixes that ask for it, lower case
    about: str = ""  # for --help

    def render(self, boards: Sequence[Board], **options: Any) -> str:
        module, function = self.renderer.split(":")
        fn: Callable[..., str] = getattr(importlib.import_module(module), function)
        return fn(boards, **options)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("table", "partbench.render.terminal:leaderboard_text", (".txt",)),
        Format("markdown", "partbench.render.markdown:render", (".md", ".markdown")),
        Format("csv", "partbench.render.tabular:csv_text", (".csv",)),
        Format("json", "partbench.render.tabular:json_text", (".json",)),
        Format("html", "partbench.render.html:render", (".html", ".htm"), "one self-contained page"),
        Format("svg", "partbench.render.svg:render", (".svg",), "object score against part score"),
    )
}
DEFAULT = "table"


def format_for(path: Path | None) -> str:
    """The format a file name asks for; the terminal table otherwise."""
    suffix = path.suffix.lower() if path else ""
    return next((f.name for f in FORMATS.values() if suffix in f.suffixes), DEFAULT)


def render(boards: Sequence[Board], fmt: str, **options: Any) -> str:
    """The boards in ``fmt`` as text; ``options`` are that format's own (``table``: width and
    wide; ``html``: title and command)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; known formats: {', '.join(FORMATS)}")
    return FORMATS[fmt].render(boards, **options)
