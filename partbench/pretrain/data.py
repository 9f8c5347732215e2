"""Pretraining images and their augmentations, done on whole batches in torch.

Every random choice draws from an explicit ``torch.Generator`` so that a run is a pure
function of its seed. Augmentation strengths follow the methods' ImageNet recipes; sizes in
pixels (blur sigma, crop sizes) are scaled from 224 px to the mini ViT's 64 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from partbench.encoders.base import IMAGENET_MEAN, IMAGENET_STD

# A split name SynParts never evaluates on ("train" and "test" are the benchmark's splits).
PRETRAIN_SPLIT = "pretrain"
SOURCE_SIZE = 96  # SynParts' default render size; crops are resampled from it
GLOBAL_SIZE = 64  # the mini ViT's input size
LOCAL_SIZE = 32  # a 4 x 4 patch grid, about DINO's 96/224 local crop at this scale
_PIXEL_SCALE = GLOBAL_SIZE / 224


@dataclass
class PretrainImages:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64 object classes; only the supervised recipe reads them

    def __len__(self) -> int:
        return len(self.labels)


def load_pretrain_images(
    n: int,
    *,
    data_seed: int = 0,
    size: int = SOURCE_SIZE,
    split: str = PRETRAIN_SPLIT,
    cache: bool = True,
) -> PretrainImages:
    """``n`` SynParts images of ``split``, kept in PARTBENCH_HOME/cache (``cache``) as the
    benchmark's own renders are."""
    if split == "test":
        raise ValueError("pretraining on the test split would leak the benchmark into the encoder")
    from partbench.datasets import synparts

    load = synparts.load_or_draw if cache else synparts.draw
    renders = load(data_seed, {split: n}, size)[split]
    return PretrainImages(
        torch.from_numpy(renders.images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(renders.labels)
    )


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def _coin(n: int, p: float, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=gen) < p


def random_resized_crop(
    images: torch.Tensor,
    out: int,
    scale: tuple[float, float],
    gen: torch.Generator,
    flip: bool = True,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Float images (B, 3, H, W) in [0, 1] -> (B, 3, out, out): one crop per image, in one
    ``grid_sample`` call. Area fraction and log aspect ratio are uniform as in torchvision;
    crops that would leave the image are clamped instead of re-drawn."""
    b = images.shape[0]
    area = _uniform(b, *scale, gen)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), gen)
    w = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)
    h = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    cx = (1 - w) * torch.rand(b, generator=gen) + w / 2  # crop centre, in [0, 1] image units
    cy = (1 - h) * torch.rand(b, generator=gen) + h / 2
    sx = w * torch.where(_coin(b, 0.5, gen), -1.0, 1.0) if flip else w
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sx, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, 2 * cy - 1
    grid = F.affine_grid(theta, [b, 3, out, out], align_corners=False)
    # Bilinear sampling does not low-pass when a crop shrinks; a matched pre-blur would cost
    # a second pass, and the aliasing is a weak, random augmentation of its own.
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
# RGB <-> YIQ: a hue shift is a rotation of the (I, Q) chroma plane.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_INV = torch.linalg.inv(_YIQ)


def _gray(x: torch.Tensor) -> torch.Tensor:
    return (x * _GRAY).sum(1, keepdim=True)


def color_jitter(
    x: torch.Tensor,
    gen: torch.Generator,
    p: float = 0.8,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.2,
    hue: float = 0.1,
) -> torch.Tensor:
    """torchvision's ColorJitter(0.4, 0.4, 0.2, 0.1) applied with probability p, per image."""
    b = x.shape[0]
    col = lambda v: v.view(b, 1, 1, 1)  # noqa: E731
    y = x * col(_uniform(b, 1 - brightness, 1 + brightness, gen))
    y = y.clamp(0, 1)
    mean = _gray(y).mean(dim=(2, 3), keepdim=True)
    y = (mean + (y - mean) * col(_uniform(b, 1 - contrast, 1 + contrast, gen))).clamp(0, 1)
    g = _gray(y)
    y = (g + (y - g) * col(_uniform(b, 1 - saturation, 1 + saturation, gen))).clamp(0, 1)
    angle = _uniform(b, -hue, hue, gen) * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.zeros(b, 3, 3)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    m = _YIQ_INV @ rot @ _YIQ  # (b, 3, 3)
    y = torch.bmm(m, y.reshape(b, 3, -1)).reshape_as(y).clamp(0, 1)
    return torch.where(col(_coin(b, p, gen)), y, x)


def random_grayscale(x: torch.Tensor, gen: torch.Generator, p: float = 0.2) -> torch.Tensor:
    keep = _coin(x.shape[0], p, gen).view(-1, 1, 1, 1)
    return torch.where(keep, _gray(x).expand_as(x), x)


def gaussian_blur(
    x: torch.Tensor, gen: torch.Generator, p: float, sigma: tuple[float, float] = (0.1, 2.0)
) -> torch.Tensor:
    """Blur with a per-image sigma (given for 224 px, scaled to this resolution)."""
    b, c, _, _ = x.shape
    apply = _coin(b, p, gen)
    s = _uniform(b, sigma[0] * _PIXEL_SCALE, sigma[1] * _PIXEL_SCALE, gen)
    if not apply.any():
        return x
    radius = max(1, math.ceil(3 * sigma[1] * _PIXEL_SCALE))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * s[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (b*c, 2r+1)
    y = x.reshape(1, b * c, *x.shape[2:])
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, :, None], groups=b * c).reshape_as(x)
    return torch.where(apply.view(-1, 1, 1, 1), y, x)


def solarize(x: torch.Tensor, gen: torch.Generator, p: float) -> torch.Tensor:
    apply = _coin(x.shape[0], p, gen).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= 0.5), 1 - x, x)


def normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255.0


# SynParts draws every palette (background, body, each part) uniformly over hue, so colour
# identifies an image; a hue jitter over the whole circle takes that shortcut away from
# instance discrimination (recipes that set it say what it changed).
FULL_HUE = 0.5


def ssl_view(
    images: torch.Tensor,
    gen: torch.Generator,
    *,
    size: int,
    scale: tuple[float, float],
    blur: float,
    solar: float,
    hue: float = 0.1,
) -> torch.Tensor:
    """The BYOL-style view that MoCo v3, DINO and iBOT share: crop, flip, colour jitter (hue
    shift up to ``hue`` turns), grayscale, blur and solarisation with view-specific
    probabilities; then normalise."""
    return photometric(random_resized_crop(to_float(images), size, scale, gen), gen, blur, solar, hue)


def photometric(x: torch.Tensor, gen: torch.Generator, blur: float, solar: float, hue: float) -> torch.Tensor:
    """The colour half of ssl_view, on crops already cut: colour jitter, grayscale, blur and
    solarisation with the given probabilities; then normalise."""
    x = random_grayscale(color_jitter(x, gen, hue=hue), gen)
    x = solarize(gaussian_blur(x, gen, blur), gen, solar)
    return normalize(x)


BYOL_SCALE = (0.08, 1.0)
BYOL_COLOUR = ({"blur": 1.0, "solar": 0.0}, {"blur": 0.1, "solar": 0.2})  # the two views'


def byol_pair(images: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """BYOL's asymmetric pair at the mini's size (crop scale 0.08-1; blur 1.0 on the first view,
    blur 0.1 and solarisation 0.2 on the second), with the hue jitter spanning the whole colour
    circle: SynParts colours every region with a uniformly random hue, so BYOL's +-0.1 turn
    leaves two views of one image told apart from the others by colour alone."""
    views = {"size": GLOBAL_SIZE, "scale": BYOL_SCALE, "hue": FULL_HUE}
    return [ssl_view(images, gen, **colour, **views) for colour in BYOL_COLOUR]


def byol_crops(images: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """The two crops of BYOL's pair, not yet coloured (photometric colours them, once or more)."""
    return [random_resized_crop(to_float(images), GLOBAL_SIZE, BYOL_SCALE, gen) for _ in BYOL_COLOUR]


def byol_colours(crops: list[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """Each of byol_crops' crops coloured as its view of BYOL's pair, hue over the whole circle."""
    return [photometric(c, gen, hue=FULL_HUE, **colour) for c, colour in zip(crops, BYOL_COLOUR, strict=True)]


# DINO's global crops cover (0.4, 1) of a 224 px ImageNet image, often a whole object; a
# SynParts object fills most of the frame, so the boundary between global and local crops
# sits a little lower to keep local crops at the scale of one or two parts.
GLOBAL_SCALE = (0.32, 1.0)
LOCAL_SCALE = (0.05, 0.32)


def multi_crop(
    images: torch.Tensor, gen: torch.Generator, n_local: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """DINO's views: two 64 px global crops (blur 1.0 / blur 0.1 + solarise 0.2) and
    ``n_local`` 32 px local crops (blur 0.5)."""
    globals_ = [
        ssl_view(images, gen, size=GLOBAL_SIZE, scale=GLOBAL_SCALE, blur=1.0, solar=0.0),
        ssl_view(images, gen, size=GLOBAL_SIZE, scale=GLOBAL_SCALE, blur=0.1, solar=0.2),
    ]
    locals_ = [
        ssl_view(images, gen, size=LOCAL_SIZE, scale=LOCAL_SCALE, blur=0.5, solar=0.0) for _ in range(n_local)
    ]
    return globals_, locals_
