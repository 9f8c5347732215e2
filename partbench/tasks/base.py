"""The task interface: say which views of a dataset you need, then score their features.

A task is created with its options already typed and checked (``TaskSpec.create(options)``);
it never calls the encoder and never touches the store. ``evaluate`` runs on the run's device
and returns metrics with intervals, the chance level of the headline metric on the same
items, and the per-item results that let scores be recomputed and compared later.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from partbench.datasets.base import Dataset
from partbench.encoders.base import Encoder
from partbench.features import Features, View
from partbench.specs import MetricValue


@dataclass
class TaskResult:
    metrics: dict[str, MetricValue]  # scores in percent, each with its 95% interval
    n_items: int  # test items (or queries) the headline metric was computed over
    items_per_class: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Per-item results, in the dataset's item order (see partbench.metrics.items.score_from_items):
    # mAP: ap, label; top1: correct, label; mIoU: intersection, union (items x classes);
    # PCK@0.10: correct, pair (one row per keypoint; the pairs are the items resampled).
    items: dict[str, np.ndarray] = field(default_factory=dict)
    chance: dict[str, float] = field(default_factory=dict)  # metric -> chance level, percent


class Task:
    """Subclasses set ``source`` (the dataset capability they read) and implement both methods."""

    source: str

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options: dict[str, Any] = dict(options or {})

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        raise NotImplementedError

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        *,
        device: torch.device,
        seed: int,
        repeats: int = 1,
    ) -> TaskResult:
        raise NotImplementedError


def counts_by_class(labels: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    values, counts = np.unique(labels, return_counts=True)
    return {
        (names[v] if 0 <= v < len(names) else str(v)): int(c) for v, c in zip(values, counts, strict=True)
    }


def percent(value: float, ci: tuple[float, float]) -> MetricValue:
    return MetricValue(100 * value, 100 * ci[0], 100 * ci[1])
