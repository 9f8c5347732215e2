"""Errors a user can cause and fix; the CLI prints them as one line, with no traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class PartbenchError(Exception):
    """A mistake in input, configuration or data that the user can fix."""


class UnknownNameError(PartbenchError, KeyError):
    """A name that no plugin registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown {kind} '{name}'{hint}; known {kind}s: {listing}")
        self.kind, self.name, self.known = kind, name, known

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class DataError(PartbenchError):
    """A dataset file that is missing or malformed; the message names file and line."""


class CheckpointError(PartbenchError):
    """A weights file that cannot be loaded into its encoder."""


class Terminated(BaseException):
    """SIGTERM arrived: unwinds like Ctrl-C, so runs in flight are marked interrupted."""
