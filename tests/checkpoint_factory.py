"""Checkpoints in each encoder's official format, built from seeded random tensors.

Nesting and key names follow the released files (see checkpoints.md); widths are parameters so
tests can use the same layout at a small size. Every network in a multi-network file (teacher and
student, base and momentum encoder) gets its own seed, so a loader that picks the wrong one is
caught.
"""

from __future__ import annotations

import argparse
import itertools
from typing import Any

import torch

SMALL = {"embed_dim": 48, "depth": 2, "num_heads": 3}
VIT_B = {"embed_dim": 768, "depth": 12, "num_heads": 12}
# Small projection heads: (hidden, bottleneck or output, output) widths of the same layouts.
MOCO_HEAD_SMALL = (64, 16)  # hidden, output (real: 4096, 256)
DINO_HEAD_SMALL = (64, 16, 128)  # hidden, bottleneck, output (real: 2048, 256, 65536 / 8192)

Tensors = dict[str, torch.Tensor]


class _Rand:
    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.gen) * scale

    def linear(self, out: int, inp: int) -> torch.Tensor:
        return self.normal(out, inp, scale=inp**-0.5)

    def norm_weight(self, dim: int) -> torch.Tensor:
        return 1.0 + self.normal(dim, scale=0.1)

    def positive(self, dim: int) -> torch.Tensor:
        return torch.rand(dim, generator=self.gen) + 0.5


def vit_tensors(
    seed: int,
    *,
    style: str = "vit",
    embed_dim: int = 48,
    depth: int = 2,
    num_heads: int = 3,
    patch: int = 16,
    tokens: int = 197,
    abs_pos: bool = True,
) -> Tensors:
    """An encoder under official key names. ``style``: "vit" (fused qkv bias, as DeiT, MoCo v3,
    DINO, iBOT, MAE), "beit" (q_bias/v_bias, gamma_1/gamma_2, as BEiT and CAE) or "dinov2"
    (fused bias, ls1/ls2.gamma)."""
    del num_heads  # the tensors do not depend on it; accepted so geometry dicts can be splatted
    r, d, hidden = _Rand(seed), embed_dim, 4 * embed_dim
    sd: Tensors = {
        "cls_token": r.normal(1, 1, d, scale=0.5),
        "patch_embed.proj.weight": r.normal(d, 3, patch, patch, scale=(3 * patch * patch) ** -0.5),
        "patch_embed.proj.bias": r.normal(d, scale=0.1),
    }
    if abs_pos:
        sd["pos_embed"] = r.normal(1, tokens, d, scale=0.5)
    for i in range(depth):
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = r.norm_weight(d), r.normal(d, scale=0.1)
        sd[b + "attn.qkv.weight"] = r.linear(3 * d, d)
        if style == "beit":
            sd[b + "attn.q_bias"], sd[b + "attn.v_bias"] = (
                r.normal(d, scale=0.1),
                r.normal(d, scale=0.1),
            )
        else:
            sd[b + "attn.qkv.bias"] = r.normal(3 * d, scale=0.1)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = (
            r.linear(d, d),
            r.normal(d, scale=0.1),
        )
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = r.norm_weight(d), r.normal(d, scale=0.1)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = (
            r.linear(hidden, d),
            r.normal(hidden, scale=0.1),
        )
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = (
            r.linear(d, hidden),
            r.normal(d, scale=0.1),
        )
        if style == "beit":
            sd[b + "gamma_1"], sd[b + "gamma_2"] = r.positive(d), r.positive(d)
        elif style == "dinov2":
            sd[b + "ls1.gamma"], sd[b + "ls2.gamma"] = r.positive(d), r.positive(d)
    sd["norm.weight"], sd["norm.bias"] = r.norm_weight(d), r.normal(d, scale=0.1)
    return sd


def prefixed(prefix: str, sd: Tensors) -> Tensors:
    return {prefix + k: v for k, v in sd.items()}


def _bn(r: _Rand, prefix: str, dim: int, affine: bool = True) -> Tensors:
    out = {
        prefix + "running_mean": r.normal(dim, scale=0.5),
        prefix + "running_var": r.positive(dim),
        prefix + "num_batches_tracked": torch.tensor(1234, dtype=torch.long),
    }
    if affine:
        out[prefix + "weight"], out[prefix + "bias"] = r.norm_weight(dim), r.normal(dim, scale=0.1)
    return out


