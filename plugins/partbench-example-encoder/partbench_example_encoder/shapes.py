"""example-shapes: discs, squares, triangles and crosses on noise, each with its object mask."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from partbench.api import IGNORE, Dataset, LazySamples, PartbenchError, Sample

SHAPES = ("disc", "square", "triangle", "cross")
VERSION = 1  # bump when a rendered image changes: it enters the fingerprint
SIZE = 64


def render(seed: int, split: str, index: int) -> Sample:
    rng = np.random.default_rng([seed, ("train", "test").index(split), index])
    label = index % len(SHAPES)  # balanced classes
    ys, xs = np.mgrid[:SIZE, :SIZE] + 0.5
    cx, cy = rng.uniform(0.3, 0.7, 2) * SIZE
    radius = rng.uniform(0.15, 0.3) * SIZE
    dx, dy = (xs - cx) / radius, (ys - cy) / radius
    inside = (
        dx**2 + dy**2 <= 1,
        np.maximum(abs(dx), abs(dy)) <= 0.8,
        (dy <= 0.7) & (abs(dx) * 1.4 <= dy + 0.9),
        (np.minimum(abs(dx), abs(dy)) <= 0.3) & (np.maximum(abs(dx), abs(dy)) <= 1),
    )[label]
    image = rng.integers(0, 256, 3) * 0.4 + rng.normal(0, 8, (SIZE, SIZE, 3))
    image[inside] = rng.integers(0, 256, 3)
    image = image.clip(0, 255).astype(np.uint8)
    mask = np.where(inside, label, IGNORE).astype(np.uint8)
    return Sample(image=image, key=f"{split}/{index}", label=label, object_mask=mask)


class Shapes(Dataset):
    name = "example-shapes"
    capabilities = frozenset({"images", "object-masks"})
    object_classes = SHAPES
    object_seg_classes = SHAPES

    def __init__(self, seed: int = 0, train: int = 64, test: int = 32) -> None:
        self.seed, self.counts = seed, {"train": train, "test": test}

    def samples(self, split: str) -> LazySamples[Sample]:
        if split not in self.counts:
            raise KeyError(f"{self.name} has splits {sorted(self.counts)}, not '{split}'")
        return LazySamples(self.counts[split], lambda i: render(self.seed, split, i))

    def fingerprint(self) -> str:
        config = {"version": VERSION, "seed": self.seed, **self.counts}
        return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def load(root: Path | None, **options: str) -> Shapes:
    """``--dataset-option seed=1`` (and train=, test=) arrive here as strings."""
    unknown = sorted(set(options) - {"seed", "train", "test"})
    if unknown:
        raise PartbenchError(f"example-shapes: unknown option {', '.join(unknown)}; known: seed, train, test")
    try:
        return Shapes(**{k: int(v) for k, v in options.items()})
    except ValueError as exc:
        raise PartbenchError(f"example-shapes: options are whole numbers ({exc})") from None
