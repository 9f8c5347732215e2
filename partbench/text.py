"""Text stays text: escaping for every place partbench prints names and messages it did not write.

Encoder, task and dataset names come from plugins, error messages quote file names from
datasets, and both come back out of the database. None of them may be read as markup by the
format they are written into. One function per format:

rich_text      text inside rich console markup (tables, progress bars)
markdown_cell  a cell of a GitHub-flavoured Markdown table
xml_text       text or an attribute value in SVG and HTML
csv_cell       a CSV cell a spreadsheet must not run as a formula

This module imports only rich's markup helper (itself light), so anything may use it.
"""

from __future__ import annotations

import re
from typing import Any

# Characters XML 1.0 admits (https://www.w3.org/TR/xml/#charsets); everything else, including
# lone surrogates and most C0 controls, makes an SVG or XHTML file unreadable.
_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_MARKDOWN_ACTIVE = re.compile(r"[\\`*\[\]~|]")
_LONE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
_NEWLINES = re.compile(r"\r\n|\r|\n|\u2028|\u2029|\x85|\x0b|\x0c")
# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection");
# tab and carriage return are on the list because some programs strip them first.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def rich_text(value: Any) -> str:
    """``value`` escaped for use inside rich markup, ``f"[bold]{rich_text(name)}[/]"``: it
    prints exactly as written (``[/bold]`` stays ``[/bold]``, a trailing backslash does not
    escape the tag after it). Where the whole cell or line is the value, ``rich.text.Text(value)``
    needs no escaping at all."""
    import re

    text = str(value)
    # Backslashes just before a tag are halved when rich reads them; brackets inside get
    # their own escape (rich's rule, applied once, like rich.markup.escape does).
    text = re.sub(r"(\\*)(\[[a-z#/@][^[]*?])", lambda m: m.group(1) * 2 + "\\" + m.group(2), text)
    # Outside tags rich reads every backslash-bracket pair as a bracket: give each one that is
    # not a tag's escape one more backslash to consume.
    text = re.sub(r"(\\+)\[(?![a-z#/@][^[]*?])", lambda m: m.group(1) + "\\[", text)
    # A trailing run of backslashes would meet the closing tag the caller adds: double it.
    trailing = len(text) - len(text.rstrip("\\"))
    return text + "\\" * trailing


def markdown_cell(value: Any) -> str:
    """``value`` for one cell of a Markdown table, shown as the text it is: no ``|`` that ends
    the cell, no newline that ends the row, no HTML, and no emphasis, code or link markers.

    Backslashes are escaped first, so that a value ending in ``\\`` cannot escape the pipe
    that follows it; line breaks become ``<br>``, the only HTML in the result. An underscore
    inside a word (``vit_base``) is left alone: Markdown never reads it as emphasis.
    """
    text = _MARKDOWN_ACTIVE.sub(r"\\\g<0>", str(value))
    text = _LONE_UNDERSCORE.sub(r"\\_", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _NEWLINES.sub("<br>", text)


def xml_text(value: Any) -> str:
    """``value`` as XML character data or a quoted attribute value (SVG, HTML): the five
    special characters escaped and the characters XML forbids dropped."""
    text = _XML_FORBIDDEN.sub("", str(value))
    return (
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&#39;")
        # As references they survive a parser's normalisation (\r\n to \n; in an attribute,
        # any of them to a space), so the text reads back exactly as it was.
        .replace("\r", "&#13;")
        .replace("\n", "&#10;")
        .replace("\t", "&#9;")
    )


def csv_cell(value: Any) -> Any:
    """``value`` for a CSV cell: text that a spreadsheet would run as a formula gets a leading
    ``'`` (it then shows as text); numbers, and text that is just a number, pass unchanged."""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value
