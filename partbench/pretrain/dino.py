"""DINO: self-distillation with no labels. A student matches an EMA teacher's centred,
sharpened distribution over prototypes across multi-crop views."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from partbench.encoders.heads import DinoHead
from partbench.encoders.vit import build_mini_vit
from partbench.pretrain.backbone import encode
from partbench.pretrain.data import byol_pair, multi_crop
from partbench.pretrain.train import Hyper, Recipe


class Centering(nn.Module):
    """The teacher's running centre: subtracting it stops one prototype from winning
    (collapse), while a low teacher temperature stops the uniform solution."""

    def __init__(self, dim: int, momentum: float = 0.9):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("center", torch.zeros(1, dim))

    def probs(self, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
        return F.softmax((teacher - self.center) / temperature, dim=-1)

    @torch.no_grad()
    def update(self, teacher: torch.Tensor) -> None:
        batch_center = teacher.reshape(-1, teacher.shape[-1]).mean(0, keepdim=True)
        self.center.mul_(self.momentum).add_(batch_center, alpha=1 - self.momentum)


def cross_view_loss(
    student: list[torch.Tensor], teacher_probs: list[torch.Tensor], student_temp: float
) -> torch.Tensor:
    """Mean cross-entropy H(teacher view i, student view j) over every pair with i != j:
    teacher views are the global crops, student views all crops (globals first)."""
    total, pairs = 0.0, 0
    log_s = [F.log_softmax(s / student_temp, dim=-1) for s in student]
    for i, p in enumerate(teacher_probs):
        for j, ls in enumerate(log_s):
            if i == j:
                continue
            total = total + torch.sum(-p * ls, dim=-1).mean()
            pairs += 1
    return total / pairs


class DINORecipe(Recipe):
    """Views: BYOL's asymmetric pair of 64 px crops, hue over the whole colour circle
    (data.byol_pair, MoCo v3's views here); the teacher and the student see both, and each
    view's student output matches the other view's teacher. 256 prototypes, teacher
    temperature 0.01, student 0.1, centre momentum 0.9, teacher momentum 0.996 -> 1; the
    prototype layer is frozen for the first 5% of steps, as in DINO, and the patch projection
    stays at its random initialisation (MoCo v3's fix for unstable ViT training). Shipped: the
    teacher's backbone and head (the study evaluates DINO's teacher).

    Tuned for a few hundred steps on 4096 small images: with DINO's 0.04 teacher temperature,
    1024+ prototypes, momentum 0.98 and a weight-decay ramp to 0.4, the teacher went uniform
    (loss -> ln K) within ~50 steps; a sharper teacher, fewer prototypes, a slower teacher,
    constant weight decay 0.04 and a 30% warm-up keep it off that fixed point.

    Without multi-crop, on purpose: with DINO's two global and four 32 px local crops (BYOL's
    hue jitter or the full circle; learning rates from 1.25e-4 to 5e-4; teacher temperature
    0.04; a frozen patch projection) part kNN top-1 on the teacher's class token stayed near
    or fell below the untrained network's 37.9%, to 29-36% after 600-800 steps in most. With
    this pair of views, batch 64 and a frozen patch projection it rose: 40.2, 41.9, 42.8 and
    43.6% after 150, 300, 450 and 600 steps. DINO's paper trains without multi-crop too, as
    an ablation, at a lower score."""

    method, family, head_kind = "dino", "contrastive", "dino"
    hyper = Hyper(
        batch_size=64,
        lr=5e-4,
        weight_decay=0.04,
        warmup=0.3,
        clip=3.0,
        momentum=0.996,
    )
    n_local = 0
    frozen_patch_projection = True
    student_temp, teacher_temp = 0.1, 0.01

    def __init__(self, seed: int, steps: int, out_dim: int = 256, patch_out: int = 0):
        super().__init__(seed, steps)
        self.backbone = build_mini_vit(seed)
        if self.frozen_patch_projection:
            self.backbone.patch_embed.proj.requires_grad_(False)
        width = self.backbone.embed_dim
        self.head = DinoHead.for_training(width, 512, 128, out_dim, patch_out=patch_out)
        self.teacher_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.centering = Centering(out_dim)
        self.freeze_last_steps = max(1, steps // 20)

    def ema_pairs(self):
        return [(self.teacher_backbone, self.backbone), (self.teacher_head, self.head)]

    def after_backward(self, step: int) -> None:
        if step < self.freeze_last_steps:
            self.head.last_layer.weight_v.grad = None

    def loss(self, images, labels, gen, step):
        device = labels.device
        globals_, locals_ = self.views(images, gen)
        g = torch.cat(globals_).to(device)
        with torch.no_grad():
            t = self.teacher_head(encode(self.teacher_backbone, g)[:, 0])
        s = [self.head(encode(self.backbone, g)[:, 0])]
        if locals_:
            s.append(self.head(encode(self.backbone, torch.cat(locals_).to(device))[:, 0]))
        student = list(torch.cat(s).chunk(2 + len(locals_)))
        probs = list(self.centering.probs(t, self.teacher_temp).chunk(2))
        loss = cross_view_loss(student, probs, self.student_temp)
        self.centering.update(t)
        return loss

    def views(
        self, images: torch.Tensor, gen: torch.Generator
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(global views, which the teacher sees; local views, the student's alone)."""
        if self.n_local:
            return multi_crop(images, gen, self.n_local)
        return byol_pair(images, gen), []

    def shipped(self) -> dict[str, torch.Tensor]:
        state = dict(self.teacher_backbone.state_dict())
        state.update({f"head.{k}": v for k, v in self.teacher_head.class_token_state().items()})
        return state
