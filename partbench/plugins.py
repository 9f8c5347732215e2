"""The one plugin manager. Built-in and third-party plugins load the same way, through the
``partbench`` entry-point group, one at a time; a plugin that fails is reported and skipped.

Names are settled the same whatever the discovery order: the built-in distribution
(``partbench``) always keeps its names; when two third-party distributions register the same
name, neither gets it and both are named in a warning. Each distribution's version is kept,
for the runs' provenance and ``partbench list plugins``.

Each plugin may declare the plugin API version it was written for (``PARTBENCH_API``, see
partbench.api_versions); one written for the previous version is adapted as it registers, one
that cannot be is refused then, with a message that says what changed.

PARTBENCH_LOAD_PLUGINS  comma-separated distribution names to load (default: all)
PARTBENCH_TRACE_PLUGINS set to 1 to print every hook call to stderr
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

import pluggy

from partbench import hookspecs
from partbench.api_versions import API_VERSION, PluginAPIError, adapt, declared_version, version_text
from partbench.errors import UnknownNameError
from partbench.specs import DatasetSpec, EncoderSpec, SuiteSpec, TaskSpec

GROUP = "partbench"
BUILTIN = "partbench"  # the distribution whose names no plugin can take
# What --task accepts besides task names: no task may be called this.
TASK_SELECTORS = ("part", "object", "all")


@dataclass
class Registry:
    """Everything the loaded plugins registered, by name, with who supplied it."""

    encoders: dict[str, EncoderSpec] = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    suites: dict[str, SuiteSpec] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # plugins that failed, in words
    versions: dict[str, str] = field(default_factory=dict)  # distribution -> its version
    plugin_problems: dict[str, list[str]] = field(default_factory=dict)  # distribution -> problems
    api_versions: dict[str, str] = field(default_factory=dict)  # distribution -> plugin API, in words
    adapted: dict[str, list[str]] = field(default_factory=dict)  # distribution -> items behind an adapter

    def encoder(self, name: str) -> EncoderSpec:
        if name in self.encoders and not self.encoders[name].is_prefix:
            return self.encoders[name]
        for spec in self.encoders.values():
            if spec.is_prefix and name.startswith(spec.name) and len(name) > len(spec.name):
                return spec
        raise UnknownNameError("encoder", name, self.encoder_names())

    def encoder_names(self) -> list[str]:
        return [s.display_name for s in self.encoders.values()]

    def task(self, name: str) -> TaskSpec:
        if name not in self.tasks:
            raise UnknownNameError("task", name, [*list(self.tasks), *TASK_SELECTORS])
        return self.tasks[name]

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise UnknownNameError("dataset", name, self.datasets)
        return self.datasets[name]

    def plugin_version(self, spec: EncoderSpec | TaskSpec | DatasetSpec) -> str:
        """The version of the distribution that registered ``spec`` ("" when not known), for
        the run's provenance and its configuration hash."""
        return self.versions.get(spec.plugin, "")

    def plugins(self) -> list[str]:
        """Every distribution seen, the built-in one first."""
        names = set(self.versions) | set(self.plugin_problems)
        for specs in (self.encoders, self.tasks, self.datasets, self.suites):
            names.update(s.plugin for s in specs.values())
        return sorted(names, key=lambda n: (n != BUILTIN, n))

    def _problem(self, dist: str, message: str) -> None:
        self.problems.append(message)
        self.plugin_problems.setdefault(dist, []).append(message)


def _wanted(dist_name: str) -> bool:
    allow = os.environ.get("PARTBENCH_LOAD_PLUGINS")
    if allow is None:
        return True
    return dist_name in {n.strip() for n in allow.split(",") if n.strip()}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, plus what the registry needs to know about each distribution."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.versions: dict[str, str] = {}  # distribution -> version
        self.failures: list[tuple[str, str]] = []  # (distribution, problem)
        self.tracing = False


def _dist_of(plugin_name: str) -> str:
    return plugin_name.split(":")[0]


