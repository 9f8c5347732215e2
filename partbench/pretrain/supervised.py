"""Supervised pretraining on object classes: the DeiT role in the study."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from partbench.encoders.vit import build_mini_cnn, build_mini_vit
from partbench.pretrain.data import (
    GLOBAL_SIZE,
    normalize,
    random_resized_crop,
    to_float,
)
from partbench.pretrain.train import Hyper, Recipe

NUM_CLASSES = 8  # SynParts' object classes


class SupervisedRecipe(Recipe):
    """Cross-entropy with label smoothing 0.1 on a linear classifier over the class token, plus
    the same loss on an auxiliary classifier over the maximum of the patch tokens.

    DeiT's views are random resized crops and flips with strong extra regularisation
    (RandAugment, mixup, cutmix, random erasing) meant for 300 epochs of ImageNet; a
    from-scratch ViT given a few thousand steps underfits rather than overfits, so only a
    mild crop (scale 0.5-1) and the flip are kept.

    Why the auxiliary head: SynParts' classes differ only in which small parts they carry
    and where (colours are random, so a linear model of the pixels is at chance). A class
    token alone sat at chance for ~350 steps at lr 5e-4 (~700 at 1.5e-3); a mean-token
    classifier (300 steps) and a mimetic initialisation (175 steps) had not left it when
    stopped: averaging dilutes the one patch that holds a wing. A maximum over patch tokens
    gives that patch the gradient directly (its loss was falling by step 100, in the warm-up),
    and the class token learns to read the part detectors this makes. Neither classifier is
    shipped: a supervised encoder has no projection head.
    """

    method, family = "supervised", "supervised"
    hyper = Hyper(batch_size=64, lr=5e-4, weight_decay=0.05, warmup=0.1)
    crop_scale = (0.5, 1.0)

    def __init__(self, seed: int, steps: int):
        super().__init__(seed, steps)
        self.backbone = build_mini_vit(seed)
        self.classifier = _classifier(self.backbone.embed_dim)
        self.part_classifier = _classifier(self.backbone.embed_dim)

    def loss(self, images, labels, gen, step):
        x = normalize(random_resized_crop(to_float(images), GLOBAL_SIZE, self.crop_scale, gen))
        tokens = self.backbone.forward_features(x.to(labels.device))
        loss = F.cross_entropy(self.classifier(tokens[:, 0]), labels, label_smoothing=0.1)
        aux = self.part_classifier(tokens[:, 1:].amax(dim=1))
        return loss + F.cross_entropy(aux, labels, label_smoothing=0.1)

    def shipped(self) -> dict[str, torch.Tensor]:
        return dict(self.backbone.state_dict())


def _classifier(width: int) -> nn.Linear:
    head = nn.Linear(width, NUM_CLASSES)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


class SupervisedCNNRecipe(Recipe):
    """The reference CNN (build_mini_cnn) under the supervised recipe's views, loss and
    schedule shape, with one classifier on globally average-pooled final features (a CNN's
    own pooling finds small parts without help). BatchNorm trains in batch mode."""

    method, family = "supervised-cnn", "supervised"
    hyper = SupervisedRecipe.hyper
    crop_scale = SupervisedRecipe.crop_scale

    def __init__(self, seed: int, steps: int):
        super().__init__(seed, steps)
        self.backbone = build_mini_cnn(seed)
        self.classifier = _classifier(self.backbone.num_features)

    def loss(self, images, labels, gen, step):
        x = normalize(random_resized_crop(to_float(images), GLOBAL_SIZE, self.crop_scale, gen))
        pooled = self.backbone.forward_features(x.to(labels.device)).mean(dim=(2, 3))
        return F.cross_entropy(self.classifier(pooled), labels, label_smoothing=0.1)

    def shipped(self) -> dict[str, torch.Tensor]:
        return dict(self.backbone.state_dict())
