"""Suites: named, versioned sets of (task, dataset) pairs that a leaderboard ranks over.

A suite is registered through the ``register_suites`` hook, like encoders, tasks and datasets.
partbench registers two itself (this module is its built-in suites plugin):

synparts  every built-in task on the built-in SynParts data
study     the study's tasks on the study's data (Zhu et al., TMLR 2023)

``partbench leaderboard --suite NAME`` ranks over exactly the suite's pairs and marks encoders
lacking some of them; ``partbench run --suite NAME`` runs the pairs whose data is present and
lists the others with :func:`missing_data`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from partbench.errors import PartbenchError, UnknownNameError
from partbench.hookspecs import hookimpl


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    version: str  # bump when the pairs change: a leaderboard names the version it ranked over
    pairs: tuple[tuple[str, str], ...]  # (task, dataset), in the order the leaderboard shows them
    description: str = ""
    plugin: str = ""  # filled in by the registry

    def __post_init__(self) -> None:
        pairs = tuple((str(t), str(d)) for t, d in self.pairs)
        if not pairs:
            raise ValueError(f"suite '{self.name}': no (task, dataset) pairs")
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"suite '{self.name}': a (task, dataset) pair is listed twice")
        object.__setattr__(self, "pairs", pairs)

    @property
    def datasets(self) -> list[str]:
        """The suite's datasets, in the order of first appearance."""
        return list(dict.fromkeys(d for _, d in self.pairs))

    @property
    def title(self) -> str:
        return f"{self.name} v{self.version}"


BUILTIN_TASKS = (
    "part-retrieval",
    "part-linear",
    "part-attentive",
    "part-seg",
    "object-retrieval",
    "object-linear",
    "object-seg",
)

SYNPARTS = SuiteSpec(
    name="synparts",
    version="1",
    pairs=tuple((t, "synparts") for t in BUILTIN_TASKS),
    description="every built-in task on the built-in SynParts data: runs offline, on a CPU",
)

# The study's evaluation (paper-protocol.md), restricted to pairs whose dataset provides the
# capability the task reads (partbench/datasets/builtin.py): COCO has keypoints only, the
# segmentation sets have label maps only, CIFAR-10 has images only.
STUDY = SuiteSpec(
    name="study",
    version="1",
    pairs=(
        ("part-retrieval", "cub200"),
        ("part-retrieval", "coco-keypoints"),
        ("part-linear", "cub200"),
        ("part-attentive", "cub200"),
        ("part-seg", "ade20k-part"),
        ("part-seg", "pascal-part"),
        ("part-seg", "lip"),
        ("object-retrieval", "cub200"),
        ("object-retrieval", "cifar10"),
        ("object-linear", "cub200"),
        ("object-linear", "cifar10"),
        ("object-seg", "ade20k-object"),
        ("object-seg", "pascal-object"),
    ),
    description="the study's tasks on the study's data: CUB-200-2011, COCO keypoints, "
    "ADE20K, Pascal-Part, LIP and CIFAR-10",
)


@hookimpl
def register_suites(register: Callable[[SuiteSpec], None]) -> None:
    register(SYNPARTS)
    register(STUDY)


def suites(registry: Any) -> dict[str, SuiteSpec]:
    """The registered suites, by name (partbench.plugins collects them like the other specs)."""
    return registry.suites


def suite(registry: Any, name: str) -> SuiteSpec:
    """The suite called ``name``, checked against the registry's tasks and datasets."""
    known = suites(registry)
    if name not in known:
        raise UnknownNameError("suite", name, known)
    spec = known[name]
    check(registry, spec)
    return spec


def check(registry: Any, spec: SuiteSpec) -> None:
    """A suite names tasks and datasets that are registered, and only pairs that can run."""
    problems = []
    for task, dataset in spec.pairs:
        t = registry.tasks.get(task)
        d = registry.datasets.get(dataset)
        if t is None or d is None:
            unknown = " and ".join(
                f"{kind} '{name}'"
                for kind, name, s in (("task", task, t), ("dataset", dataset, d))
                if s is None
            )
            problems.append(f"({task}, {dataset}): no {unknown} is registered")
        elif t.requires not in d.capabilities:
            problems.append(f"({task}, {dataset}): the task reads {t.requires}, which {dataset} lacks")
    if problems:
        where = f" (from plugin '{spec.plugin}')" if spec.plugin else ""
        raise PartbenchError(f"suite '{spec.name}'{where} cannot be used: " + "; ".join(problems))


def suite_pairs(registry: Any, name: str) -> list[tuple[str, str]]:
    """The suite's (task, dataset) pairs, in its order; an error for an unknown or broken suite."""
    return list(suite(registry, name).pairs)


def missing_data(registry: Any, suite_spec: SuiteSpec | str) -> list[tuple[str, str]]:
    """(dataset, where to get it) for each of the suite's datasets whose data is not present."""
    from partbench.paths import data_root

    spec = suite(registry, suite_spec) if isinstance(suite_spec, str) else suite_spec
    missing = []
    for name in spec.datasets:
        ds = registry.datasets.get(name)
        if ds is None or ds.builtin_data:
            continue
        root = data_root(name)
        try:
            present = ds.data_present(root) if ds.data_present is not None else None
        except Exception:  # a broken check counts as absent data, not as a crash
            present = False
        if present is False:
            missing.append((name, _where(name, ds.source, root)))
    return missing


def _where(name: str, source: str, root: Any) -> str:
    try:
        from partbench.datasets.fetch import ARCHIVES
    except Exception:  # fetching is optional here: the published source still says where
        ARCHIVES = {}
    get = f"partbench data fetch {name}" if name in ARCHIVES else (source or "its publisher")
    return f"{get}; put it in {root} or pass --data-root"


def pairs_by_dataset(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    """{dataset: [task, ...]}, for a runner that loads each dataset once."""
    out: dict[str, list[str]] = {}
    for task, dataset in pairs:
        out.setdefault(dataset, []).append(task)
    return out


def describe(registry: Any) -> list[dict[str, Any]]:
    """What ``partbench list suites`` could show: every suite with its pairs."""
    return [
        {
            "name": s.name,
            "version": s.version,
            "plugin": s.plugin,
            "pairs": [list(p) for p in s.pairs],
            "description": s.description,
        }
        for s in suites(registry).values()
    ]


__all__: Sequence[str] = (
    "STUDY",
    "SYNPARTS",
    "SuiteSpec",
    "missing_data",
    "pairs_by_dataset",
    "suite",
    "suite_pairs",
    "suites",
)
