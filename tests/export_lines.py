"""Edits of a `partbench export` file, line by line, for the tests that feed an import a broken
or hostile file."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def edit(lines: list[str], number: int, change: Callable[[Any], None]) -> list[str]:
    """``lines`` with line ``number`` (1-based) parsed, changed in place by ``change``, written back."""
    out = list(lines)
    value = json.loads(out[number - 1])
    change(value)
    out[number - 1] = json.dumps(value)
    return out


def put(path: str, value: Any) -> Callable[[Any], None]:
    """A change that sets the dotted ``path`` (list positions as numbers) to ``value``, or
    deletes it when ``value`` is KeyError."""

    def change(line: Any) -> None:
        *parents, last = path.split(".")
        for key in parents:
            line = line[int(key)] if isinstance(line, list) else line[key]
        if value is KeyError:
            del line[last]
        else:
            line[last] = value

    return change
