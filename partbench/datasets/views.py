"""Views turn samples into encoder inputs: part crops by the study's rule, whole images,
and images with dense label maps. Every dataset goes through these same functions."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from partbench.datasets.base import Sample


def crop_rule(keypoints: np.ndarray, bounds: tuple[float, float]) -> list[tuple[int, float, float, int]]:
    """The study's crop rule for one image's visible keypoints.

    d is half the distance to the nearest other visible keypoint; a keypoint is kept when
    bounds[0] < d < bounds[1], and its crop is the square of half-side r = round(d / 2).
    Returns (part class, x, y, r) per kept keypoint.
    """
    if keypoints is None or len(keypoints) == 0:
        return []
    vis = keypoints[keypoints[:, 3] > 0]
    if len(vis) < 2:  # no other keypoint to measure against
        return []
    xy = vis[:, 1:3].astype(np.float64)
    dist = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    # Coincident keypoints do not count as each other's neighbour (the study's code
    # replaces zero distances the same way), and neither does the keypoint itself.
    dist[dist == 0] = np.inf
    d = dist.min(axis=1) / 2.0
    kept = []
    for (part, x, y, _), di in zip(vis, d, strict=True):
        if bounds[0] < di < bounds[1]:
            kept.append((int(part), float(x), float(y), round(di / 2.0)))
    return kept


# The crop rule's version: it enters the cache key of every crop pass (partbench.runner.execute).
# 2: corners rounded one by one, as PIL's Image.crop rounds them.
CROP_VERSION = "2"


def crop_box(x: float, y: float, r: int) -> tuple[int, int, int, int]:
    """The box the study's ``img.crop((x - r, y - r, x + r, y + r))`` cuts: PIL rounds each corner
    on its own (``Image._crop``: ``map(int, map(round, box))``, Python's round, halves to even).

    Rounding the centre first differs when a coordinate ends in .5 and r is odd: x = 2.5, r = 1
    is cut from round(1.5) = 2, where round(2.5) - 1 = 1.
    """
    x0, y0, x1, y1 = (round(float(v)) for v in (x - r, y - r, x + r, y + r))
    return x0, y0, x1, y1


def crop_square(image: np.ndarray, x: float, y: float, r: int) -> np.ndarray:
    """The square ``crop_box(x, y, r)``, zero-filled where it leaves the image (as PIL fills)."""
    x0, y0, x1, y1 = crop_box(x, y, r)
    out = np.zeros((y1 - y0, x1 - x0, image.shape[2]), dtype=image.dtype)
    h, w = image.shape[:2]
    sx0, sy0 = max(x0, 0), max(y0, 0)
    sx1, sy1 = min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


def part_crops(sample: Sample, bounds: tuple[float, float]) -> list[tuple[np.ndarray, int]]:
    return [
        (crop_square(sample.image, x, y, r), part) for part, x, y, r in crop_rule(sample.keypoints, bounds)
    ]


def resize_for_encoder(image: np.ndarray, size: int, transform: str) -> np.ndarray:
    """The study's probe transforms, scaled to the encoder's input size.

    "test": bicubic resize to size x size. "train": resize the short side to size * 256 / 224,
    then centre crop size x size (no random augmentation, so cached features stay exact).
    """
    pil = Image.fromarray(image)
    if transform == "test":
        return np.asarray(pil.resize((size, size), Image.BICUBIC))
    if transform != "train":
        raise ValueError(f"unknown transform '{transform}'")
    short = math.floor(size * 256 / 224 + 0.5)
    w, h = pil.size
    scale = short / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    pil = pil.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(pil.crop((left, top, left + size, top + size)))
