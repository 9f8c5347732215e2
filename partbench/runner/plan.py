"""Plan: every name resolved and every option typed, checked and resolved before anything is
loaded.

A Plan is complete when it is returned: the options with nothing left on "auto" (device,
precision, workers resolved for the machine the run happens on) and that machine's facts.
What one (encoder, task) run is follows from the plan alone up to what loading the dataset
and the encoder tells (runner/config.py).

A new run option is a field of RunOptions (and its flag in cli.py); the runner reads it from
``plan.opts``. One that changes scores also enters ``config.declared_config`` and is a field of
RunConfig: the hash, the sweep's check and the run's record then all hold it.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from partbench import __version__
from partbench.errors import PartbenchError
from partbench.plugins import Registry
from partbench.specs import DatasetSpec, EncoderSpec, OptionError, TaskSpec

LEVEL_SELECTORS = ("part", "object", "all")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# numpy's generators (bootstrap) take seeds in [0, 2**32) when they are plain integers
# from a command line; torch accepts more, so the narrower range is the rule.
SEED_RANGE = (0, 2**32 - 1 - 1000)  # room for --repeats adding to the seed


@dataclass(frozen=True)
class RunOptions:
    """The options of one ``partbench run``, as plain data (a study's lane receives them as
    JSON). In a Plan, device, precision and workers are resolved."""

    dataset: str = "synparts"
    data_root: Path | None = None
    dataset_options: Sequence[str] = ()  # "key=value", handed to the dataset's load()
    weights: Path | None = None
    device: str = "auto"
    batch_size: int = 64
    precision: str = "auto"  # bf16 on CUDA, fp32 on a CPU
    seed: int = 0
    limit: int | None = None
    repeats: int = 1
    force: bool = False
    options: Sequence[str] = ()  # "key=value" or "task.key=value"
    workers: int | None = None  # DataLoader workers; None: the machine's cores
    compile: bool = False
    cache: bool = True  # keep features in the persistent cache

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values; ``from_json`` gives the same options back."""
        out = dataclasses.asdict(self)
        for key in ("data_root", "weights"):
            out[key] = None if out[key] is None else str(out[key])
        out["dataset_options"], out["options"] = list(self.dataset_options), list(self.options)
        return out

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RunOptions:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise PartbenchError(f"run options: unknown key(s) {', '.join(unknown)}")
        kw = dict(value)
        for key in ("data_root", "weights"):
            if kw.get(key) is not None:
                kw[key] = Path(kw[key])
        for key in ("dataset_options", "options"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


@dataclass(frozen=True)
class RunRequest:
    """One call of ``runner.run`` as plain data: what a study's lane process is asked to run."""

    encoders: tuple[str, ...]
    tasks: tuple[str, ...]
    options: RunOptions

    def to_json(self) -> dict[str, Any]:
        return {"encoders": list(self.encoders), "tasks": list(self.tasks), "options": self.options.to_json()}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RunRequest:
        try:
            options = RunOptions.from_json(value["options"])
            return cls(tuple(value["encoders"]), tuple(value["tasks"]), options)
        except (KeyError, TypeError) as exc:
            raise PartbenchError(f"run request: expected encoders, tasks and options ({exc})") from None


@dataclass(frozen=True)
class Machine:
    """Where a plan runs: the device (a torch.device here; None for a job that runs on another
    machine, of which only the device type is known) and what the run records of the machine."""

    device_type: str  # "cuda" or "cpu"
    device: Any = None
    text: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def here(cls, name: str, local_rank: int | None = None) -> Machine:
        device = resolve_device(name, local_rank)
        return cls(device.type, device, describe_device(device), library_versions())

    @classmethod
    def elsewhere(cls, device_type: str) -> Machine:
        """A job's machine seen from the one submitting it: precision resolves by its device
        type; the device itself, the workers and the versions are the job's to resolve."""
        return cls(device_type)


@dataclass(frozen=True)
class Plan:
    dataset: DatasetSpec
    data_root: Path | None
    dataset_options: Mapping[str, str]
    encoders: tuple[tuple[str, EncoderSpec], ...]
    tasks: tuple[TaskSpec, ...]
    options: Mapping[str, dict[str, Any]]  # task -> typed options
    opts: RunOptions  # resolved: no "auto" left where the machine decides it
    machine: Machine
    plugin_versions: Mapping[str, str] = field(default_factory=dict)  # distribution -> version
    # task -> the stages a layer curve reads (``-o stage=all``: None, every declared stage)
    stage_sweeps: Mapping[str, tuple[int, ...] | None] = field(default_factory=dict)

    def stage_options(self, task: TaskSpec, stages: int) -> list[dict[str, Any]]:
        """The task's options once per stage its layer curve reads (``stages``: how many the
        loaded encoder declares), or its options alone when it draws none: each is one run."""
        options = self.options[task.name]
        if task.name not in self.stage_sweeps:
            return [options]
        chosen = self.stage_sweeps[task.name]
        return [{**options, "stage": s} for s in (range(stages) if chosen is None else chosen)]

    def plugin_version(self, spec: Any) -> str:
        """The version of the distribution that registered ``spec``, as the registry found it;
        it enters the configuration hash, so a changed plugin is not answered from an older
        one's results."""
        return self.plugin_versions.get(spec.plugin, "unknown")


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


def task_options(
    tasks: Sequence[TaskSpec], raw: Sequence[str], registered: Sequence[TaskSpec] = ()
) -> dict[str, dict[str, Any]]:
    """Defaults of every selected task, overridden by "key=value" or "task.key=value".

    An unqualified key sets that option in every selected task that has it, as long as it
    means the same there (the same help text); otherwise it must be qualified, so `-o lr=0.5`
    never sets a probe's SGD rate and a segmentation head's AdamW rate at once. An option of
    a registered task that is not selected is ignored, so one command line can serve
    datasets with different tasks; an option no task has is an error."""
    result = {t.name: t.defaults() for t in tasks}
    by_name = {t.name: t for t in tasks}
    everyone = {t.name: t for t in (*registered, *tasks)}
    for item in raw:
        if "=" not in item:
            raise PartbenchError(f"--option '{item}': expected KEY=VALUE or TASK.KEY=VALUE")
        key, value = item.split("=", 1)
        task_name, _, opt = key.rpartition(".")
        if task_name and task_name not in everyone:
            raise PartbenchError(f"--option '{item}': no task is named '{task_name}'")
        pool = [everyone[task_name]] if task_name else list(everyone.values())
        if not any(opt in t.options for t in pool):
            known = sorted({f"{t.name}.{k}" for t in everyone.values() for k in t.options})
            raise PartbenchError(f"--option '{item}': no task has this option; options: {', '.join(known)}")
        targets = [by_name[task_name]] if task_name in by_name else ([] if task_name else list(tasks))
        hits = [t for t in targets if opt in t.options]
        if not task_name and len({t.options[opt].help for t in hits}) > 1:
            names = ", ".join(f"{t.name}.{opt}" for t in hits)
            raise PartbenchError(
                f"--option '{item}' matches {names}, which mean different things; "
                f"give it as TASK.{opt}={value}"
            )
        for t in hits:
            try:
                result[t.name][opt] = t.options[opt].parse(value)
            except OptionError as exc:
                raise PartbenchError(f"--option {t.name}.{opt}={value}: {exc}") from None
    return result


def key_values(raw: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in raw:
        if "=" not in item:
            raise PartbenchError(f"{flag} '{item}': expected KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v
    return out


MAX_BATCH_SIZE = 2**16  # images per forward: 9.8 GB of pinned uint8 at 224 px


def check_options(opts: RunOptions) -> None:
    if opts.precision not in PRECISIONS:
        raise PartbenchError(f"--precision '{opts.precision}': expected one of {', '.join(PRECISIONS)}")
    for flag, value in (("--repeats", opts.repeats), ("--batch-size", opts.batch_size)):
        if value < 1:
            raise PartbenchError(f"{flag} must be at least 1, got {value}")
    if opts.batch_size > MAX_BATCH_SIZE:
        # A batch's pinned staging buffer alone would need batch x size^2 x 3 bytes.
        raise PartbenchError(f"--batch-size must lie in 1..{MAX_BATCH_SIZE}, got {opts.batch_size}")
    if opts.limit is not None and opts.limit < 1:
        raise PartbenchError(f"--limit must be at least 1, got {opts.limit}")
    if opts.workers is not None and opts.workers < 0:
        raise PartbenchError(f"--workers must be 0 or more, got {opts.workers}")
    if not SEED_RANGE[0] <= opts.seed <= SEED_RANGE[1]:
        raise PartbenchError(f"--seed must lie in {SEED_RANGE[0]}..{SEED_RANGE[1]}, got {opts.seed}")


def resolve_options(opts: RunOptions, machine: Machine) -> RunOptions:
    """``opts`` with what the machine decides filled in: precision, and where the device is
    here, the device and the DataLoader workers."""
    resolved = dataclasses.replace(opts, precision=resolve_precision(opts.precision, machine.device_type))
    if machine.device is None:
        return resolved
    workers = opts.workers
    if workers is None:
        from partbench.extraction import default_workers

        workers = default_workers(machine.device_type)
    return dataclasses.replace(resolved, device=str(machine.device), workers=workers)


def make_plan(
    registry: Registry,
    encoders: Sequence[str],
    tasks: Sequence[str],
    opts: RunOptions,
    machine: Machine | Callable[[], Machine] | None = None,
) -> Plan:
    """Check every name and setting, then resolve them for ``machine`` (a callable is called
    only once every check has passed; None: this machine, ``opts.device``). Nothing is loaded
    and nothing is stored."""
    ds_spec = registry.dataset(opts.dataset)
    enc = tuple((name, registry.encoder(name)) for name in encoders)
    task_specs = tuple(select_tasks(registry, tasks, ds_spec))
    raw, sweeps = stage_sweeps(task_specs, opts.options)
    options = task_options(task_specs, raw, list(registry.tasks.values()))
    check_options(opts)
    dataset_options = key_values(opts.dataset_options, "--dataset-option")
    root = opts.data_root
    if root is None and not ds_spec.builtin_data:
        from partbench.paths import data_root

        root = data_root(ds_spec.name)
    if machine is None:
        machine = Machine.here(opts.device)
    elif not isinstance(machine, Machine):
        machine = machine()
    return Plan(
        dataset=ds_spec,
        data_root=root,
        dataset_options=dataset_options,
        encoders=enc,
        tasks=task_specs,
        options=options,
        opts=resolve_options(opts, machine),
        machine=machine,
        plugin_versions=dict(registry.versions),
        stage_sweeps=sweeps,
    )


def stage_sweeps(
    tasks: Sequence[TaskSpec], raw: Sequence[str]
) -> tuple[list[str], dict[str, tuple[int, ...] | None]]:
    """The layer curves asked for: ``stage=all`` (every declared stage) or ``stage=2,4,6``,
    plain or as ``TASK.stage=...``, for each selected task with a stage option; the other
    options are handed on as given. Each stage becomes a run of its own (Plan.stage_options)."""
    rest: list[str] = []
    sweeps: dict[str, tuple[int, ...] | None] = {}
    for item in raw:
        key, _, value = item.partition("=")
        task_name, _, opt = key.rpartition(".")
        if opt != "stage" or (value.strip() != "all" and "," not in value):
            rest.append(item)
            continue
        hits = [t for t in tasks if "stage" in t.options and task_name in ("", t.name)]
        for t in hits:
            if value.strip() == "all":
                sweeps[t.name] = None
                continue
            try:
                parsed = (t.options["stage"].parse(v) for v in value.split(",") if v.strip())
                stages = tuple(dict.fromkeys(parsed))
            except OptionError as exc:
                raise PartbenchError(f"--option {t.name}.stage={value}: {exc}") from None
            if not stages:
                raise PartbenchError(f"--option {t.name}.stage={value}: no stage given")
            sweeps[t.name] = stages
        if not hits:
            rest.append(item)  # task_options says why no task takes it
    return rest, sweeps


def resolve_device(name: str, local_rank: int | None = None):
    """The device a name asks for; under torchrun, "auto" and "cuda" mean this rank's GPU."""
    import torch

    if local_rank is not None and name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank)
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


def resolve_precision(precision: str, device_type: str) -> str:
    """auto: bf16 on CUDA, where it is the fast path; fp32 on a CPU, where it is exact."""
    if precision != "auto":
        return precision
    return "bf16" if device_type == "cuda" else "fp32"


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
