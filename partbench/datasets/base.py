"""The dataset interface. A dataset hands out samples per split; partbench's views (views.py)
turn them into what tasks consume, so the crop rule and label handling live in one place."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

if TYPE_CHECKING:  # numpy arrives with the samples: dataset modules import without it
    import numpy as np

if TYPE_CHECKING:
    from partbench.datasets.pairs import KeypointPair

IGNORE = 255  # label-map value that no metric or loss counts

T = TypeVar("T")


@dataclass
class Sample:
    """One image and whatever the dataset annotates on it; absent annotations stay None."""

    image: np.ndarray  # H x W x 3, uint8, RGB
    key: str  # names the item (file name, index) in error messages
    label: int | None = None  # object class, 0-based
    # K x 4 float array: part class (0-based), x, y, visible (1/0); pixel coordinates
    keypoints: np.ndarray | None = None
    part_mask: np.ndarray | None = None  # H x W integer map, part classes 0-based, 255 ignore
    object_mask: np.ndarray | None = None  # H x W integer map, object classes 0-based, 255 ignore


class LazySamples(Sequence, Generic[T]):
    """A sequence that builds item i only when asked, so --limit and large sets stay cheap."""

    def __init__(self, n: int, get: Callable[[int], T]):
        self._n, self._get = n, get

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._get(j) for j in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        return self._get(i % self._n)


class Dataset:
    """What a dataset declares and provides. Readers subclass it and implement ``samples``."""

    name: str
    capabilities: frozenset[str]
    object_classes: Sequence[str] = ()  # for "images" (classification, retrieval)
    part_classes: Sequence[str] = ()  # for "keypoints" (crops)
    part_seg_classes: Sequence[str] = ()  # for "part-masks"
    object_seg_classes: Sequence[str] = ()  # for "object-masks"
    # Which split each role reads. The study retrieves over all CUB images but COCO train2017.
    splits: ClassVar[Mapping[str, str]] = {"retrieval": "test", "train": "train", "test": "test"}
    # The study keeps a keypoint when 20 < d < 1000 pixels (d: half the nearest-keypoint distance).
    crop_bounds: tuple[float, float] = (20.0, 1000.0)

    def samples(self, split: str) -> Sequence[Sample]:
        raise NotImplementedError

    def split_for(self, role: str) -> str:
        return self.splits[role]

    def positions(self, split: str, within: str) -> Sequence[int] | None:
        """Where each sample of ``split`` sits among the samples of ``within``, when every one
        of them is there (CUB's test images are among its ``all`` images); None otherwise.
        The runner then cuts a pass over ``split`` out of one over ``within`` instead of
        encoding the same images twice."""
        return None

    def fingerprint(self) -> str:
        """A short hash that tells two copies or versions of the data apart."""
        raise NotImplementedError

    def prepare(self, workers: int = 1) -> None:
        """Work done once, in up to ``workers`` processes, so that the processes reading this
        dataset afterwards (a study's lanes, the next command) share it instead of each doing
        it. Called for built-in data by the runner before a pass encodes and by the study before
        its lanes; a second call on the same object returns at once. Most datasets read files
        and have none."""

    def prepare_bytes(self) -> int:
        """What ``prepare`` would write now, in bytes (0: nothing), for a dry run to count."""
        return 0

    def keypoint_pairs(self, split: str, within: int | None = None) -> Sequence[KeypointPair]:
        """The ``keypoint-pairs`` capability: pairs of samples of ``split`` with corresponding
        keypoints (partbench.datasets.pairs), in a fixed order; with ``within``, only the pairs
        of the first ``within`` samples (what a ``--limit`` run encoded)."""
        raise NotImplementedError

    def classes_for(self, view: str) -> Sequence[str]:
        return {
            "images": self.object_classes,
            "keypoint-pairs": self.object_classes,
            "keypoints": self.part_classes,
            "part-masks": self.part_seg_classes,
            "object-masks": self.object_seg_classes,
        }[view]
