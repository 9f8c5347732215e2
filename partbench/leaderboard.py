"""The bodies of ``partbench leaderboard`` and ``partbench compare``: rank what the store holds
(partbench.ranking) and show it (partbench.render). The CLI parses, calls one of these, and
prints nothing else."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from partbench.errors import PartbenchError
from partbench.files import write_atomic
from partbench.ranking.boards import build
from partbench.ranking.comparisons import compare as compare_runs
from partbench.render import terminal
from partbench.render.formats import format_for, render


def leaderboard(
    store: Any,
    *,
    level: str = "all",
    dataset: str | None = None,
    suite: str | None = None,
    registry: Any = None,
    fmt: str | None = None,
    output: Path | None = None,
    wide: bool = False,
    console: Any = None,
    out: Callable[[str], None] = lambda text: print(text, end=""),
    note: Callable[[str], None] = print,
) -> None:
    """Rank what ``store`` holds and print it on ``console`` (a table) or through ``out``, or
    write it to ``output`` (then say so through ``note``)."""
    spec = None
    if suite is not None:
        if dataset is not None:
            raise PartbenchError("--suite and --dataset exclude each other: a suite names its datasets")
        from partbench.suites import suite as find_suite

        spec = find_suite(registry, suite)
    boards = build(
        store.runs(status="done"), level=level, dataset=dataset, suite=spec, registry=registry, items=store
    )
    if spec is not None and not any(b.rows for b in boards):
        raise PartbenchError(
            f"no finished runs in suite '{spec.name}' yet; "
            f"try: partbench run --encoder random-vit --suite {spec.name}"
        )
    if not boards:
        raise PartbenchError(
            "no finished runs"
            + (f" on dataset '{dataset}'" if dataset else "")
            + " in the store; try: partbench run --encoder random-vit --task all"
        )
    fmt = fmt or format_for(output)
    if fmt == "table" and output is None and console is not None:
        console.print(terminal.leaderboard(boards, width=console.width, wide=wide))
        return
    # A table written to a file or a pipe: 80 columns (wide: as wide as it needs).
    options = {"width": 200 if wide else 80, "wide": wide} if fmt == "table" else {}
    text = render(boards, fmt, **options)
    if output is None:
        out(text)
        return
    write_atomic(output, text)
    note(f"Wrote {output}")


def compare(
    store: Any,
    a: str,
    b: str,
    *,
    task: str | None = None,
    dataset: str | None = None,
    registry: Any = None,
    fmt: str = "table",
    console: Any = None,
    out: Callable[[str], None] = lambda text: print(text, end=""),
) -> None:
    """Print a minus b, paired, per task and per level, on ``console`` or through ``out``."""
    comps = compare_runs(
        store.runs(status="done"), a, b, task=task, dataset=dataset, items=store, registry=registry
    )
    if fmt == "json":
        rows = [{**vars(c), "tie": c.tie, "verdict": c.verdict} for c in comps]
        out(json.dumps(rows, indent=2) + "\n")
        return
    if console is not None:
        console.print(terminal.comparison(comps, a, b, width=console.width))
    else:
        out(terminal.render_text(terminal.comparison(comps, a, b)))
