"""What a task asks of a dataset (View) and what it gets back (Features).

Light on purpose: tasks and plugins import these without the extraction engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

    from partbench.datasets.base import Dataset

VIEW_OUTPUTS = frozenset({"cls", "embedding", "projection", "tokens", "stages"})
MASK_SOURCES = ("part-masks", "object-masks")
FULL = 0  # mask resolution: the label map as the dataset gives it


@dataclass(frozen=True)
class View:
    """What a task needs from one split of a dataset.

    source: the dataset capability read ("keypoints" gives part crops; "images",
    "part-masks" and "object-masks" give whole images). role: "retrieval", "train" or
    "test". outputs: any of cls, embedding, projection, tokens, stages. stages: the stage
    indices of the "stages" output. masks: for mask sources, the label maps' resolution,
    FULL or at most that many times the feature grid (nearest), which is all a loss needs.
    """

    source: str
    role: str
    transform: str = "test"
    outputs: frozenset[str] = frozenset({"cls"})
    stages: tuple[int, ...] = ()
    masks: int | None = None

    @property
    def inputs(self) -> str:
        return "crops" if self.source == "keypoints" else "images"

    def merge_key(self, dataset: Dataset) -> tuple[str, str, str]:
        return (self.inputs, dataset.split_for(self.role), self.transform)


@dataclass
class Features:
    """Encoder outputs for every item of a view, with the labels the item carries."""

    arrays: dict[str, torch.Tensor]  # output -> (N, ...) on the CPU, memory-mapped; token maps float16
    labels: np.ndarray  # (N,) part class for crops, object class for images
    grid: tuple[int, int]
    masks: dict[str, Sequence[np.ndarray]] = field(default_factory=dict)  # capability -> label maps
    timing: dict[str, Any] = field(default_factory=dict)
    sample_index: np.ndarray | None = None  # (N,) the sample each item came from

    def __getitem__(self, output: str) -> torch.Tensor:
        return self.arrays[output]
