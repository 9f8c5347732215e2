"""In-context segmentation, no training (Hummingbird: Balažević et al., "Towards In-context
Scene Understanding", NeurIPS 2023): a memory bank of the training split's patch features,
each with its patch's label distribution (the share of the patch's labelled pixels in each
class), and every test patch labelled by the softmax-weighted vote of its k nearest bank
patches by cosine similarity. The votes are upsampled bilinearly to the label map, the
arg-max is the prediction, and mIoU is counted per image as ``part-seg`` counts it.

Defaults as in the Hummingbird evaluation and its open reproduction (tasks.builtin: 30
neighbours, softmax temperature 0.02, its smallest memory of 1024 x 10^2 patches). The
bank is a uniform draw of the labelled training patches seeded by the run's seed (the
reproduction favours patches of rare classes; partbench keeps the draw plain) and is
searched exactly, on the run's device, a chunk of queries at a time, so the similarities
held at once stay within CHUNK_BYTES whatever the bank's size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from partbench.datasets.base import IGNORE, Dataset
from partbench.encoders.base import Encoder
from partbench.errors import PartbenchError
from partbench.features import FULL, Features, View
from partbench.metrics.chance import chance_miou
from partbench.metrics.resampling import bootstrap_ci
from partbench.metrics.scores import miou_from_counts
from partbench.tasks.base import Task, TaskResult, percent
from partbench.tasks.correspondence import dense_maps, dense_view
from partbench.tasks.segmentation import mask_counts

CHUNK_BYTES = 64 * 2**20  # query-by-bank similarities held at once


def patch_labels(mask: np.ndarray, grid: tuple[int, int], classes: int) -> np.ndarray:
    """(h * w, classes) counts of each patch's labelled pixels per class: pixel (y, x) of an
    H x W map falls in patch (y * h // H, x * w // W), the cell of the resized image it shows."""
    mask = np.asarray(mask)
    big_h, big_w = mask.shape
    h, w = grid
    rows = (np.arange(big_h) * h // big_h)[:, None]
    cols = (np.arange(big_w) * w // big_w)[None, :]
    cell = (rows * w + cols).ravel()
    labels = mask.ravel().astype(np.int64)
    keep = labels != IGNORE
    flat = np.bincount(cell[keep] * classes + labels[keep], minlength=h * w * classes)
    return flat[: h * w * classes].reshape(h * w, classes).astype(np.float64)


def knn_vote(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    *,
    k: int,
    temperature: float,
    chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    """(Q, classes): each query's softmax(cosine / temperature)-weighted mean of the label
    distributions of its k most similar bank rows. ``bank`` must be L2-normalised rows on
    the device the search runs on; queries are normalised here. Exact search, queries in
    chunks so that a chunk's similarities stay within ``chunk_bytes`` and a quarter of the
    bank's size."""
    k = min(k, len(bank))
    # A chunk's similarities stay within a quarter of the bank's own size too, so that the
    # search never holds more than about 1.25 times the bank, however small the bank.
    budget = min(chunk_bytes, bank.numel() * bank.element_size() // 4)
    per = max(1, budget // (4 * max(1, len(bank))))
    out = torch.empty(len(queries), bank_labels.shape[1], device=bank.device)
    for i in range(0, len(queries), per):
        q = F.normalize(queries[i : i + per].to(bank.device).float(), dim=1)
        sims, idx = torch.topk(q @ bank.T, k, dim=1)
        weights = torch.softmax(sims / temperature, dim=1)
        out[i : i + per] = torch.einsum("qk,qkc->qc", weights, bank_labels[idx])
    return out


class InContextSegmentation(Task):
    def __init__(self, source: str, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.source = source  # "part-masks" or "object-masks"

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        stage = self.options["stage"]
        return {role: dense_view(self.source, role, stage, encoder, masks=FULL) for role in ("train", "test")}

    def _bank(
        self, train: Features, classes: int, seed: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        maps = dense_maps(train, self.options["stage"])
        cells = maps.shape[1]
        labels = [patch_labels(m, train.grid, classes) for m in train.masks[self.source]]
        where = [np.flatnonzero(lab.sum(1) > 0) for lab in labels]
        flat = np.concatenate([i * cells + w for i, w in enumerate(where)]) if where else np.zeros(0, int)
        if len(flat) == 0:
            raise PartbenchError("no training patch has a labelled pixel: the memory bank is empty")
        size = self.options["bank"]
        if len(flat) > size:
            flat = np.sort(np.random.default_rng(seed).choice(flat, size, replace=False))
        dist = np.concatenate(labels)[flat]
        dist /= dist.sum(1, keepdims=True)
        bank = torch.empty(len(flat), maps.shape[2], device=device)
        rows = maps.reshape(-1, maps.shape[2])
        for i in range(0, len(flat), 65_536):  # gathered a block at a time from the cache
            part = torch.as_tensor(np.asarray(rows[flat[i : i + 65_536]]))
            bank[i : i + 65_536] = F.normalize(part.to(device).float(), dim=1)
        return bank, torch.as_tensor(dist, dtype=torch.float32, device=device), len(np.concatenate(where))

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        *,
        device: torch.device,
        seed: int,
        repeats: int = 1,
    ) -> TaskResult:
        opts = self.options
        train, test = features["train"], features["test"]
        names: Sequence[str] = dataset.classes_for(self.source)
        classes = len(names)
        bank, bank_labels, labelled = self._bank(train, classes, seed, device)
        maps = dense_maps(test, opts["stage"])
        h, w = test.grid
        masks = test.masks[self.source]
        inter = np.zeros((len(masks), classes))
        union = np.zeros_like(inter)
        per_image = max(1, 4096 // (h * w))
        for i in range(0, len(masks), per_image):
            block = torch.as_tensor(np.asarray(maps[i : i + per_image]))
            votes = knn_vote(
                block.reshape(-1, block.shape[-1]),
                bank,
                bank_labels,
                k=opts["k"],
                temperature=opts["temperature"],
            ).reshape(len(block), h, w, classes)
            for j in range(len(block)):
                target = torch.as_tensor(np.asarray(masks[i + j], dtype=np.int64), device=device)
                up = F.interpolate(
                    votes[j].permute(2, 0, 1)[None],
                    size=tuple(target.shape),
                    mode="bilinear",
                    align_corners=False,
                )
                i_c, u_c = mask_counts(up[0].argmax(0), target, classes)
                inter[i + j], union[i + j] = i_c.cpu().numpy(), u_c.cpu().numpy()

        def stat(counts: np.ndarray) -> float:
            return miou_from_counts(counts @ inter, counts @ union)

        score = miou_from_counts(inter.sum(0), union.sum(0))
        total_i, total_u = inter.sum(0), union.sum(0)
        iou = np.divide(total_i, total_u, out=np.full(classes, np.nan), where=total_u > 0)
        pixels = np.zeros(classes, dtype=np.int64)
        for m in masks:
            m = np.asarray(m)
            pixels += np.bincount(m[m != IGNORE].ravel(), minlength=classes)[:classes]
        return TaskResult(
            metrics={"mIoU": percent(score, bootstrap_ci(len(masks), stat, seed=seed))},
            n_items=len(masks),
            items_per_class={names[c]: int(pixels[c]) for c in range(classes) if pixels[c]},
            details={
                "per_class_iou": {
                    names[c]: 100 * float(iou[c]) for c in range(classes) if not np.isnan(iou[c])
                },
                "bank_patches": len(bank),
                "labelled_train_patches": labelled,
                "train_images": len(train.masks[self.source]),
                "interval": "test images resampled; the bank is fixed",
            },
            items={"intersection": inter, "union": union},
            chance={"mIoU": chance_miou(pixels)},
        )
