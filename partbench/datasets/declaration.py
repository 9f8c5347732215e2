"""What a dataset module declares: everything partbench knows about one dataset, in one place.

A dataset module (see the package docstring) ends with ``DATASETS``, a tuple of
:class:`Declaration`; registration (builtin.py), ``partbench data fetch`` (fetch.py) and the
built-in suites (partbench/suites.py) read these declarations and keep no table of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from partbench.datasets.layouts import Layout, present
from partbench.specs import DatasetSpec


@dataclass(frozen=True)
class Archive:
    """A dataset's public archive, as ``partbench data fetch`` downloads and unpacks it."""

    url: str
    sha256: str
    size: int | None = None  # bytes, when known: a short download fails before hashing
    top: str | None = None  # the folder inside the archive that becomes the dataset folder


@dataclass(frozen=True)
class Declaration:
    spec: DatasetSpec  # what builtin.py registers
    # Where the dataset comes in `partbench list datasets` and, within one task, in a built-in
    # suite's pairs: declarations are ordered by (order, name) across modules.
    order: int
    layouts: tuple[Layout, ...] = ()  # accepted on-disk layouts, tried in order; errors describe the first
    archive: Archive | None = None  # None: no stable public archive to fetch
    # Built-in suite -> the tasks that suite runs on this dataset (partbench/suites.py orders them).
    suites: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.spec.name


def real_dataset(
    name: str,
    load: Callable[..., Any],
    capabilities: Iterable[str],
    description: str,
    layouts: tuple[Layout, ...],
    order: int,
    archive: Archive | None = None,
    suites: Mapping[str, tuple[str, ...]] | None = None,
) -> Declaration:
    """A dataset read from a folder in one of ``layouts``: its source is the first layout's,
    and its data counts as present when any layout is complete."""
    if not layouts or any(layout.dataset != name for layout in layouts):
        raise ValueError(f"dataset '{name}': needs layouts of its own name")
    spec = DatasetSpec(
        name=name,
        load=load,
        capabilities=frozenset(capabilities),
        description=description,
        source=layouts[0].source,
        data_present=partial(present, layouts),
    )
    return Declaration(spec=spec, order=order, layouts=layouts, archive=archive, suites=dict(suites or {}))
