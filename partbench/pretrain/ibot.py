"""iBOT: DINO's class-token self-distillation plus masked image modeling with an online
tokenizer: the student, shown a blockwise-masked image, predicts the teacher's patch-token
distribution at the masked positions, where the teacher saw the whole image."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from partbench.pretrain.backbone import encode
from partbench.pretrain.dino import Centering, DINORecipe, cross_view_loss
from partbench.pretrain.train import Hyper


def block_masks(
    b: int,
    side: int,
    gen: torch.Generator,
    *,
    prob: float = 0.5,
    ratio: tuple[float, float] = (0.1, 0.5),
    aspect: tuple[float, float] = (0.3, 1 / 0.3),
    min_area: int = 4,
) -> torch.Tensor:
    """(B, side*side) bool. Each image is masked with probability ``prob``, with a ratio drawn
    uniformly from ``ratio``, built from random rectangles (BEiT's blockwise masking)."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
    out = np.zeros((b, side, side), bool)
    for i in range(b):
        if rng.random() >= prob:
            continue
        target = round(rng.uniform(*ratio) * side * side)
        m = out[i]
        for _ in range(100):
            left = target - int(m.sum())
            if left <= 0:
                break
            area = rng.uniform(min(min_area, left), left)
            r = math.exp(rng.uniform(math.log(aspect[0]), math.log(aspect[1])))
            h, w = round(math.sqrt(area * r)), round(math.sqrt(area / r))
            if not (1 <= h <= side and 1 <= w <= side):
                continue
            top, lft = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
            new = int((~m[top : top + h, lft : lft + w]).sum())
            if 0 < new <= left:
                m[top : top + h, lft : lft + w] = True
    return torch.from_numpy(out.reshape(b, side * side))


class IBOTRecipe(DINORecipe):
    """DINO's multi-crop recipe with a shared head MLP and two prototype layers (class token,
    patch tokens). The student's two global crops are blockwise masked (half the images,
    ratio 0.1-0.5); the teacher sees them unmasked. Loss = cross-view class-token loss (as
    DINO) + same-view masked patch-token loss, each with its own centre. 256 prototypes per
    layer. Shipped: teacher backbone and the class-token path of the teacher head.

    Temperatures are DINO's short-run ones (dino.DINORecipe): iBOT's teacher temperature
    warm-up 0.04 -> 0.07 left both losses flat near ln K in short runs, so the teacher
    temperature stays at 0.01 for both token types."""

    method, family, head_kind = "ibot", "both", "dino"  # temperatures: inherited from DINO
    # DINO's earlier short-run settings, with which this file was shipped: multi-crop, batch
    # 32, a trained patch projection.
    hyper = Hyper(batch_size=32, lr=5e-4, weight_decay=0.04, warmup=0.3, clip=3.0, momentum=0.996)
    n_local = 4
    frozen_patch_projection = False

    def __init__(self, seed: int, steps: int, out_dim: int = 256, patch_out: int = 256):
        super().__init__(seed, steps, out_dim=out_dim, patch_out=patch_out)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.backbone.embed_dim))
        self.patch_centering = Centering(patch_out)

    def after_backward(self, step: int) -> None:
        if step < self.freeze_last_steps:
            self.head.last_layer.weight_v.grad = None
            self.head.last_layer2.weight_v.grad = None

    def loss(self, images, labels, gen, step):
        device = labels.device
        b = images.shape[0]
        globals_, locals_ = self.views(images, gen)
        side = globals_[0].shape[-1] // int(self.backbone.patch_embed.patch_size[0])
        mask = torch.cat([block_masks(b, side, gen) for _ in globals_]).to(device)
        g = torch.cat(globals_).to(device)
        temp = self.teacher_temp

        with torch.no_grad():
            t_tokens = encode(self.teacher_backbone, g)
            t_cls = self.teacher_head(t_tokens[:, 0])
            t_patch = self.teacher_head.forward_patches(t_tokens[:, 1:])
        s_tokens = encode(self.backbone, g, mask=mask, mask_token=self.mask_token)
        s_cls = [self.head(s_tokens[:, 0])]
        if locals_:
            s_cls.append(self.head(encode(self.backbone, torch.cat(locals_).to(device))[:, 0]))
        student_cls = list(torch.cat(s_cls).chunk(2 + len(locals_)))
        cls_loss = cross_view_loss(
            student_cls, list(self.centering.probs(t_cls, temp).chunk(2)), self.student_temp
        )

        s_patch = self.head.forward_patches(s_tokens[:, 1:])
        t_prob = self.patch_centering.probs(t_patch, temp)
        per_token = torch.sum(-t_prob * torch.log_softmax(s_patch / self.student_temp, dim=-1), dim=-1)
        maskf = mask.float()
        # Per image: mean over its masked patches; unmasked images contribute zero.
        per_image = (per_token * maskf).sum(-1) / maskf.sum(-1).clamp(min=1.0)
        patch_loss = per_image.mean()

        self.centering.update(t_cls)
        self.patch_centering.update(t_patch)
        return cls_loss + patch_loss
