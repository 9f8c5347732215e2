"""Record: each run's lifecycle in the store, one short transaction per step.

claim (running) -> done | failed | interrupted. A result is checked by the store before it is
stored (``partbench.store.validate``): one it refuses fails its run with the reason, instead
of reaching the database.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from partbench.errors import PartbenchError
from partbench.specs import MetricValue
from partbench.store import Store


@dataclass
class Outcome:
    encoder: str
    task: str
    status: str  # done, skipped (already stored or claimed elsewhere), failed
    run_id: int | None = None
    metric: str = ""
    value: MetricValue | None = None
    error: str | None = None
    timing: dict[str, Any] = field(default_factory=dict)
    dataset: str = ""

    @property
    def cached(self) -> bool:
        return self.timing.get("encoder_passes") == 0


def describe_error(exc: BaseException) -> str:
    """One line: a partbench error is already worded for the user; anything else keeps its type."""
    if isinstance(exc, PartbenchError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


class Recorder:
    """The runner's only way to write to the store. ``live`` is the set of runs in flight,
    which the store's heartbeat thread keeps marked alive (Store.keep_alive)."""

    def __init__(
        self,
        store: Store,
        say: Callable[[str], None],
        live: set[int] | None = None,
        *,
        active: bool = True,
    ):
        self.store, self.say = store, say
        self.live: set[int] = live if live is not None else set()
        self.active = active  # only one process of a torchrun group writes

    def claim(self, digest: str, force: bool, **fields: Any) -> int | None:
        if not self.active:
            return None
        run_id = self.store.claim(digest, force=force, **fields)
        if run_id is not None:
            self.live.add(run_id)
        return run_id

    def finish(self, run_id: int, result: Any, timing: Mapping[str, Any]) -> None:
        pending = self.store.finish(
            run_id,
            result.metrics,
            n_items=result.n_items,
            items_per_class=result.items_per_class,
            timing=dict(timing),
            details=result.details,
            items=result.items,
            chance=result.chance,
        )
        self.live.discard(run_id)
        if pending is not None:
            why = self.store.pending.reasons.get(pending, "the database could not be written")
            self.say(
                f"run {run_id}: {why}; the result is kept in {pending} and will be stored by the next command"
            )

    def fail(self, run_id: int, exc: BaseException | str, status: str = "failed") -> str:
        if isinstance(exc, BaseException):
            message = describe_error(exc)
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        else:
            message, trace = exc, None
        if not self.active:
            return message
        self.store.fail(run_id, message, traceback=trace, status=status)
        self.live.discard(run_id)
        return message

    def interrupt(self, run_ids: Sequence[int], exc: BaseException) -> None:
        for run_id in run_ids:
            if run_id in self.live:
                self.fail(run_id, f"interrupted: {type(exc).__name__}", status="interrupted")
