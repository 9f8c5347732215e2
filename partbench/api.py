"""partbench's public API: the one module a plugin imports from.

Everything a plugin needs to add an encoder, a task, a dataset or a suite is here; every other
module of partbench is internal and may change between versions.

Importing this module imports no torch (nor numpy): the names that need them (``Task``,
``TaskResult``, ``View``, ``Features``, ``Dataset``, ``Sample``, ``LazySamples``,
``TimmEncoder``, the metrics) are loaded on first use, so a plugin that imports them inside its
``load`` / ``create`` callables keeps ``partbench --help`` and ``partbench list`` fast.
Importing them at a plugin's module level works too; it only makes start-up slower.

``API_VERSION`` is the plugin API this module provides; a plugin states the version it was
written for with a module-level ``PARTBENCH_API``. What each version promised and how a plugin
written for the previous one is adapted (or refused, with what changed) is in
partbench.api_versions and the migration section of the plugin docs.

    from partbench.api import EncoderSpec, hookimpl

    PARTBENCH_API = 2  # the plugin API version this plugin is written for (API_VERSION)

    @hookimpl
    def register_encoders(register):
        register(EncoderSpec(name="my-encoder", load=build, family="none"))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from partbench.api_versions import API_VERSION
from partbench.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderOutput, Stage
from partbench.errors import CheckpointError, DataError, PartbenchError
from partbench.hookspecs import hookimpl
from partbench.specs import (
    CAPABILITIES,
    FAMILIES,
    LEVELS,
    DatasetSpec,
    EncoderRequest,
    EncoderSpec,
    MetricValue,
    SuiteSpec,
    TaskOption,
    TaskSpec,
)

# name -> the module it lives in; imported on first access (see __getattr__).
_LAZY: dict[str, str] = {
    # any timm model (with feature_info and forward_intermediates) as an Encoder
    "TimmEncoder": "partbench.encoders.timm_adapter",
    # tasks
    "Task": "partbench.tasks.base",
    "TaskResult": "partbench.tasks.base",
    "counts_by_class": "partbench.tasks.base",
    "percent": "partbench.tasks.base",
    # what tasks read
    "View": "partbench.features",
    "Features": "partbench.features",
    # datasets
    "Dataset": "partbench.datasets.base",
    "Sample": "partbench.datasets.base",
    "LazySamples": "partbench.datasets.base",
    "IGNORE": "partbench.datasets.base",
    # metrics: plain functions on arrays
    "metrics": "partbench.metrics",
    "retrieval_ap": "partbench.metrics",
    "mean_ap_per_class": "partbench.metrics",
    "top1": "partbench.metrics",
    "intersection_union": "partbench.metrics",
    "miou": "partbench.metrics",
    "miou_from_counts": "partbench.metrics",
    "bootstrap_ci": "partbench.metrics",
    "score_from_items": "partbench.metrics",
    "paired_bootstrap": "partbench.metrics",
    "level_bootstrap": "partbench.metrics",
    "paired_level_bootstrap": "partbench.metrics",
    "chance_retrieval_ap": "partbench.metrics",
    "chance_top1": "partbench.metrics",
    "chance_miou": "partbench.metrics",
}

__all__ = [
    "API_VERSION",
    "CAPABILITIES",
    "FAMILIES",
    "IGNORE",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LEVELS",
    "CheckpointError",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "Encoder",
    "EncoderOutput",
    "EncoderRequest",
    "EncoderSpec",
    "Features",
    "LazySamples",
    "MetricValue",
    "PartbenchError",
    "Sample",
    "Stage",
    "SuiteSpec",
    "Task",
    "TaskOption",
    "TaskResult",
    "TaskSpec",
    "TimmEncoder",
    "View",
    "bootstrap_ci",
    "chance_miou",
    "chance_retrieval_ap",
    "chance_top1",
    "counts_by_class",
    "hookimpl",
    "intersection_union",
    "level_bootstrap",
    "mean_ap_per_class",
    "metrics",
    "miou",
    "miou_from_counts",
    "paired_bootstrap",
    "paired_level_bootstrap",
    "percent",
    "retrieval_ap",
    "score_from_items",
    "top1",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'partbench.api' has no attribute '{name}'")
    loaded = importlib.import_module(module)
    value = loaded if name == "metrics" else getattr(loaded, name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and editors: the lazy names as ordinary imports
    from partbench import metrics
    from partbench.datasets.base import IGNORE, Dataset, LazySamples, Sample
    from partbench.encoders.timm_adapter import TimmEncoder
    from partbench.features import Features, View
    from partbench.metrics import (
        bootstrap_ci,
        chance_miou,
        chance_retrieval_ap,
        chance_top1,
        intersection_union,
        level_bootstrap,
        mean_ap_per_class,
        miou,
        miou_from_counts,
        paired_bootstrap,
        paired_level_bootstrap,
        retrieval_ap,
        score_from_items,
        top1,
    )
    from partbench.tasks.base import Task, TaskResult, counts_by_class, percent
