"""The small networks partbench runs on a CPU: the mini ViT (the floor encoder and the shape of
the mini encoders) and the reference CNN."""

from __future__ import annotations

from pathlib import Path

import torch

from partbench.encoders.checkpoints import load_strict, read_checkpoint, sha256_file
from partbench.encoders.timm_adapter import TimmEncoder

# 64 px input, patch 8 (an 8 x 8 grid), width 128, 6 blocks: about 1.2 M parameters.
MINI_SIZE = 64
MINI_VIT = dict(img_size=MINI_SIZE, patch_size=8, embed_dim=128, depth=6, num_heads=4, mlp_ratio=4.0)


def build_mini_vit(seed: int = 0, *, init: bool = True) -> torch.nn.Module:
    """The mini ViT, initialised from ``seed``; ``init=False`` leaves its parameters unset for
    a caller that loads every one of them (timm's initialisation was 0.4 s of each load)."""
    from timm.models.vision_transformer import VisionTransformer

    # Seeding a private generator state keeps the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VisionTransformer(
            num_classes=0, global_pool="token", weight_init="" if init else "skip", **MINI_VIT
        )


def load_mini_vit(
    name: str,
    family: str,
    *,
    weights: Path | None,
    seed: int,
    projection: torch.nn.Module | None = None,
) -> TimmEncoder:
    """A mini ViT, randomly initialised from ``seed`` or loaded strictly from ``weights``."""
    model = build_mini_vit(seed, init=weights is None)
    if weights is None:
        weights_id = f"random-init:seed={seed}"
    else:
        state = read_checkpoint(weights)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        load_strict(model, state, weights)
        weights_id = f"sha256:{sha256_file(weights)}"
    return TimmEncoder(model.eval(), name=name, family=family, weights_id=weights_id, projection=projection)


def build_mini_cnn(seed: int = 0) -> torch.nn.Module:
    """The reference CNN: a ResNet of one basic block per stage, widths 32-256 (1.2 M
    parameters, about the mini ViT's), 64 px input. Convolutions learn SynParts' shapes in a
    few hundred steps where a ViT needs thousands, so a trained copy shows what "learned"
    looks like on these tasks and catches a broken pipeline."""
    from timm.models.resnet import BasicBlock, ResNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet(block=BasicBlock, layers=(1, 1, 1, 1), channels=(32, 64, 128, 256), num_classes=0)
