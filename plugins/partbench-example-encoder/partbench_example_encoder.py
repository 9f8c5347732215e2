"""A partbench plugin adding ``example-hog``: gradient-orientation histograms per 8 x 8 cell.

The module imports only partbench's light hook markers at import time; torch is imported
when the encoder is built, so that `partbench --help` and `partbench list` stay fast.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from partbench.hookspecs import hookimpl
from partbench.specs import EncoderRequest, EncoderSpec

CELL = 8
BINS = 9


def build(request: EncoderRequest):
    import math

    import torch
    import torch.nn.functional as F

    from partbench.encoders.base import Encoder, EncoderOutput

    class HogEncoder(Encoder):
        name = request.name
        family = "none"
        weights_id = "hand-crafted:hog-v1"
        input_size = 64
        patch_size = CELL
        embed_dim = BINS + 3
        depth = 1
        num_heads = 1

        def __init__(self) -> None:
            sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
            self.module = torch.nn.Module()
            self.module.register_buffer("kernel", torch.stack([sobel, sobel.T])[:, None])

        def forward(self, images: torch.Tensor, blocks: Sequence[int] = ()) -> EncoderOutput:
            mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
            rgb = images * std + mean  # undo the normalisation the runner applied
            grey = rgb.mean(dim=1, keepdim=True)
            g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), self.module.kernel)
            magnitude = g.norm(dim=1, keepdim=True)
            angle = torch.atan2(g[:, 1:], g[:, :1]) % math.pi  # unsigned orientation
            bins = (angle / math.pi * BINS).long().clamp(max=BINS - 1)
            hist = torch.zeros(images.shape[0], BINS, *grey.shape[-2:], device=images.device)
            hist.scatter_(1, bins, magnitude)
            cells = F.avg_pool2d(torch.cat([hist, rgb], dim=1), CELL)  # (B, BINS + 3, h, w)
            grid = (cells.shape[-2], cells.shape[-1])
            tokens = cells.flatten(2).transpose(1, 2)
            tokens = tokens / tokens.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            return EncoderOutput(
                cls=tokens.mean(dim=1),
                patch_tokens=tokens,
                grid=grid,
                blocks={b: tokens for b in blocks},
            )

    return HogEncoder()


@hookimpl
def register_encoders(register: Callable[[EncoderSpec], None]) -> None:
    register(
        EncoderSpec(
            name="example-hog",
            load=build,
            family="none",
            description="example plugin: gradient-orientation histograms per 8 x 8 cell",
            weights_source="none: hand-crafted",
        )
    )
