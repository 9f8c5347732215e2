"""The encoder interface: a batch of normalised images in; class token, patch tokens with their
grid, an optional projection and optional intermediate blocks out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderOutput:
    cls: torch.Tensor  # (B, D), after the final norm
    patch_tokens: torch.Tensor  # (B, N, D), after the final norm, prefix tokens removed
    grid: tuple[int, int]  # N = grid[0] * grid[1]
    projection: torch.Tensor | None = None  # (B, P), the projection head on the class token
    blocks: dict[int, torch.Tensor] = field(default_factory=dict)  # 1-based block -> (B, N, D)

    @property
    def embedding(self) -> torch.Tensor:
        """The study's 'embedding' feature: the mean of the patch tokens."""
        return self.patch_tokens.mean(dim=1)


class Encoder:
    """What every encoder declares and does. Subclasses implement ``forward``."""

    name: str
    family: str
    weights_id: str  # "sha256:<hex>" of the weights file, or "random-init:seed=<n>"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    module: nn.Module  # everything with parameters, so that .to() and .eval() reach it

    @property
    def has_projection(self) -> bool:
        return False

    def forward(self, images: torch.Tensor, blocks: Sequence[int] = ()) -> EncoderOutput:
        raise NotImplementedError

    def to(self, device: torch.device | str) -> Encoder:
        self.module.to(device)
        return self

    def eval(self) -> Encoder:
        self.module.eval()
        return self

    def describe(self) -> dict[str, Any]:
        """Everything about the encoder that changes a feature, for the run record."""
        return {
            "name": self.name,
            "family": self.family,
            "weights_id": self.weights_id,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "patch_size": self.patch_size,
            "embed_dim": self.embed_dim,
            "depth": self.depth,
            "has_projection": self.has_projection,
            "parameters": sum(p.numel() for p in self.module.parameters()),
        }


class _Bundle(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.head = head


class TimmEncoder(Encoder):
    """Any timm ViT-style model (VisionTransformer, Beit, Eva) with an optional projection head."""

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        family: str,
        weights_id: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        projection: nn.Module | None = None,
    ):
        self.module = _Bundle(model, projection)
        self.name, self.family, self.weights_id = name, family, weights_id
        self.mean, self.std = tuple(mean), tuple(std)  # type: ignore[assignment]
        patch = model.patch_embed.patch_size
        self.patch_size = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        img = model.patch_embed.img_size
        self.input_size = int(img[0] if isinstance(img, (tuple, list)) else img)
        self.embed_dim = int(model.embed_dim)
        self.depth = len(model.blocks)
        self.num_heads = int(model.blocks[0].attn.num_heads)
        self.prefix = int(getattr(model, "num_prefix_tokens", 1))
        self.has_cls = getattr(model, "cls_token", None) is not None

    @property
    def model(self) -> nn.Module:
        return self.module.backbone

    @property
    def has_projection(self) -> bool:
        return self.module.head is not None

    def forward(self, images: torch.Tensor, blocks: Sequence[int] = ()) -> EncoderOutput:
        if blocks:
            bad = [b for b in blocks if not 1 <= b <= self.depth]
            if bad:
                raise ValueError(f"{self.name} has blocks 1..{self.depth}; asked for {bad}")
            final, inter = self.model.forward_intermediates(
                images, indices=[b - 1 for b in blocks], norm=False, output_fmt="NLC"
            )
            block_tokens = dict(zip(blocks, inter, strict=True))
        else:
            final, block_tokens = self.model.forward_features(images), {}
        patches = final[:, self.prefix :]
        cls = final[:, 0] if self.has_cls else patches.mean(dim=1)
        h = images.shape[-2] // self.patch_size
        w = images.shape[-1] // self.patch_size
        head = self.module.head
        return EncoderOutput(
            cls=cls,
            patch_tokens=patches,
            grid=(h, w),
            projection=head(cls) if head is not None else None,
            blocks=block_tokens,
        )
