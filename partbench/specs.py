"""What a plugin registers: light descriptions of encoders, tasks and datasets.

Specs import nothing heavy. The callables they carry import torch or timm when they are
called, so listing plugins and answering ``--help`` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# "both" is contrastive plus masked image modeling; "none" is random init; "unknown" is for
# arbitrary timm weights whose training is not declared.
FAMILIES = ("supervised", "contrastive", "masked-image-modeling", "both", "none", "unknown")
LEVELS = ("object", "part")
# What a dataset can provide; a task names the one it needs.
CAPABILITIES = ("images", "keypoints", "part-masks", "object-masks")


@dataclass(frozen=True)
class EncoderRequest:
    """Everything an encoder's loader is told; new fields get defaults, so old loaders work."""

    name: str
    variant: str | None = None  # the part after a prefix, e.g. the model in "timm:<model>"
    weights: Path | None = None  # --weights, when given
    seed: int = 0


@dataclass(frozen=True)
class EncoderSpec:
    name: str  # what a user types; a name ending in ":" is a prefix (as in "timm:")
    load: Callable[[EncoderRequest], Any]  # returns a partbench.encoders.Encoder
    family: str
    description: str = ""
    weights_source: str = ""  # where the weights come from, in words or as a URL
    weights_present: Callable[[], bool | None] | None = None  # None: not applicable
    plugin: str = ""  # filled in by the registry

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"encoder '{self.name}': family must be one of {FAMILIES}")

    @property
    def is_prefix(self) -> bool:
        return self.name.endswith(":")

    @property
    def display_name(self) -> str:
        """What a user types, with a placeholder where a prefix takes a model name."""
        return self.name + "<model>" if self.is_prefix else self.name


@dataclass(frozen=True)
class TaskOption:
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclass(frozen=True)
class TaskSpec:
    name: str
    level: str  # "object" or "part"
    metric: str  # the headline metric, as stored
    requires: str  # the dataset capability the task consumes
    create: Callable[[], Any]  # returns a partbench.tasks.Task
    description: str = ""
    options: Mapping[str, TaskOption] = field(default_factory=dict)
    plugin: str = ""

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"task '{self.name}': level must be one of {LEVELS}")
        if self.requires not in CAPABILITIES:
            raise ValueError(f"task '{self.name}': requires must be one of {CAPABILITIES}")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    load: Callable[..., Any]  # load(root: Path | None, **options) -> partbench.datasets.Dataset
    capabilities: frozenset[str]
    description: str = ""
    source: str = ""  # where the data is published
    builtin_data: bool = False  # True when the data is generated, needing no folder
    data_present: Callable[[Path | None], bool] | None = None
    plugin: str = ""

    def __post_init__(self) -> None:
        unknown = set(self.capabilities) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"dataset '{self.name}': unknown capabilities {sorted(unknown)}")

    @property
    def levels(self) -> tuple[str, ...]:
        levels = []
        if self.capabilities & {"images", "object-masks"}:
            levels.append("object")
        if self.capabilities & {"keypoints", "part-masks"}:
            levels.append("part")
        return tuple(levels)
