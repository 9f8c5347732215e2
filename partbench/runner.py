"""Plan, extract, evaluate, store. One function, ``run``, drives ``partbench run``.

For each encoder: load it (its weights' identity decides what is already stored), start a
run record per task that is not, extract each merged view once, let every task score its
features, and finish or fail each record in its own short transaction.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from partbench import __version__
from partbench.errors import PartbenchError
from partbench.plugins import Registry
from partbench.specs import DatasetSpec, EncoderRequest, TaskSpec
from partbench.store import MetricValue, Store

LEVEL_SELECTORS = ("part", "object", "all")


@dataclass
class RunOptions:
    dataset: str = "synparts"
    data_root: Path | None = None
    weights: Path | None = None
    device: str = "auto"
    batch_size: int = 64
    precision: str = "fp32"
    seed: int = 0
    limit: int | None = None
    repeats: int = 1
    force: bool = False
    options: Sequence[str] = ()  # "key=value" or "task.key=value"


@dataclass
class Outcome:
    encoder: str
    task: str
    status: str  # done, skipped (already stored), failed
    run_id: int | None = None
    metric: str = ""
    value: MetricValue | None = None
    error: str | None = None
    timing: dict[str, Any] = field(default_factory=dict)


def select_tasks(registry: Registry, selectors: Sequence[str], dataset: DatasetSpec) -> list[TaskSpec]:
    """Task names, or part / object / all: every task of that level the dataset supports."""
    chosen: list[TaskSpec] = []
    for sel in selectors:
        if sel in LEVEL_SELECTORS:
            found = [
                t
                for t in registry.tasks.values()
                if (sel == "all" or t.level == sel) and t.requires in dataset.capabilities
            ]
            if not found:
                raise PartbenchError(f"dataset '{dataset.name}' supports no {sel}-level task")
        else:
            spec = registry.task(sel)
            if spec.requires not in dataset.capabilities:
                raise PartbenchError(
                    f"task '{sel}' needs {spec.requires}, which dataset '{dataset.name}' does not "
                    f"provide (it provides {', '.join(sorted(dataset.capabilities))})"
                )
            found = [spec]
        chosen += [t for t in found if t not in chosen]
    return chosen


def _coerce(raw: str, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise PartbenchError(f"{where}: expected true or false, got '{raw}'")
    try:
        return type(default)(raw)
    except ValueError:
        raise PartbenchError(f"{where}: expected a {type(default).__name__}, got '{raw}'") from None


def task_options(
    tasks: Sequence[TaskSpec], raw: Sequence[str], registered: Sequence[TaskSpec] = ()
) -> dict[str, dict[str, Any]]:
    """Defaults of every selected task, overridden by "key=value" (every selected task with that
    option) or "task.key=value" (one task). An option of a registered task that is not selected
    is ignored, so one command line can serve datasets with different tasks; an option no task
    has is an error."""
    result = {t.name: {k: o.default for k, o in t.options.items()} for t in tasks}
    by_name = {t.name: t for t in tasks}
    everyone = {t.name: t for t in (*registered, *tasks)}
    for item in raw:
        if "=" not in item:
            raise PartbenchError(f"--option '{item}': expected KEY=VALUE or TASK.KEY=VALUE")
        key, value = item.split("=", 1)
        task_name, _, opt = key.rpartition(".")
        pool = (
            [everyone[task_name]] if task_name in everyone else ([] if task_name else list(everyone.values()))
        )
        if not any(opt in t.options for t in pool):
            known = sorted({f"{t.name}.{k}" for t in everyone.values() for k in t.options})
            raise PartbenchError(f"--option '{item}': no task has this option; options: {', '.join(known)}")
        targets = [by_name[task_name]] if task_name in by_name else ([] if task_name else list(tasks))
        hits = [t for t in targets if opt in t.options]
        for t in hits:
            spec = t.options[opt]
            val = _coerce(value, spec.default, f"--option {t.name}.{opt}")
            if spec.choices is not None and val not in spec.choices:
                raise PartbenchError(
                    f"--option {t.name}.{opt}: '{value}' is not one of " + ", ".join(map(str, spec.choices))
                )
            result[t.name][opt] = val
    return result


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise PartbenchError(f"--device '{name}': expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PartbenchError(f"--device {name}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise PartbenchError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise PartbenchError(f"--device '{name}': expected auto, cpu, cuda or cuda:N")
    return device


def describe_device(device) -> str:
    import torch

    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def library_versions() -> dict[str, str]:
    import numpy
    import timm
    import torch

    return {
        "partbench": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "numpy": numpy.__version__,
    }


def config_hash(config: dict[str, Any]) -> str:
    """Hash of everything that can change a score. Device and batch size are recorded but left
    out: they change timings, not results, so a run on another machine is not repeated."""
    keep = {k: v for k, v in config.items() if k not in ("device", "batch_size")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def run(
    registry: Registry,
    store: Store,
    encoders: Sequence[str],
    tasks: Sequence[str],
    opts: RunOptions,
    progress: Any | None = None,
    say: Any = print,
) -> list[Outcome]:
    """Evaluate every encoder on every selected task; returns one outcome per pair."""
    import torch

    from partbench.extraction import extract, merge_views
    from partbench.timing import merge as merge_timings

    # Every name is checked before anything is loaded or stored.
    ds_spec = registry.dataset(opts.dataset)
    enc_specs = [registry.encoder(name) for name in encoders]
    task_specs = select_tasks(registry, tasks, ds_spec)
    options = task_options(task_specs, opts.options, list(registry.tasks.values()))
    if opts.precision not in ("fp32", "bf16", "fp16"):
        raise PartbenchError(f"--precision '{opts.precision}': expected fp32, bf16 or fp16")
    if opts.repeats < 1 or opts.batch_size < 1 or (opts.limit is not None and opts.limit < 1):
        raise PartbenchError("--repeats, --batch-size and --limit must be positive")
    device = resolve_device(opts.device)
    device_text = describe_device(device)
    torch.manual_seed(opts.seed)
    dataset = ds_spec.load(opts.data_root)
    fingerprint = dataset.fingerprint()
    versions = library_versions()
    outcomes: list[Outcome] = []

    for name, spec in zip(encoders, enc_specs, strict=True):
        variant = name[len(spec.name) :] if spec.is_prefix else None
        request = EncoderRequest(name=name, variant=variant, weights=opts.weights, seed=opts.seed)
        try:
            encoder = spec.load(request)
        except PartbenchError as exc:
            outcomes += [Outcome(name, t.name, "failed", error=str(exc)) for t in task_specs]
            say(f"{name}: {exc}")
            continue
        encoder.to(device).eval()
        pending: list[tuple[TaskSpec, Any, dict[str, Any], int]] = []
        for t in task_specs:
            task = t.create()
            views = task.views(dataset, encoder, options[t.name])
            config = {
                "encoder": encoder.describe(),
                "task": {
                    "name": t.name,
                    "options": options[t.name],
                    # The leaderboard ranks the protocol's defaults; variants stay in `runs`.
                    "default_options": options[t.name] == {k: o.default for k, o in t.options.items()},
                },
                "dataset": {
                    "name": ds_spec.name,
                    "fingerprint": fingerprint,
                    "root": str(opts.data_root) if opts.data_root else None,
                },
                "views": {
                    k: {
                        "source": v.source,
                        "split": dataset.split_for(v.role),
                        "transform": v.transform,
                        "outputs": sorted(v.outputs),
                        "blocks": list(v.blocks),
                    }
                    for k, v in views.items()
                },
                "seed": opts.seed,
                "limit": opts.limit,
                "precision": opts.precision,
                "repeats": opts.repeats,
                "batch_size": opts.batch_size,
                "device": device_text,
            }
            digest = config_hash(config)
            done = None if opts.force else store.find_done(digest)
            if done is not None:
                head = done.headline
                outcomes.append(
                    Outcome(
                        name,
                        t.name,
                        "skipped",
                        done.id,
                        t.metric,
                        MetricValue(head.value, head.ci_low, head.ci_high) if head else None,
                    )
                )
                continue
            run_id = store.start(
                encoder=name,
                encoder_plugin=spec.plugin,
                family=encoder.family,
                weights_id=encoder.weights_id,
                task=t.name,
                task_plugin=t.plugin,
                level=t.level,
                dataset=ds_spec.name,
                dataset_fingerprint=fingerprint,
                config=config,
                config_hash=digest,
                headline_metric=t.metric,
                device=device_text,
                versions=versions,
                seed=opts.seed,
            )
            pending.append((t, task, views, run_id))
        if not pending:
            continue

        merged = merge_views([v for _, _, views, _ in pending for v in views.values()], dataset)
        extracted: dict[tuple[str, str, str], Any] = {}
        failed: dict[tuple[str, str, str], str] = {}
        try:
            for key, view in merged.items():
                try:
                    extracted[key] = extract(
                        encoder,
                        dataset,
                        view,
                        device=device,
                        batch_size=opts.batch_size,
                        precision=opts.precision,
                        limit=opts.limit,
                        progress=progress,
                    )
                except (PartbenchError, ValueError, RuntimeError, OSError) as exc:
                    failed[key] = (
                        f"{type(exc).__name__}: {exc}" if not isinstance(exc, PartbenchError) else str(exc)
                    )
            for t, task, views, run_id in pending:
                missing = [
                    failed[v.merge_key(dataset)] for v in views.values() if v.merge_key(dataset) in failed
                ]
                if missing:
                    store.fail(run_id, missing[0])
                    outcomes.append(Outcome(name, t.name, "failed", run_id, error=missing[0]))
                    say(f"{name} · {t.name}: {missing[0]}")
                    continue
                feats = {role: extracted[v.merge_key(dataset)] for role, v in views.items()}
                try:
                    result = task.evaluate(
                        feats, dataset, options[t.name], seed=opts.seed, repeats=opts.repeats
                    )
                except (PartbenchError, ValueError, RuntimeError) as exc:
                    store.fail(run_id, f"{type(exc).__name__}: {exc}")
                    outcomes.append(Outcome(name, t.name, "failed", run_id, error=str(exc)))
                    say(f"{name} · {t.name}: {exc}")
                    continue
                timing = merge_timings([f.timing for f in feats.values()])
                store.finish(
                    run_id,
                    result.metrics,
                    n_items=result.n_items,
                    items_per_class=result.items_per_class,
                    timing=timing,
                    details=result.details,
                )
                outcomes.append(
                    Outcome(
                        name,
                        t.name,
                        "done",
                        run_id,
                        t.metric,
                        result.metrics[t.metric],
                        timing=timing,
                    )
                )
        except BaseException as exc:
            # Ctrl-C or a bug: no run is left 'running' behind the user's back.
            settled = {o.run_id for o in outcomes}
            for _, _, _, run_id in pending:
                if run_id not in settled:
                    store.fail(run_id, f"interrupted: {type(exc).__name__}: {exc}")
            raise
    return outcomes
