"""Input geometry of segmentation at a chosen resolution: the transform names a pass carries,
and the sliding windows of the study's inference.

The study's segmentation configs (mmsegmentation) resize a test image with its aspect kept so
that its short side is the crop size (long side at most four times it), cut crop x crop
windows at a stride, run the head on each window, add each window's logits (upsampled to the
window) into a canvas, divide every pixel by the number of windows that covered it, and resize
the canvas bilinearly to the label map. Window positions follow mmseg's ``slide_inference``:
``rows = max(H - crop + stride - 1, 0) // stride + 1`` (likewise columns), window ``k`` starts
at ``k * stride`` and the last one is pulled back so that it ends on the border.

A pass's transform is a string, part of its cache key and of the run's configuration:
``test`` and ``train`` are the encoder-size transforms of partbench/datasets/views.py (the
default, unchanged); ``test-N`` is the whole image resized to N x N; ``crop-S-W`` resizes the
short side to S and takes the centre W x W (a training window); ``slide-S-W-T`` resizes the
short side to S and gives every W x W window at stride T. Numpy and PIL only: DataLoader
workers run it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

LONG_SIDE = 4  # the long side is held to this many times the short side's target (mmseg: 2048 / 512)


@dataclass(frozen=True)
class Geometry:
    """A parsed non-default transform: ``kind`` is "test", "crop" or "slide"; ``size`` the
    square side (test) or short side (crop, slide); ``window`` and ``stride`` in pixels."""

    kind: str
    size: int
    window: int = 0
    stride: int = 0

    @property
    def encoder_size(self) -> int:
        """The input side the encoder runs at."""
        return self.size if self.kind == "test" else self.window

    @property
    def name(self) -> str:
        if self.kind == "test":
            return f"test-{self.size}"
        if self.kind == "crop":
            return f"crop-{self.size}-{self.window}"
        return f"slide-{self.size}-{self.window}-{self.stride}"


def parse(transform: str) -> Geometry | None:
    """The geometry of a sized transform, or None for the encoder-size ``test`` and ``train``."""
    if transform in ("test", "train"):
        return None
    kind, *numbers = transform.split("-")
    want = {"test": 1, "crop": 2, "slide": 3}.get(kind)
    if want is None or len(numbers) != want or not all(n.isdigit() and int(n) > 0 for n in numbers):
        raise ValueError(f"unknown transform '{transform}'")
    g = Geometry(kind, *map(int, numbers))
    if g.kind != "test" and g.window > g.size:
        raise ValueError(f"transform '{transform}': the window is larger than the short side")
    return g


def encoder_size(transform: str, own: int) -> int:
    """The side the encoder runs at under ``transform``: a sized transform's, else ``own``."""
    g = parse(transform)
    return own if g is None else g.encoder_size


def scaled_size(height: int, width: int, short: int) -> tuple[int, int]:
    """(height, width) after resizing with the aspect kept: the short side to ``short``, unless
    the long side would then pass LONG_SIDE * ``short`` (then the long side to that), as
    mmseg's ``Resize(keep_ratio=True)`` rescales (``int(side * scale + 0.5)``); never below
    ``short`` on either side, so that a window always fits."""
    scale = min(short / min(height, width), LONG_SIDE * short / max(height, width))
    return max(short, int(height * scale + 0.5)), max(short, int(width * scale + 0.5))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Where the windows along one axis start, as mmseg's ``slide_inference`` places them."""
    count = max(length - window + stride - 1, 0) // stride + 1
    starts = []
    for k in range(count):
        end = min(k * stride + window, length)
        starts.append(max(end - window, 0))
    return starts


def windows(height: int, width: int, window: int, stride: int) -> list[tuple[int, int]]:
    """The (top, left) corner of every window over a height x width image, row by row."""
    return [
        (y, x) for y in window_starts(height, window, stride) for x in window_starts(width, window, stride)
    ]


def apply(image: np.ndarray, g: Geometry) -> list[np.ndarray]:
    """The encoder inputs one image gives under ``g`` (bicubic, as the default transforms)."""
    pil = Image.fromarray(image)
    if g.kind == "test":
        return [np.asarray(pil.resize((g.size, g.size), Image.BICUBIC))]
    h, w = scaled_size(pil.size[1], pil.size[0], g.size)
    big = np.asarray(pil.resize((w, h), Image.BICUBIC))
    if g.kind == "crop":
        top, left = (h - g.window) // 2, (w - g.window) // 2
        return [big[top : top + g.window, left : left + g.window]]
    return [big[y : y + g.window, x : x + g.window] for y, x in windows(h, w, g.window, g.stride)]


def crop_mask(mask: np.ndarray, g: Geometry) -> np.ndarray:
    """The label map of a ``crop`` input: resized as the image (nearest), cropped alike."""
    h, w = scaled_size(mask.shape[0], mask.shape[1], g.size)
    big = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
    top, left = (h - g.window) // 2, (w - g.window) // 2
    return big[top : top + g.window, left : left + g.window]