def moco_mlp_tensors(seed: int, dims: list[int]) -> Tensors:
    """MoCo v3 ``_build_mlp``: bias-free Linear, BN, ReLU, ..., Linear, BN without affine."""
    r, sd = _Rand(seed), {}
    for n, (a, b) in enumerate(itertools.pairwise(dims)):
        sd[f"{3 * n}.weight"] = r.linear(b, a)
        sd |= _bn(r, f"{3 * n + 1}.", b, affine=n < len(dims) - 2)
    return sd


def dino_head_tensors(seed: int, dim: int, hidden: int, bottleneck: int, out: int) -> Tensors:
    r = _Rand(seed)
    return {
        "mlp.0.weight": r.linear(hidden, dim),
        "mlp.0.bias": r.normal(hidden, scale=0.1),
        "mlp.2.weight": r.linear(hidden, hidden),
        "mlp.2.bias": r.normal(hidden, scale=0.1),
        "mlp.4.weight": r.linear(bottleneck, hidden),
        "mlp.4.bias": r.normal(bottleneck, scale=0.1),
        "last_layer.weight_g": r.positive(out).unsqueeze(1),
        "last_layer.weight_v": r.normal(out, bottleneck),
    }


def _optimizer_state(sd: Tensors) -> dict[str, Any]:
    first = next(iter(sd.values()))
    return {
        "state": {0: {"step": torch.tensor(10.0), "exp_avg": torch.zeros_like(first)}},
        "param_groups": [{"lr": 1e-4, "weight_decay": 0.05, "params": list(range(len(sd)))}],
    }


# --- one builder per official file ------------------------------------------------------


def deit_file(geometry: dict[str, int] = SMALL, seed: int = 1) -> dict[str, Any]:
    sd = vit_tensors(seed, **geometry)
    r = _Rand(seed + 100)
    sd["head.weight"], sd["head.bias"] = r.linear(1000, geometry["embed_dim"]), r.normal(1000)
    return {"model": sd}


def mocov3_file(
    geometry: dict[str, int] = SMALL, *, base_seed: int = 1, momentum_seed: int = 2
) -> dict[str, Any]:
    d = geometry["embed_dim"]
    hidden, out = MOCO_HEAD_SMALL
    state: Tensors = {}
    for name, seed in (("base_encoder", base_seed), ("momentum_encoder", momentum_seed)):
        state |= prefixed(f"module.{name}.", vit_tensors(seed, **geometry))
        state |= prefixed(f"module.{name}.head.", moco_mlp_tensors(seed + 10, [d, hidden, hidden, out]))
    state |= prefixed("module.predictor.", moco_mlp_tensors(99, [out, hidden, out]))
    return {
        "epoch": 300,
        "arch": "vit_base",
        "state_dict": state,
        "optimizer": _optimizer_state(state),
        "scaler": {
            "scale": 65536.0,
            "growth_factor": 2.0,
            "backoff_factor": 0.5,
            "growth_interval": 2000,
        },
    }


def _dino_args(out_dim: int) -> argparse.Namespace:
    return argparse.Namespace(
        arch="vit_base",
        patch_size=16,
        out_dim=out_dim,
        norm_last_layer=True,
        momentum_teacher=0.996,
    )


