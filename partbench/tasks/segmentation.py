"""Segmentation probes: the feature maps at 1/3, 1/2, 2/3 and all of the encoder's depth (a
ViT-B's blocks 4, 6, 8 and 12) on one grid, concatenated, a linear per-pixel classifier,
logits upsampled to the label map; mIoU. Training and scoring run on the run's device.

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
from partbench.features import FULL, Features, View
from partbench.metrics import bootstrap_ci, chance_miou, miou_from_counts
from partbench.tasks.base import Task, TaskResult, percent

# The study reads blocks 4, 6, 8 and 12 of a 12-block ViT-B: these shares of the depth.
STUDY_DEPTHS = (4 / 12, 6 / 12, 8 / 12, 12 / 12)
LOSS_RESOLUTION = 4  # the loss reads label maps at most 4 times the feature grid


def study_stages(encoder: Encoder) -> tuple[int, ...]:
    return tuple(sorted({encoder.stage_at(f) for f in STUDY_DEPTHS}))


def _logits(head: nn.Module, feats: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]):
    b = feats.shape[0]
    out = head(feats).transpose(1, 2).reshape(b, -1, *grid)
    if out.device.type == "cpu":
        # The channels-last kernel is the fast one on a CPU, and gives the same values.
        out = out.contiguous(memory_format=torch.channels_last)
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def _counts(pred: torch.Tensor, target: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class intersection and union of one label map, on the maps' device."""
    keep = target != IGNORE
    p, t = pred[keep], target[keep]
    inter = torch.bincount(t[p == t], minlength=classes)[:classes]
    area_p = torch.bincount(p, minlength=classes)[:classes]
    area_t = torch.bincount(t, minlength=classes)[:classes]
    return inter, area_p + area_t - inter


class Standardise(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def channel_stats(
    x: torch.Tensor, chunk: int = 256, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over items and tokens, in float64, a chunk at a time (the
    cached features may be too large to copy whole into float32)."""
    total = torch.zeros(x.shape[-1], dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].to(device).double().flatten(0, -2)
        total += part.sum(0)
        squares += (part * part).sum(0)
    n = x.shape[0] * x.shape[1]
    mean = total / n
    std = (squares / n - mean * mean).clamp(min=0).sqrt().clamp(min=1e-6)
    return mean.float().cpu(), std.float().cpu()


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
    device: torch.device | str = "cpu",
) -> nn.Module:
    """AdamW (weight decay 0.05), linear warm-up over the study's share of iterations
    (1,500 of 160k), then poly decay to zero. ``x`` may be half precision (the cache's); the
    head computes in float32 and carries the per-channel standardisation as fixed buffers."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(Standardise(*channel_stats(x, device=device)), nn.Linear(x.shape[-1], classes))
    head.to(device)
    gen = torch.Generator().manual_seed(seed)  # on the host: the same draws on every device
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, round(iterations * 1500 / 160_000))

    def factor(it: int) -> float:
        return (it + 1) / warmup if it < warmup else (1 - (it - warmup) / max(1, iterations - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    targets = [_loss_target(torch.as_tensor(m.astype(np.int64)), grid).to(device) for m in masks]
    same_size = len({tuple(t.shape) for t in targets}) == 1
    stacked = torch.stack(targets) if same_size else None
    for _ in range(iterations):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        if stacked is not None:
            logits = _logits(head, x[idx].to(device).float(), grid, tuple(stacked.shape[-2:]))
            loss = F.cross_entropy(logits, stacked[idx.to(device)], ignore_index=IGNORE)
        else:  # label maps of different sizes: one upsampling per image
            losses = [
                F.cross_entropy(
                    _logits(head, x[i : i + 1].to(device).float(), grid, tuple(targets[i].shape)),
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
    def __init__(self, source: str, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.source = source  # "part-masks" or "object-masks"

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        stages = study_stages(encoder)
        out = frozenset({"stages"})
        return {
            "train": View(self.source, "train", "test", out, stages, masks=LOSS_RESOLUTION),
            "test": View(self.source, "test", "test", out, stages, masks=FULL),
        }

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        *,
        device: torch.device,
        seed: int,
        repeats: int = 1,
    ) -> TaskResult:
        options = self.options
        train, test = features["train"], features["test"]
        names = dataset.classes_for(self.source)
        classes = len(names)
        x_tr, x_te = train["stages"], test["stages"]
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
                device=device,
            )
            with torch.no_grad():
                for i, mask in enumerate(masks_te):
                    pred = _logits(head, x_te[i : i + 1].to(device).float(), test.grid, mask.shape).argmax(1)[
                        0
                    ]
                    target = torch.as_tensor(np.asarray(mask, dtype=np.int64), device=device)
                    i_c, u_c = _counts(pred, target, classes)
                    inter[r, i], union[r, i] = i_c.cpu().numpy(), u_c.cpu().numpy()
            scores.append(miou_from_counts(inter[r].sum(0), union[r].sum(0)))
        # Resampling images: each image's counts averaged over repeats, then summed.
        i_mean, u_mean = inter.mean(0), union.mean(0)

        def stat(counts: np.ndarray) -> float:
            return miou_from_counts(counts @ i_mean, counts @ u_mean)

        iou = np.divide(i_mean.sum(0), u_mean.sum(0), out=np.full(classes, np.nan), where=u_mean.sum(0) > 0)
        details: dict[str, Any] = {
            "per_class_iou": {names[c]: 100 * float(iou[c]) for c in range(classes) if not np.isnan(iou[c])},
            "train_images": len(train.masks[self.source]),
            "interval": "test images resampled",
        }
        if repeats > 1:
            details["mIoU_repeats"] = [100 * s for s in scores]
            details["mIoU_std"] = float(100 * np.std(scores, ddof=1))
        pixels = np.zeros(classes, dtype=np.int64)
        for m in masks_te:
            m = np.asarray(m)
            pixels += np.bincount(m[m != IGNORE].ravel(), minlength=classes)[:classes]
        return TaskResult(
            metrics={"mIoU": percent(float(np.mean(scores)), bootstrap_ci(len(masks_te), stat, seed=seed))},
            n_items=len(masks_te),
            items_per_class={names[c]: int(pixels[c]) for c in range(classes) if pixels[c]},
            details=details,
            items={"intersection": i_mean, "union": u_mean},
            chance={"mIoU": chance_miou(pixels)},
        )
