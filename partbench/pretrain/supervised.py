"""Supervised pretraining on object classes: the DeiT role in the study."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from partbench.encoders.vit import build_mini_vit
from partbench.pretrain.data import (
    GLOBAL_SIZE,
    color_jitter,
    normalize,
    random_resized_crop,
    to_float,
)
from partbench.pretrain.train import Hyper, Recipe

NUM_CLASSES = 8  # SynParts' object classes


class SupervisedRecipe(Recipe):
    """Cross-entropy with label smoothing 0.1 on a linear classifier over the class token.

    DeiT's views are random resized crops and flips with strong extra regularisation
    (RandAugment, mixup, cutmix, random erasing) meant for 300 epochs of ImageNet; for a few
    hundred steps only crop, flip and colour jitter are kept. The classifier is not shipped:
    a supervised encoder has no projection head.
    """

    method, family = "supervised", "supervised"
    hyper = Hyper(batch_size=64, lr=1e-3, weight_decay=0.05, warmup=0.1)

    def __init__(self, seed: int, steps: int):
        super().__init__(seed, steps)
        self.backbone = build_mini_vit(seed)
        self.classifier = nn.Linear(self.backbone.embed_dim, NUM_CLASSES)
        nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def loss(self, images, labels, gen, step):
        x = random_resized_crop(to_float(images), GLOBAL_SIZE, (0.25, 1.0), gen)
        x = normalize(color_jitter(x, gen, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05))
        x = x.to(labels.device)
        cls = self.backbone.forward_features(x)[:, 0]
        return F.cross_entropy(self.classifier(cls), labels, label_smoothing=0.1)

    def shipped(self) -> dict[str, torch.Tensor]:
        return dict(self.backbone.state_dict())
