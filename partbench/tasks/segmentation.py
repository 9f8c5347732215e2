"""Segmentation probes: patch tokens of blocks 4, 6, 8 and 12 (scaled to the encoder's depth)
concatenated, a linear per-pixel classifier, logits upsampled to the label map; mIoU.

The head trains on cached patch features, without the study's photometric and geometric
augmentation and for far fewer iterations (the study runs 160k); features are standardised
per channel on the training set, which leaves the head a linear map of the raw features but
lets it converge in that budget. The training loss is taken on label maps sampled down
(nearest) to four times the patch grid, which costs a fraction of full resolution and, on
SynParts, scores the same; evaluation is always at the label map's full resolution. The
README's protocol section says so."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partbench.datasets.base import IGNORE, Dataset
from partbench.encoders.base import Encoder
from partbench.extraction import Features, View
from partbench.metrics import bootstrap_ci, intersection_union, miou_from_counts
from partbench.tasks.base import Task, TaskResult, percent

STUDY_BLOCKS = (4, 6, 8, 12)  # of a 12-block ViT-B


def scaled_blocks(depth: int) -> tuple[int, ...]:
    return tuple(sorted({max(1, round(b * depth / 12)) for b in STUDY_BLOCKS}))


def _logits(head: nn.Module, feats: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]):
    b = feats.shape[0]
    out = head(feats).transpose(1, 2).reshape(b, -1, *grid)
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


class Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def channel_stats(x: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over items and tokens, in float64, a chunk at a time (the
    cached features may be too large to copy whole into float32)."""
    total = torch.zeros(x.shape[-1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].double().flatten(0, -2)
        total += part.sum(0)
        squares += (part * part).sum(0)
    n = x.shape[0] * x.shape[1]
    mean = total / n
    std = (squares / n - mean * mean).clamp(min=0).sqrt().clamp(min=1e-6)
    return mean.float(), std.float()


def _loss_target(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    size = (min(mask.shape[0], 4 * grid[0]), min(mask.shape[1], 4 * grid[1]))
    if size == tuple(mask.shape):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()


def train_seg_head(
    x: torch.Tensor,
    masks: list[np.ndarray],
    grid: tuple[int, int],
    classes: int,
    *,
    iterations: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> nn.Module:
    """AdamW (weight decay 0.05), linear warm-up over the study's share of iterations
    (1,500 of 160k), then poly decay to zero. ``x`` may be half precision (the cache's); the
    head computes in float32 and carries the per-channel standardisation as fixed buffers."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(Standardise(*channel_stats(x)), nn.Linear(x.shape[-1], classes))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, round(iterations * 1500 / 160_000))

    def factor(it: int) -> float:
        return (it + 1) / warmup if it < warmup else (1 - (it - warmup) / max(1, iterations - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    targets = [_loss_target(torch.as_tensor(m.astype(np.int64)), grid) for m in masks]
    same_size = len({tuple(t.shape) for t in targets}) == 1
    stacked = torch.stack(targets) if same_size else None
    for _ in range(iterations):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        if stacked is not None:
            logits = _logits(head, x[idx].float(), grid, tuple(stacked.shape[-2:]))
            loss = F.cross_entropy(logits, stacked[idx], ignore_index=IGNORE)
        else:  # label maps of different sizes: one upsampling per image
            losses = [
                F.cross_entropy(
                    _logits(head, x[i : i + 1].float(), grid, tuple(targets[i].shape)),
                    targets[i][None],
                    ignore_index=IGNORE,
                    reduction="sum",
                )
                for i in idx.tolist()
            ]
            valid = sum(int((targets[i] != IGNORE).sum()) for i in idx.tolist())
            loss = torch.stack(losses).sum() / max(valid, 1)
        if not torch.isfinite(loss):  # a batch with only ignored pixels
            sched.step()
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


class Segmentation(Task):
    def __init__(self, source: str):
        self.source = source  # "part-masks" or "object-masks"

    def views(self, dataset: Dataset, encoder: Encoder, options: Mapping[str, Any]) -> dict[str, View]:
        blocks = scaled_blocks(encoder.depth)
        out = frozenset({"blocks"})
        return {
            "train": View(self.source, "train", "test", out, blocks),
            "test": View(self.source, "test", "test", out, blocks),
        }

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        options: Mapping[str, Any],
        *,
        seed: int,
        repeats: int = 1,
    ) -> TaskResult:
        train, test = features["train"], features["test"]
        names = dataset.classes_for(self.source)
        classes = len(names)
        x_tr, x_te = train["blocks"], test["blocks"]
        masks_te = test.masks[self.source]
        inter = np.zeros((repeats, len(masks_te), classes))
        union = np.zeros_like(inter)
        scores = []
        for r in range(repeats):
            head = train_seg_head(
                x_tr,
                train.masks[self.source],
                train.grid,
                classes,
                iterations=options["iterations"],
                lr=options["lr"],
                batch_size=options["batch_size"],
                seed=seed + r,
            )
            with torch.no_grad():
                for i, mask in enumerate(masks_te):
                    pred = _logits(head, x_te[i : i + 1].float(), test.grid, mask.shape).argmax(1)[0]
                    inter[r, i], union[r, i] = intersection_union(pred, mask, classes, IGNORE)
            scores.append(miou_from_counts(inter[r].sum(0), union[r].sum(0)))
        # Resampling images: each image's counts averaged over repeats, then summed.
        i_mean, u_mean = inter.mean(0), union.mean(0)

        def stat(counts: np.ndarray) -> float:
            return miou_from_counts(counts @ i_mean, counts @ u_mean)

        iou = np.divide(i_mean.sum(0), u_mean.sum(0), out=np.full(classes, np.nan), where=u_mean.sum(0) > 0)
        details: dict[str, Any] = {
            "per_class_iou": {names[c]: 100 * float(iou[c]) for c in range(classes) if not np.isnan(iou[c])},
            "train_images": len(train.masks[self.source]),
        }
        if repeats > 1:
            details["mIoU_repeats"] = [100 * s for s in scores]
            details["mIoU_std"] = float(100 * np.std(scores, ddof=1))
        pixels = np.zeros(classes, dtype=np.int64)
        for m in masks_te:
            pixels += np.bincount(m[m != IGNORE].ravel(), minlength=classes)[:classes]
        return TaskResult(
            metrics={"mIoU": percent(float(np.mean(scores)), bootstrap_ci(len(masks_te), stat, seed=seed))},
            n_items=len(masks_te),
            items_per_class={names[c]: int(pixels[c]) for c in range(classes) if pixels[c]},
            details=details,
        )
