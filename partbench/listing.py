"""What ``partbench list`` and ``partbench runs`` show, as plain records and as rich tables."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from partbench.paths import data_root
from partbench.plugins import BUILTIN, Registry


def _present(check, *args) -> bool | None:
    try:
        return None if check is None else bool(check(*args))
    except Exception:  # a broken check must not break the listing
        return None


def describe(reg: Registry, what: str) -> list[dict[str, Any]]:
    if what == "plugins":
        return [
            {
                "name": dist,
                "version": reg.versions.get(dist, ""),
                "api": reg.api_versions.get(dist, ""),  # the plugin API it declares
                "adapted": list(reg.adapted.get(dist, [])),  # its items run through an adapter
                "builtin": dist == BUILTIN,
                "encoders": [s.display_name for s in reg.encoders.values() if s.plugin == dist],
                "tasks": [s.name for s in reg.tasks.values() if s.plugin == dist],
                "datasets": [s.name for s in reg.datasets.values() if s.plugin == dist],
                "suites": [s.name for s in reg.suites.values() if s.plugin == dist],
                "problems": list(reg.plugin_problems.get(dist, [])),
            }
            for dist in reg.plugins()
        ]
    if what == "encoders":
        return [
            {
                "name": s.display_name,
                "plugin": s.plugin,
                "plugin_version": reg.plugin_version(s),
                "version": getattr(s, "version", None),
                "family": s.family,
                "weights": s.weights_source,
                "weights_present": _present(s.weights_present),
                "description": s.description,
            }
            for s in reg.encoders.values()
        ]
    if what == "tasks":
        return [
            {
                "name": s.name,
                "plugin": s.plugin,
                "plugin_version": reg.plugin_version(s),
                "version": getattr(s, "version", None),
                "level": s.level,
                "metric": s.metric,
                "requires": s.requires,
                "options": {
                    k: {
                        "default": o.default,
                        "choices": list(o.choices) if o.choices else None,
                        # type and range, where the option declares them (partbench.specs.TaskOption)
                        "accepts": o.describe() if hasattr(o, "describe") else None,
                        "help": o.help,
                    }
                    for k, o in s.options.items()
                },
                "description": s.description,
            }
            for s in reg.tasks.values()
        ]
    return [
        {
            "name": s.name,
            "plugin": s.plugin,
            "plugin_version": reg.plugin_version(s),
            "version": getattr(s, "version", None),
            "levels": list(s.levels),
            "capabilities": sorted(s.capabilities),
            "data_present": True if s.builtin_data else _present(s.data_present, data_root(s.name)),
            "source": s.source,
            "description": s.description,
        }
        for s in reg.datasets.values()
    ]


def _yes_no(v: bool | None) -> str:
    return {True: "yes", False: "no", None: "–"}[v]


def _short(source: str) -> str:
    if source.startswith(("http://", "https://")) and " " not in source:
        return source.rsplit("/", 1)[-1]
    return source if len(source) <= 60 else source[:57] + "..."


def _cell(value: Any):
    """A table cell that rich prints as it is: names and messages come from plugins, datasets
    and the database, and a '[/bold]' in them is text, never markup."""
    from rich.text import Text

    return Text("" if value is None else str(value))


def render_table(what: str, items: list[dict[str, Any]]):
    from rich.table import Table

    table = Table(title=f"partbench {what}", title_justify="left")
    if what == "plugins":
        cols = ("plugin", "version", "api", "registers", "problems")
        rows = [
            (
                i["name"],
                i["version"] or "–",
                (i["api"] or "–") + (f" (adapted: {', '.join(i['adapted'])})" if i["adapted"] else ""),
                "; ".join(
                    f"{kind} {', '.join(i[kind])}"
                    for kind in ("encoders", "tasks", "datasets", "suites")
                    if i[kind]
                )
                or "nothing",
                "\n".join(i["problems"]) or "–",
            )
            for i in items
        ]
    elif what == "encoders":
        # The table names the weights file; the full source and description are in --format json.
        cols = ("name", "family", "weights", "present", "plugin")
        rows = [
            (i["name"], i["family"], _short(i["weights"]), _yes_no(i["weights_present"]), i["plugin"])
            for i in items
        ]
    elif what == "tasks":
        cols = ("name", "level", "metric", "needs", "options (default)", "plugin")
        rows = [
            (
                i["name"],
                i["level"],
                i["metric"],
                i["requires"],
                ", ".join(f"{k}={o['default']}" for k, o in i["options"].items()),
                i["plugin"],
            )
            for i in items
        ]
    else:
        cols = ("name", "levels", "provides", "data present", "plugin", "source")
        rows = [
            (
                i["name"],
                ", ".join(i["levels"]),
                ", ".join(i["capabilities"]),
                _yes_no(i["data_present"]),
                i["plugin"],
                i["source"],
            )
            for i in items
        ]
    for c in cols:
        table.add_column(c, no_wrap=c in ("name", "plugin", "version"))
    for r in rows:
        table.add_row(*(_cell(v) for v in r))
    return table


def run_record(run) -> dict[str, Any]:
    head = run.headline
    return {
        "id": run.id,
        "encoder": run.encoder,
        "task": run.task,
        "level": run.level,
        "dataset": run.dataset,
        "status": run.status,
        "metrics": {m.name: {"value": m.value, "ci": [m.ci_low, m.ci_high]} for m in run.metrics},
        "headline": run.headline_metric,
        "score": head.value if head else None,
        "n_items": run.n_items,
        "timing": run.timing,
        "device": run.device,
        "weights_id": run.weights_id,
        "config_hash": run.config_hash,
        "config": run.config,
        "versions": run.versions,
        "seed": run.seed,
        "items_per_class": run.items_per_class,
        "details": run.details,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "error": run.error,
    }


def format_detail(detail: Mapping[str, Any]) -> str:
    """``partbench runs --id N`` as plain text (never markup): one field a line, then the
    error and its traceback verbatim."""
    lines = []
    for key, value in detail.items():
        if key in ("error", "traceback"):
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str, sort_keys=True)
        lines.append(f"{key}: {'' if value is None else value}")
    if detail.get("error"):
        lines.append(f"error: {detail['error']}")
    if detail.get("traceback"):
        lines += ["traceback:", str(detail["traceback"]).rstrip()]
    return "\n".join(lines)
