"""Running the mini ViT the ways pretraining needs: at other input sizes (local crops), on
visible patches only (MAE) and with mask tokens (iBOT).

The model itself stays exactly ``build_mini_vit()``, so its state dict ships unchanged;
these functions call its submodules in the order timm's ``forward_features`` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def grid_pos_embed(vit: nn.Module, gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(class-token position, patch positions (1, gh*gw, D)), resampled bicubically when the
    grid differs from the one the model was built for."""
    pos = vit.pos_embed
    cls_pos, patch_pos = pos[:, :1], pos[:, 1:]
    n = patch_pos.shape[1]
    side = math.isqrt(n)
    if (gh, gw) != (side, side):
        d = patch_pos.shape[-1]
        grid = patch_pos.reshape(1, side, side, d).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
        patch_pos = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, d)
    return cls_pos, patch_pos


def embed_patches(vit: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Patch embeddings (B, N, D) without position, at any multiple of the patch size."""
    x = vit.patch_embed.proj(images)  # the conv alone: PatchEmbed asserts the built size
    gh, gw = x.shape[-2:]
    x = vit.patch_embed.norm(x.flatten(2).transpose(1, 2))
    return x, gh, gw


def encode(
    vit: nn.Module,
    images: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
    keep: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final-norm tokens (B, 1 + N', D), class token first.

    ``mask`` (B, N) bool with ``mask_token`` (1, 1, D): masked patch embeddings are replaced
    before position embeddings are added (iBOT). ``keep`` (B, K) indices: only those patches
    enter the encoder (MAE).
    """
    x, gh, gw = embed_patches(vit, images)
    if mask is not None:
        assert mask_token is not None
        x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
    cls_pos, patch_pos = grid_pos_embed(vit, gh, gw)
    x = x + patch_pos
    if keep is not None:
        x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
    cls = (vit.cls_token + cls_pos).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = vit.norm_pre(vit.patch_drop(vit.pos_drop(x)))
    return vit.norm(vit.blocks(x))


def sincos_pos_embed(dim: int, side: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (1, [1 +] side*side, dim), as MAE uses; half
    the channels encode the row, half the column; the class token gets zeros."""
    assert dim % 4 == 0
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float64),
        torch.arange(side, dtype=torch.float64),
        indexing="ij",
    )

    def one(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    emb = torch.cat([one(ys), one(xs)], dim=1).float()
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim), emb], dim=0)
    return emb.unsqueeze(0)


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """Biases, norm weights, tokens and position embeddings are not decayed (as in all five
    methods' recipes)."""
    return param.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "mask_token"))
