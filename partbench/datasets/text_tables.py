"""Space-separated annotation tables (CUB's text files), read with file and line of any fault."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from partbench.errors import DataError
from partbench.files import read_regular_text

# Python's int() and float() also take '1_000' and non-ASCII digits; no annotation table
# holds those, so they are malformed here.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?|[+-]?(nan|inf|infinity)", re.I)


class Line:
    """One table row that knows where it came from, so every conversion can say so."""

    def __init__(self, path: Path, number: int, fields: list[str]):
        self.path, self.number, self.fields = path, number, fields

    def where(self) -> str:
        return f"{self.path}, line {self.number}"

    def fail(self, message: str) -> DataError:
        return DataError(f"{self.where()}: {message}")

    def int(self, i: int, what: str, low: int | None = None, high: int | None = None) -> int:
        raw = self.fields[i]
        if not _INT.fullmatch(raw):
            raise self.fail(f"{what} '{raw}' is not an integer")
        try:
            value = int(raw)
        except ValueError:
            raise self.fail(f"{what} '{raw}' is not an integer") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            raise self.fail(f"{what} {value} is out of range {bounds}")
        return value

    def float(self, i: int, what: str) -> float:
        raw = self.fields[i]
        if not _FLOAT.fullmatch(raw):
            raise self.fail(f"{what} '{raw}' is not a number")
        try:
            value = float(raw)
        except ValueError:
            raise self.fail(f"{what} '{raw}' is not a number") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise self.fail(f"{what} '{raw}' is not a finite number")
        return value


def read_lines(path: Path, columns: int, last_has_spaces: bool = False) -> Iterator[Line]:
    """Rows of ``columns`` fields; with ``last_has_spaces`` the last field keeps its spaces
    (CUB's part names, "left wing"). Blank lines are skipped."""
    try:
        text = read_regular_text(path, "a dataset text file", error=DataError)
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read as text ({exc})") from None
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = raw.split(maxsplit=columns - 1) if last_has_spaces else raw.split()
        line = Line(path, number, [f.strip() for f in fields])
        if len(fields) != columns:
            raise line.fail(f"expected {columns} space-separated fields, found {len(fields)}")
        yield line
