"""Keypoint pairs: two images of one class and the keypoints annotated on both, the unit of
semantic correspondence. A dataset with published pairs (SPair-71k) lists its own; one
with keypoints per image forms same-class pairs deterministically (``same_class_pairs``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# The seed of the pairs a dataset forms itself: the pairs are part of the data, the same
# for every run, whatever the run's own seed.
PAIR_SEED = 0


@dataclass(frozen=True)
class KeypointPair:
    """Indices into ``samples(split)`` and, for each keypoint annotated on both images, its
    location in each (pixels of the original images, x then y)."""

    source: int
    target: int
    source_xy: np.ndarray  # (K, 2) float
    target_xy: np.ndarray  # (K, 2) float
    source_size: tuple[int, int]  # (width, height)
    target_size: tuple[int, int]
    target_box: tuple[float, float, float, float]  # x0, y0, x1, y1 of the target's object
    label: int = 0  # object class
    keypoint_ids: np.ndarray | None = None  # (K,) which keypoint of the class each row is
    # Difficulty flags of the pair (SPair-71k: viewpoint_variation, scale_variation, ...).
    flags: Mapping[str, int] = field(default_factory=dict)
    key: str = ""  # names the pair in error messages


@dataclass(frozen=True)
class ImageKeypoints:
    """What pair formation needs of one image: no pixels."""

    label: int
    keypoints: np.ndarray  # (K, 4): part, x, y, visible (Sample.keypoints)
    size: tuple[int, int]  # (width, height)
    box: tuple[float, float, float, float]


def same_class_pairs(images: Sequence[ImageKeypoints], seed: int = PAIR_SEED) -> list[KeypointPair]:
    """One pair for each image that has an earlier image of its class sharing a visible
    keypoint: image i is the source, the target drawn uniformly from those earlier images by a
    generator seeded with (seed, i). Keypoint rows correspond by position (a class annotates
    the same keypoints in the same order) where their part ids agree.

    Drawing among earlier images makes the pairs of the first n images exactly the pairs
    formed within them: a run limited to n images scores a subset of the full run's pairs."""
    pairs: list[KeypointPair] = []
    by_class: dict[int, list[int]] = {}
    for i, image in enumerate(images):
        earlier = by_class.setdefault(image.label, [])
        usable = [j for j in earlier if _shared(image.keypoints, images[j].keypoints).any()]
        earlier.append(i)
        if not usable:
            continue
        j = usable[int(np.random.default_rng([seed, i]).integers(len(usable)))]
        both = _shared(image.keypoints, images[j].keypoints)
        rows = np.flatnonzero(both)
        pairs.append(
            KeypointPair(
                source=i,
                target=j,
                source_xy=image.keypoints[rows, 1:3].astype(np.float64),
                target_xy=images[j].keypoints[rows, 1:3].astype(np.float64),
                source_size=image.size,
                target_size=images[j].size,
                target_box=images[j].box,
                label=image.label,
                keypoint_ids=rows.astype(np.int64),
                key=f"pair {len(pairs)} (images {i} and {j})",
            )
        )
    return pairs


def _shared(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows visible in both keypoint arrays whose part ids agree."""
    n = min(len(a), len(b))
    a, b = np.asarray(a[:n]), np.asarray(b[:n])
    return (a[:, 3] > 0) & (b[:, 3] > 0) & (a[:, 0] == b[:, 0])


def mask_box(mask: np.ndarray, ignore: int) -> tuple[float, float, float, float]:
    """The box around a label map's labelled pixels (pixel edges), or the whole map if none."""
    ys, xs = np.nonzero(np.asarray(mask) != ignore)
    if len(xs) == 0:
        h, w = np.shape(mask)
        return (0.0, 0.0, float(w), float(h))
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
