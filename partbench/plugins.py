"""The one plugin manager. Built-in and third-party plugins load the same way, through the
``partbench`` entry-point group, one at a time; a plugin that fails is reported and skipped.

PARTBENCH_LOAD_PLUGINS  comma-separated distribution names to load (default: all)
PARTBENCH_TRACE_PLUGINS set to 1 to print every hook call to stderr
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any

import pluggy

from partbench import hookspecs
from partbench.errors import UnknownNameError
from partbench.specs import DatasetSpec, EncoderSpec, TaskSpec

GROUP = "partbench"


@dataclass
class Registry:
    """Everything the loaded plugins registered, by name, with who supplied it."""

    encoders: dict[str, EncoderSpec] = field(default_factory=dict)
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # plugins that failed, in words

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
            raise UnknownNameError("task", name, [*list(self.tasks), "part", "object", "all"])
        return self.tasks[name]

    def dataset(self, name: str) -> DatasetSpec:
        if name not in self.datasets:
            raise UnknownNameError("dataset", name, self.datasets)
        return self.datasets[name]


def _wanted(dist_name: str) -> bool:
    allow = os.environ.get("PARTBENCH_LOAD_PLUGINS")
    if allow is None:
        return True
    return dist_name in {n.strip() for n in allow.split(",") if n.strip()}


def plugin_manager(
    extra: Iterable[tuple[str, object]] = (),
) -> tuple[pluggy.PluginManager, list[str]]:
    """Build a manager with every entry-point plugin, plus ``extra`` (name, module) pairs."""
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    problems: list[str] = []
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else ep.name
        if not _wanted(dist):
            continue
        name = f"{dist}:{ep.name}"
        if pm.has_plugin(name):  # the same distribution seen twice on sys.path
            continue
        try:
            pm.register(ep.load(), name=name)
        except Exception as exc:  # a broken plugin must not take the tool down
            problems.append(f"plugin '{name}' failed to load and was skipped: {exc!r}")
    for name, obj in extra:
        pm.register(obj, name=name)
    if os.environ.get("PARTBENCH_TRACE_PLUGINS") == "1":

        def before(hook_name: str, impls: list, kwargs: dict) -> None:
            print(f"partbench: {hook_name} -> {[i.plugin_name for i in impls]}", file=sys.stderr)

        pm.add_hookcall_monitoring(before, lambda *a: None)
    return pm, problems


def _collect(pm: pluggy.PluginManager, hook: str, kind: type, into: dict, problems: list) -> None:
    # Each implementation is called on its own so that every item is attributed to its plugin
    # and one plugin's mistake leaves the others' items in place.
    for impl in getattr(pm.hook, hook).get_hookimpls():
        plugin = impl.plugin_name.split(":")[0]

        def register(item: Any, _plugin: str = plugin) -> None:
            if not isinstance(item, kind):
                raise TypeError(f"{hook} expects {kind.__name__} objects, got {type(item).__name__}")
            if item.name in into and into[item.name].plugin != _plugin:
                problems.append(
                    f"plugin '{_plugin}' registers '{item.name}', already supplied by "
                    f"'{into[item.name].plugin}'; the first one is kept"
                )
                return
            into[item.name] = replace(item, plugin=_plugin)

        try:
            impl.function(**{arg: register for arg in impl.argnames})
        except Exception as exc:
            problems.append(f"plugin '{impl.plugin_name}' failed in {hook} and was skipped: {exc!r}")


def build_registry(pm: pluggy.PluginManager, problems: list[str] | None = None) -> Registry:
    reg = Registry(problems=list(problems or []))
    _collect(pm, "register_encoders", EncoderSpec, reg.encoders, reg.problems)
    _collect(pm, "register_tasks", TaskSpec, reg.tasks, reg.problems)
    _collect(pm, "register_datasets", DatasetSpec, reg.datasets, reg.problems)
    return reg


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