def dino_full_file(
    geometry: dict[str, int] = SMALL,
    *,
    teacher_seed: int = 1,
    student_seed: int = 2,
    ibot: bool = False,
) -> dict[str, Any]:
    """DINO (or, with ``ibot``, iBOT) full checkpoint: DDP-wrapped student, plain teacher."""
    d = geometry["embed_dim"]
    hidden, bottleneck, out = DINO_HEAD_SMALL
    nets = {}
    for role, seed in (("teacher", teacher_seed), ("student", student_seed)):
        backbone = vit_tensors(seed, **geometry)
        head = dino_head_tensors(seed + 10, d, hidden, bottleneck, out)
        if ibot:
            backbone["masked_embed"] = _Rand(seed + 20).normal(d)
            # The patch-token head: a different layer, which the projection must not use.
            head["last_layer2.weight_g"] = _Rand(seed + 30).positive(out).unsqueeze(1)
            head["last_layer2.weight_v"] = _Rand(seed + 31).normal(out, bottleneck)
        wrap = "module." if role == "student" else ""
        nets[role] = prefixed(f"{wrap}backbone.", backbone) | prefixed(f"{wrap}head.", head)
    return {
        "student": nets["student"],
        "teacher": nets["teacher"],
        "optimizer": _optimizer_state(nets["student"]),
        "epoch": 400 if not ibot else 800,
        "args": _dino_args(out),
        "dino_loss" if not ibot else "ibot_loss": {"center": torch.zeros(1, out)},
        "fp16_scaler": {"scale": 1024.0, "growth_factor": 2.0},
    }


def dino_backbone_file(geometry: dict[str, int] = SMALL, seed: int = 1) -> Tensors:
    """The backbone-only DINO release: the teacher backbone as a flat state dict."""
    return vit_tensors(seed, **geometry)


def ibot_teacher_file(geometry: dict[str, int] = SMALL, seed: int = 1) -> dict[str, Any]:
    return {"state_dict": vit_tensors(seed, **geometry)}


def mae_file(geometry: dict[str, int] = SMALL, seed: int = 1, *, full: bool = False) -> dict[str, Any]:
    sd = vit_tensors(seed, **geometry)
    if full:
        r, d = _Rand(seed + 50), geometry["embed_dim"]
        sd["mask_token"] = r.normal(1, 1, 32)
        sd["decoder_embed.weight"], sd["decoder_embed.bias"] = r.linear(32, d), r.normal(32)
        sd["decoder_pos_embed"] = r.normal(1, 197, 32)
        sd["decoder_blocks.0.norm1.weight"] = r.norm_weight(32)
        sd["decoder_norm.weight"], sd["decoder_pred.weight"] = r.norm_weight(32), r.linear(768, 32)
    return {"model": sd}


def beit_file(geometry: dict[str, int] = SMALL, seed: int = 1) -> dict[str, Any]:
    sd = vit_tensors(seed, style="beit", abs_pos=False, **geometry)
    r, d = _Rand(seed + 60), geometry["embed_dim"]
    sd["mask_token"] = r.normal(1, 1, d)
    sd["rel_pos_bias.relative_position_bias_table"] = r.normal(732, geometry["num_heads"], scale=0.5)
    sd["rel_pos_bias.relative_position_index"] = torch.randint(0, 732, (197, 197), generator=r.gen)
    sd["lm_head.weight"], sd["lm_head.bias"] = r.linear(8192, d), r.normal(8192)
    sd["cls_pt_layers.0.norm1.weight"] = r.norm_weight(d)
    return {"model": sd}


def cae_file(geometry: dict[str, int] = SMALL, seed: int = 1) -> dict[str, Any]:
    d = geometry["embed_dim"]
    r = _Rand(seed + 70)
    model = prefixed("encoder.", vit_tensors(seed, style="beit", **geometry))
    model |= prefixed("pretext_neck.", vit_tensors(seed + 1, style="beit", abs_pos=False, **geometry))
    model["encoder_to_decoder.weight"], model["encoder_to_decoder.bias"] = (
        r.linear(d, d),
        r.normal(d),
    )
    model["encoder_to_decoder_norm.weight"] = r.norm_weight(d)
    model["mask_token"] = r.normal(1, 1, d)
    model["decoder.blocks.0.norm1.weight"] = r.norm_weight(d)
    model["decoder.head.weight"] = r.linear(8192, d)
    return {"model": model}


def dinov2_file(geometry: dict[str, int] = SMALL, seed: int = 1, *, registers: int = 0) -> Tensors:
    sd = vit_tensors(seed, style="dinov2", patch=14, tokens=1370, **geometry)
    r = _Rand(seed + 80)
    sd["mask_token"] = r.normal(1, geometry["embed_dim"])
    if registers:
        sd["register_tokens"] = r.normal(1, registers, geometry["embed_dim"], scale=0.5)
    return sd
