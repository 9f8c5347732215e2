"""Suites: named, versioned sets of (task, dataset) pairs that a leaderboard ranks over.

A suite is registered through the ``register_suites`` hook, like encoders, tasks and datasets.
partbench registers three itself (this module is its built-in suites plugin):

synparts  every built-in task on the built-in SynParts data
study     the study's tasks on the study's data (Zhu et al., TMLR 2023)
parts     the field's no-training part measures on real data: keypoint correspondence,
          in-context part segmentation, part discovery

``partbench leaderboard --suite NAME`` ranks over exactly the suite's pairs and marks encoders
lacking some of them; ``partbench run --suite NAME`` runs the pairs whose data is present and
lists the others with :func:`missing_data`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from partbench.datasets.builtin import declared
from partbench.errors import PartbenchError, UnknownNameError
from partbench.hookspecs import hookimpl
from partbench.specs import SuiteSpec

# The study's seven tasks: its claims are decided on these alone (partbench.study).
STUDY_TASKS = (
    "part-retrieval",
    "part-linear",
    "part-attentive",
    "part-seg",
    "object-retrieval",
    "object-linear",
    "object-seg",
)
# The field's training-free dense measures, run beside them.
DENSE_TASKS = ("part-correspondence", "part-seg-nn", "object-seg-nn", "part-discovery")
BUILTIN_TASKS = STUDY_TASKS + DENSE_TASKS
BUILTIN_SUITES = ("synparts", "study", "parts")


def _built_in(name: str, version: str, description: str) -> SuiteSpec:
    """The suite whose pairs the dataset modules declare: each dataset names the tasks this
    suite runs on it; the pairs go task by task (in BUILTIN_TASKS order), datasets in their
    listing order."""
    members = []
    for declaration in declared().values():
        for suite_name, tasks in declaration.suites.items():
            if suite_name not in BUILTIN_SUITES:
                raise PartbenchError(
                    f"dataset '{declaration.name}' declares suite '{suite_name}'; the built-in "
                    f"suites are {', '.join(BUILTIN_SUITES)}"
                )
            unknown = sorted(set(tasks) - set(BUILTIN_TASKS))
            if unknown:
                raise PartbenchError(
                    f"dataset '{declaration.name}' puts task {', '.join(unknown)} in suite "
                    f"'{suite_name}'; the built-in tasks are {', '.join(BUILTIN_TASKS)}"
                )
        members += [
            (BUILTIN_TASKS.index(task), declaration.order, task, declaration.name)
            for task in declaration.suites.get(name, ())
        ]
    return SuiteSpec(name, version, tuple((task, ds) for *_, task, ds in sorted(members)), description)


# 2: the field's dense tasks joined the study's.
SYNPARTS = _built_in(
    "synparts",
    "2",
    "every built-in task on the built-in SynParts data: runs offline, on a CPU",
)

# The study's evaluation (paper-protocol.md), restricted to pairs whose dataset provides the
# capability the task reads: COCO has keypoints only, the segmentation sets have label maps
# only, CIFAR-10 has images only.
STUDY = _built_in(
    "study",
    "1",
    "the study's tasks on the study's data: CUB-200-2011, COCO keypoints, "
    "ADE20K, Pascal-Part, LIP and CIFAR-10",
)


# What the dense-feature papers report for part-awareness, none of it trained: PCK on SPair-71k
# and CUB pairs (DIFT, Probe3D, DINOv2), Hummingbird's in-context segmentation and part
# discovery by clustering (Amir et al.; SCOPS) on every dataset with part masks.
PARTS = _built_in(
    "parts",
    "1",
    "the field's no-training part measures on real data: part-correspondence on SPair-71k and "
    "CUB-200-2011, part-seg-nn and part-discovery on ADE20K-Part, Pascal-Part, LIP and PartImageNet",
)


@hookimpl
def register_suites(register: Callable[[SuiteSpec], None]) -> None:
    register(SYNPARTS)
    register(STUDY)
    register(PARTS)


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
    declaration = declared().get(name)
    fetchable = declaration is not None and declaration.archive is not None
    get = f"partbench data fetch {name}" if fetchable else (source or "its publisher")
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
    "PARTS",
    "STUDY",
    "SYNPARTS",
    "missing_data",
    "pairs_by_dataset",
    "suite",
    "suite_pairs",
    "suites",
)
