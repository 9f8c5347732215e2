"""MAE: mask 75% of the patches, encode only the visible ones, reconstruct the masked ones'
normalised pixels with a light decoder."""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from partbench.encoders.vit import build_mini_vit
from partbench.pretrain.backbone import encode, sincos_pos_embed
from partbench.pretrain.data import GLOBAL_SIZE, normalize, random_resized_crop, to_float
from partbench.pretrain.train import Hyper, Recipe


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, patch*patch*3), patches in the patch embedding's token order."""
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch * patch * c)


def random_masking(
    b: int, n: int, ratio: float, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image uniform random masking by sorting noise. Returns (kept indices (B, K),
    restore order (B, N), mask (B, N) with 1 on masked patches)."""
    n_keep = round(n * (1 - ratio))
    shuffle = torch.argsort(torch.rand(b, n, generator=gen), dim=1)
    restore = torch.argsort(shuffle, dim=1)
    mask = torch.ones(b, n)
    mask[:, :n_keep] = 0
    return shuffle[:, :n_keep], restore, torch.gather(mask, 1, restore)


class MAERecipe(Recipe):
    """Views: random resized crop (scale 0.2-1) and flip only, as in MAE. The encoder's
    position embeddings are fixed 2-D sine-cosine (MAE's choice; stored in the learnable
    slot so the shipped keys do not change). Decoder: 2 blocks of width 96 (MAE: 8 x 512
    for ViT-B; 'light' relative to the encoder). Loss: mean squared error on masked patches
    against per-patch normalised pixels (norm_pix_loss). Shipped: the encoder only."""

    method, family = "mae", "masked-image-modeling"
    hyper = Hyper(batch_size=128, lr=1.5e-3, weight_decay=0.05, warmup=0.1, betas=(0.9, 0.95))
    mask_ratio = 0.75

    def __init__(self, seed: int, steps: int, decoder_dim: int = 96, decoder_depth: int = 2):
        super().__init__(seed, steps)
        self.backbone = vit = build_mini_vit(seed)
        self.patch = int(vit.patch_embed.patch_size[0])
        side = GLOBAL_SIZE // self.patch
        with torch.no_grad():
            vit.pos_embed.copy_(sincos_pos_embed(vit.embed_dim, side))
        vit.pos_embed.requires_grad_(False)
        self.decoder_embed = nn.Linear(vit.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", sincos_pos_embed(decoder_dim, side))
        self.decoder_blocks = nn.Sequential(
            *[Block(decoder_dim, num_heads=3, mlp_ratio=4.0, qkv_bias=True) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * 3)

    def loss(self, images, labels, gen, step):
        device = labels.device
        x = normalize(random_resized_crop(to_float(images), GLOBAL_SIZE, (0.2, 1.0), gen))
        b, n = x.shape[0], (GLOBAL_SIZE // self.patch) ** 2
        keep, restore, mask = random_masking(b, n, self.mask_ratio, gen)
        x, keep, restore, mask = x.to(device), keep.to(device), restore.to(device), mask.to(device)

        latent = encode(self.backbone, x, keep=keep)  # (B, 1 + K, D)
        y = self.decoder_embed(latent)
        fill = self.mask_token.expand(b, n - keep.shape[1], -1)
        y_patches = torch.cat([y[:, 1:], fill], dim=1)
        y_patches = torch.gather(y_patches, 1, restore.unsqueeze(-1).expand(-1, -1, y.shape[-1]))
        y = torch.cat([y[:, :1], y_patches], dim=1) + self.decoder_pos
        pred = self.decoder_pred(self.decoder_norm(self.decoder_blocks(y)))[:, 1:]

        target = patchify(x, self.patch)
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def shipped(self) -> dict[str, torch.Tensor]:
        return dict(self.backbone.state_dict())
