"""The hooks a partbench plugin implements. Each hands the plugin a ``register`` callback.

The registry (partbench.plugins) calls each plugin's implementation on its own, through
pluggy, so PARTBENCH_TRACE_PLUGINS=1 shows every call. Names built into partbench cannot be
taken, and a name two plugins register goes to neither: both are named in a warning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("partbench")
hookimpl = pluggy.HookimplMarker("partbench")


@hookspec
def register_encoders(register: Callable[[Any], None]) -> None:
    """Register encoders by calling register(EncoderSpec(...)) once per encoder."""


@hookspec
def register_tasks(register: Callable[[Any], None]) -> None:
    """Register tasks by calling register(TaskSpec(...)) once per task."""


@hookspec
def register_datasets(register: Callable[[Any], None]) -> None:
    """Register datasets by calling register(DatasetSpec(...)) once per dataset."""


@hookspec
def register_suites(register: Callable[[Any], None]) -> None:
    """Register suites by calling register(SuiteSpec(...)) once per suite (partbench.specs)."""
