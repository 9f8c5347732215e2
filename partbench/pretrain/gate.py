"""The gate a pretrained file passes before it ships: it must have learned something.

A k-nearest-neighbour classifier (cosine, k = 20) on SynParts' benchmark splits (train ->
test) reads the trained backbone's features and, as the floor, the same architecture at its
random initialisation. The file passes when the paired 95% bootstrap interval of the
per-item difference in top-1 lies above 0. kNN has no training of its own, so it says what
the features hold without a probe's budget deciding the answer.

The gate reads the level the method is meant to serve (``Mini.serves``): object classes of
whole images for the supervised encoders, part classes of the benchmark's part crops (the
study's crop rule, resized as the benchmark resizes them) for the self-supervised ones. An
object-level gate fails a masked-image model that learned parts and nothing about objects,
which is what MIM is expected to do.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

K = 20
GATE_TRAIN, GATE_TEST = 640, 320  # SynParts' benchmark images rendered for the gate
LEVELS = ("object", "part")


def rule(level: str) -> str:
    items = "images" if level == "object" else "images' part crops"
    return (
        f"kNN (k={K}, cosine) {level} top-1 on SynParts train -> test ({GATE_TRAIN} -> {GATE_TEST} "
        f"{items}); passes when the paired 95% bootstrap interval of trained minus random "
        "initialisation lies above 0"
    )


@dataclass(frozen=True)
class GateResult:
    level: str  # "object" (whole images) or "part" (part crops)
    feature: str  # "cls" or "mean-patch" (ViT) or "avgpool" (CNN)
    knn_top1: float  # percent, the trained backbone
    floor_top1: float  # percent, the same architecture at its random initialisation
    difference: float  # points
    low: float
    high: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        return {k: round(v, 2) if isinstance(v, float) else v for k, v in asdict(self).items()}


@functools.cache
def _items(level: str, split: str, n: int) -> tuple[torch.Tensor, np.ndarray]:
    """The benchmark's SynParts images (object level) or their part crops (part level), at the
    minis' input size; cached because every gate of a ``ship --method all`` reads the same ones."""
    from partbench.datasets.synparts import SynParts
    from partbench.datasets.views import part_crops, resize_for_encoder
    from partbench.encoders.vit import MINI_SIZE
    from partbench.pretrain.data import normalize

    if level not in LEVELS:
        raise ValueError(f"unknown gate level '{level}'; choose from {LEVELS}")
    data = SynParts(**{split: n})
    samples = list(data.samples(split))
    if level == "object":
        images = np.stack([s.image for s in samples])
        labels = np.array([s.label for s in samples])
    else:
        crops = [c for s in samples for c in part_crops(s, data.crop_bounds)]
        images = np.stack([resize_for_encoder(img, MINI_SIZE, "test") for img, _ in crops])
        labels = np.array([part for _, part in crops])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != MINI_SIZE:
        x = F.interpolate(x, size=(MINI_SIZE,) * 2, mode="bilinear", antialias=True, align_corners=False)
    return normalize(x), labels


@torch.no_grad()
def _features(backbone: nn.Module, x: torch.Tensor, feature: str) -> torch.Tensor:
    backbone.eval()
    out = torch.cat([backbone.forward_features(x[i : i + 256]) for i in range(0, len(x), 256)])
    if feature == "avgpool":
        return out.mean(dim=(2, 3))
    return out[:, 0] if feature == "cls" else out[:, 1:].mean(1)


def knn_correct(train: torch.Tensor, y_train: np.ndarray, test: torch.Tensor, k: int = K) -> np.ndarray:
    """Per test item: is the similarity-weighted vote of its k nearest training items right?"""
    sims = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T
    top, idx = sims.topk(k, dim=1)
    votes = torch.zeros(len(test), int(y_train.max()) + 1)
    votes.scatter_add_(1, torch.as_tensor(y_train)[idx], top.exp())
    return votes.argmax(1).numpy()


def gate(backbone: nn.Module, floor: nn.Module, feature: str, level: str = "object") -> GateResult:
    """Compare ``backbone`` with ``floor`` (the same architecture, untrained) by kNN top-1 at
    ``level``."""
    from partbench.metrics.resampling import paired_bootstrap

    x_tr, y_tr = _items(level, "train", GATE_TRAIN)
    x_te, y_te = _items(level, "test", GATE_TEST)
    correct = {}
    for name, model in (("trained", backbone), ("floor", floor)):
        pred = knn_correct(_features(model, x_tr, feature), y_tr, _features(model, x_te, feature))
        correct[name] = {"correct": (pred == y_te).astype(np.float64), "label": y_te}
    diff, low, high = paired_bootstrap("top1", correct["trained"], correct["floor"])
    return GateResult(
        level,
        feature,
        100 * float(correct["trained"]["correct"].mean()),
        100 * float(correct["floor"]["correct"].mean()),
        diff,
        low,
        high,
        passed=low > 0,
    )
