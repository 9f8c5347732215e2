"""example-hog: per cell, a histogram of gradient orientations and the mean colour."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from partbench.api import Encoder, EncoderOutput, Stage

BINS = 9  # unsigned orientations, 20 degrees each
WIDTH = BINS + 3  # the histogram, then the cell's mean colour


class HogEncoder(Encoder):
    """No learning at all: a floor that a pretrained encoder should clear on parts. Two real
    stages, 4 x 4 and 8 x 8 pixel cells; the final map is the coarser one; no class token."""

    family = "none"
    weights_id = "hand-crafted:hog-v2"
    input_size = 64
    stages = (Stage(0, "cells4", WIDTH, 4), Stage(1, "cells8", WIDTH, 8))
    pooled_kind = "avgpool"
    version = "2"

    def __init__(self, name: str) -> None:
        self.name = name
        sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
        self.module = torch.nn.Module()  # holds the buffers, so that .to(device) moves them
        self.module.register_buffer("kernel", torch.stack([sobel, sobel.T])[:, None])

    def forward(self, images: torch.Tensor, stages: Sequence[int] = ()) -> EncoderOutput:
        self.check_stages(stages)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        rgb = images.float() * std + mean  # undo the normalisation the runner applied
        grey = rgb.mean(dim=1, keepdim=True)
        g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), self.module.kernel)
        angle = torch.atan2(g[:, 1:], g[:, :1]) % math.pi
        bins = (angle / math.pi * BINS).long().clamp(max=BINS - 1)
        hist = torch.zeros(images.shape[0], BINS, *grey.shape[-2:], device=images.device)
        hist.scatter_(1, bins, g.norm(dim=1, keepdim=True))
        pixels = torch.cat([hist, rgb], dim=1)
        maps = [F.normalize(F.avg_pool2d(pixels, s.stride), dim=1) for s in self.stages]
        final = maps[-1]
        return EncoderOutput(pooled=final.mean(dim=(2, 3)), final=final, stages={i: maps[i] for i in stages})