def _version_of(dist: str) -> str:
    try:
        return version(dist)
    except (PackageNotFoundError, ValueError):
        return "unknown"


def plugin_manager(
    extra: Iterable[tuple[str, object] | tuple[str, object, str]] = (),
) -> tuple[PluginManager, list[str]]:
    """Build a manager with every entry-point plugin, plus ``extra`` (name, module[, version])."""
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    problems: list[str] = []
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else ep.name
        if not _wanted(dist):
            continue
        pm.versions.setdefault(dist, getattr(ep.dist, "version", None) or "unknown")
        name = f"{dist}:{ep.name}"
        if pm.has_plugin(name):  # the same distribution seen twice on sys.path
            continue
        try:
            pm.register(ep.load(), name=name)
        except Exception as exc:  # a broken plugin must not take the tool down
            message = f"plugin '{name}' failed to load and was skipped: {exc!r}"
            problems.append(message)
            pm.failures.append((dist, message))
    for entry in extra:
        name, obj = entry[0], entry[1]
        pm.versions.setdefault(
            _dist_of(name), str(entry[2]) if len(entry) > 2 else _version_of(_dist_of(name))
        )
        pm.register(obj, name=name)
    if os.environ.get("PARTBENCH_TRACE_PLUGINS") == "1":
        pm.tracing = True

        def before(hook_name: str, impls: list, kwargs: dict) -> None:
            print(f"partbench: {hook_name} -> {[i.plugin_name for i in impls]}", file=sys.stderr)

        def after(outcome: Any, hook_name: str, impls: list, kwargs: dict) -> None:
            if outcome.exception is not None:
                who = [i.plugin_name for i in impls]
                print(f"partbench: {hook_name} <- {who} raised {outcome.exception!r}", file=sys.stderr)

        pm.add_hookcall_monitoring(before, after)
    return pm, problems


_KINDS = {
    "register_encoders": "encoder",
    "register_tasks": "task",
    "register_datasets": "dataset",
    "register_suites": "suite",
}


def _collect(
    pm: pluggy.PluginManager,
    hook: str,
    kind: type,
    into: dict,
    reg: Registry,
    apis: dict[str, int | None],
) -> None:
    """Call ``hook`` on each plugin on its own, through pluggy (so tracing sees every call),
    then settle who gets each name.

    One call per plugin attributes every item to its distribution and keeps one plugin's
    mistake from losing the others' items. Names are settled after all calls, so the outcome
    does not depend on the order plugins were discovered in. ``apis`` holds each plugin's
    declared API version; a plugin missing from it was refused and is not called.
    """
    word = _KINDS[hook]
    offers: dict[str, dict[str, Any]] = {}  # name -> distribution -> item
    plugins = pm.get_plugins()
    for impl in getattr(pm.hook, hook).get_hookimpls():
        if impl.plugin_name not in apis:
            continue
        dist = _dist_of(impl.plugin_name)
        api = apis[impl.plugin_name]
        registered: list[str] = []

        def register(
            item: Any, _dist: str = dist, _registered: list = registered, _api: int | None = api
        ) -> None:
            if not isinstance(item, kind):
                raise TypeError(f"{hook} expects {kind.__name__} objects, got {type(item).__name__}")
            if _dist != BUILTIN:
                try:
                    item, adapted = adapt(item, _api, _dist)
                except PluginAPIError as exc:
                    reg._problem(_dist, str(exc))
                    return
                if adapted:
                    reg.adapted.setdefault(_dist, []).append(item.name)
            if item.name in offers and _dist in offers[item.name]:
                reg._problem(
                    _dist, f"plugin '{_dist}' registers {word} '{item.name}' twice; the last one is kept"
                )
            offers.setdefault(item.name, {})[_dist] = replace(item, plugin=_dist)
            _registered.append(item.name)

        caller = pm.subset_hook_caller(hook, remove_plugins=[p for p in plugins if p is not impl.plugin])
        try:
            caller(register=register)
        except Exception as exc:
            reg._problem(dist, f"plugin '{impl.plugin_name}' failed in {hook} and was skipped: {exc!r}")
            for name in registered:  # a half-done registration is dropped whole
                offers.get(name, {}).pop(dist, None)
            continue
        if getattr(pm, "tracing", False):
            shown = ", ".join(registered) or "nothing"
            print(f"partbench: {hook} <- {impl.plugin_name} registered {shown}", file=sys.stderr)

    builtin_prefixes = tuple(
        n for n, by in offers.items() if BUILTIN in by and n.endswith(":") and word == "encoder"
    )
    for name, by in offers.items():
        if not by:
            continue
        if BUILTIN in by:
            into[name] = by[BUILTIN]
            for other in sorted(set(by) - {BUILTIN}):
                reg._problem(
                    other,
                    f"plugin '{other}' registers {word} '{name}', a name built into partbench; "
                    "the built-in one is kept and the plugin's is ignored",
                )
            continue
        owners = sorted(by)
        taken = next((p for p in builtin_prefixes if name.startswith(p)), None)
        if taken is not None or (word == "task" and name in TASK_SELECTORS):
            reserved = f"names starting with '{taken}' are built in" if taken else "it selects tasks"
            for owner in owners:
                message = f"plugin '{owner}' registers {word} '{name}', which is reserved ({reserved})"
                reg._problem(owner, message + "; it is ignored")
            continue
        if len(owners) > 1:
            both = " and ".join(f"'{o}'" for o in owners)
            message = (
                f"plugins {both} both register {word} '{name}'; neither is used (remove one of "
                "them, or choose with PARTBENCH_LOAD_PLUGINS)"
            )
            reg.problems.append(message)
            for owner in owners:
                reg.plugin_problems.setdefault(owner, []).append(message)
            continue
        into[name] = by[owners[0]]


