"""What a plugin registers: light descriptions of encoders, tasks, datasets and suites.

Specs import nothing heavy. The callables they carry import torch or timm when they are
called, so listing plugins and answering ``--help`` stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

# "both" is contrastive plus masked image modeling; "none" is random init; "unknown" is for
# arbitrary timm weights whose training is not declared.
Family = Literal["supervised", "contrastive", "masked-image-modeling", "both", "none", "unknown"]
Level = Literal["object", "part"]
# What a dataset can provide; a task names the one it needs.
# "keypoint-pairs": pairs of images of one class with corresponding keypoints (correspondence).
Capability = Literal["images", "keypoints", "part-masks", "object-masks", "keypoint-pairs"]
FAMILIES: tuple[str, ...] = get_args(Family)
LEVELS: tuple[str, ...] = get_args(Level)
CAPABILITIES: tuple[str, ...] = get_args(Capability)


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
    version: str = "1"  # bump when the loader changes features: it enters the configuration hash

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


class OptionError(ValueError):
    """A task option value that is not of its type or outside its range."""


@dataclass(frozen=True)
class TaskOption:
    """One typed option of a task: its default fixes the type (bool, int, float or str)."""

    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive
    positive: bool = False  # strictly above 0
    # False for an option added to a task after runs of it were stored: at its default it is
    # left out of the configuration hash, so those runs keep answering the default setting.
    hashed_at_default: bool = True

    @property
    def type(self) -> type:
        return type(self.default)

    def parse(self, raw: str) -> Any:
        """The value of ``raw`` as this option's type, checked against its range and choices."""
        kind = self.type
        if kind is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return self.check(True)
            if low in ("0", "false", "no", "off"):
                return self.check(False)
            raise OptionError(f"expected true or false, got '{raw}'")
        try:
            value = kind(raw)
        except ValueError:
            raise OptionError(
                f"expected {'an' if kind is int else 'a'} {kind.__name__}, got '{raw}'"
            ) from None
        return self.check(value)

    def check(self, value: Any) -> Any:
        """Raise OptionError when ``value`` is outside what this option accepts."""
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"'{value}' is not one of " + ", ".join(map(str, self.choices)))
        if isinstance(value, float) and not math.isfinite(value):
            raise OptionError(f"{value} is not a finite number")
        if self.positive and value <= 0:
            raise OptionError(f"must be above 0, got {value}")
        if self.minimum is not None and value < self.minimum:
            raise OptionError(f"must be at least {self.minimum:g}, got {value}")
        if self.maximum is not None and value > self.maximum:
            raise OptionError(f"must be at most {self.maximum:g}, got {value}")
        return value

    def describe(self) -> str:
        """The accepted values in words, for `partbench list tasks`."""
        if self.choices is not None:
            return " | ".join(map(str, self.choices))
        parts = [self.type.__name__]
        if self.positive:
            parts.append("> 0")
        if self.minimum is not None:
            parts.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"<= {self.maximum:g}")
        return " ".join(parts)


@dataclass(frozen=True)
class TaskSpec:
    name: str
    level: str  # "object" or "part"
    metric: str  # the headline metric, as stored
    requires: str  # the dataset capability the task consumes
    create: Callable[[Mapping[str, Any]], Any]  # create(options) returns a partbench.api.Task
    description: str = ""
    options: Mapping[str, TaskOption] = field(default_factory=dict)
    plugin: str = ""
    version: str = "1"  # bump when scoring changes: it enters the configuration hash

    def defaults(self) -> dict[str, Any]:
        return {k: o.default for k, o in self.options.items()}

    def hashed_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """``options`` as the configuration hash reads them: without the options that are not
        hashed at their default while they hold it."""
        return {
            k: v
            for k, v in options.items()
            if not (
                k in self.options and not self.options[k].hashed_at_default and v == self.options[k].default
            )
        }

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
    version: str = "1"  # bump when the reader changes what it yields: it enters the configuration hash

    def __post_init__(self) -> None:
        unknown = set(self.capabilities) - set(CAPABILITIES)
        if unknown:
            raise ValueError(f"dataset '{self.name}': unknown capabilities {sorted(unknown)}")

    @property
    def levels(self) -> tuple[str, ...]:
        levels = []
        if self.capabilities & {"images", "object-masks"}:
            levels.append("object")
        if self.capabilities & {"keypoints", "part-masks", "keypoint-pairs"}:
            levels.append("part")
        return tuple(levels)


# Every metric is a percentage: the store refuses a value, interval bound or chance level
# outside it (partbench.store.validate), and a level's score is a mean of its tasks' metrics.
METRIC_RANGE = (0.0, 100.0)
# Chance-corrected secondary metrics go below 0 (the adjusted Rand index, in percent, lies in
# [-100, 100]); no headline metric may, since a level's score averages headlines.
SIGNED_METRICS: dict[str, tuple[float, float]] = {"ARI": (-100.0, 100.0)}


def metric_range(name: str) -> tuple[float, float]:
    """The values the store accepts for metric ``name``, in percent."""
    return SIGNED_METRICS.get(name, METRIC_RANGE)


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


@dataclass(frozen=True)
class MetricValue:
    """A score in percent (``METRIC_RANGE``) with its 95% interval (None where no interval
    applies), which contains the score."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
