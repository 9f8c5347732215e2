"""The task interface: say which views of a dataset you need, then score their features."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from partbench.datasets.base import Dataset
from partbench.encoders.base import Encoder
from partbench.extraction import Features, View
from partbench.store import MetricValue


@dataclass
class TaskResult:
    metrics: dict[str, MetricValue]  # scores in percent, each with its 95% interval
    n_items: int  # test items (or queries) the headline metric was computed over
    items_per_class: dict[str, int] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


class Task:
    """Subclasses set ``source`` (the dataset capability they read) and implement both methods."""

    source: str

    def views(self, dataset: Dataset, encoder: Encoder, options: Mapping[str, Any]) -> dict[str, View]:
        raise NotImplementedError

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        options: Mapping[str, Any],
        *,
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