def build_registry(pm: pluggy.PluginManager, problems: list[str] | None = None) -> Registry:
    reg = Registry(problems=list(problems or []))
    reg.versions = dict(getattr(pm, "versions", {}))
    for dist, message in getattr(pm, "failures", []):
        reg.plugin_problems.setdefault(dist, []).append(message)
    for plugin_name, _ in pm.list_name_plugin():
        reg.versions.setdefault(_dist_of(plugin_name), _version_of(_dist_of(plugin_name)))
    apis = _declared_versions(pm, reg)
    _collect(pm, "register_encoders", EncoderSpec, reg.encoders, reg, apis)
    _collect(pm, "register_tasks", TaskSpec, reg.tasks, reg, apis)
    _collect(pm, "register_datasets", DatasetSpec, reg.datasets, reg, apis)
    if hasattr(pm.hook, "register_suites"):
        _collect(pm, "register_suites", SuiteSpec, reg.suites, reg, apis)
    return reg


def _declared_versions(pm: pluggy.PluginManager, reg: Registry) -> dict[str, int | None]:
    """Each plugin's declared API version (the built-in one speaks the current version); a
    plugin declaring one this partbench cannot speak is left out, with the reason."""
    apis: dict[str, int | None] = {}
    by_dist: dict[str, set[int | None]] = {}
    for plugin_name, plugin in pm.list_name_plugin():
        dist = _dist_of(plugin_name)
        try:
            api = API_VERSION if dist == BUILTIN else declared_version(plugin, dist)
        except PluginAPIError as exc:
            reg._problem(dist, str(exc))
            continue
        apis[plugin_name] = api
        by_dist.setdefault(dist, set()).add(api)
    reg.api_versions = {dist: version_text(versions) for dist, versions in by_dist.items()}
    return apis


_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        pm, problems = plugin_manager()
        _REGISTRY = build_registry(pm, problems)
    return _REGISTRY


def reset_registry() -> None:
    """Forget the registry (tests, and anyone installing a plugin at run time)."""
    global _REGISTRY
    _REGISTRY = None
