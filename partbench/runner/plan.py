"""Plan: every name resolved and every option typed and checked before anything is loaded.

A Plan holds the dataset, tasks with their bound options, encoders and run settings. A
RunConfig is what one (encoder, task) run is: a typed value whose digest decides whether the
store already holds it.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
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


@dataclass
class RunOptions:
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


@dataclass(frozen=True)
class RunConfig:
    """Everything that makes one run what it is. ``digest`` leaves out what changes timings
    but not scores (device, batch size, workers), so a run is not repeated on another machine."""

    encoder: Mapping[str, Any]
    task: Mapping[str, Any]
    dataset: Mapping[str, Any]
    views: Mapping[str, Any]
    seed: int
    limit: int | None
    precision: str
    repeats: int
    compile: bool
    batch_size: int
    device: str
    workers: int

    RECORDED_ONLY = ("batch_size", "device", "workers")

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @property
    def digest(self) -> str:
        keep = {k: v for k, v in self.as_dict().items() if k not in self.RECORDED_ONLY}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


@dataclass
class Plan:
    dataset: DatasetSpec
    data_root: Path | None
    dataset_options: dict[str, str]
    encoders: list[tuple[str, EncoderSpec]]
    tasks: list[TaskSpec]
    options: dict[str, dict[str, Any]]  # task -> typed options
    opts: RunOptions
    precision: str = "fp32"
    device: Any = None
    device_text: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    plugin_versions: dict[str, str] = field(default_factory=dict)  # distribution -> version

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


def make_plan(registry: Registry, encoders: Sequence[str], tasks: Sequence[str], opts: RunOptions) -> Plan:
    """Check every name and setting; nothing is loaded and nothing is stored."""
    ds_spec = registry.dataset(opts.dataset)
    enc = [(name, registry.encoder(name)) for name in encoders]
    task_specs = select_tasks(registry, tasks, ds_spec)
    options = task_options(task_specs, opts.options, list(registry.tasks.values()))
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
    root = opts.data_root
    if root is None and not ds_spec.builtin_data:
        from partbench.paths import data_root

        root = data_root(ds_spec.name)
    return Plan(
        dataset=ds_spec,
        data_root=root,
        dataset_options=key_values(opts.dataset_options, "--dataset-option"),
        encoders=enc,
        tasks=task_specs,
        options=options,
        opts=opts,
        plugin_versions=dict(registry.versions),
    )


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


def resolve_precision(precision: str, device) -> str:
    """auto: bf16 on CUDA, where it is the fast path; fp32 on a CPU, where it is exact."""
    if precision != "auto":
        return precision
    return "bf16" if device.type == "cuda" else "fp32"


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
