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

import hashlib
from collections import OrderedDict
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
# Similarities a chunk may always hold, however small the bank: a chunk of a few dozen rows
# spends more on the call than on the product (32 rows a chunk, a 20,000-patch bank: 1.4x slower).
SMALL_CHUNK_BYTES = 16 * 2**20
# Fewer rows than this in one product can take another kernel, whose sums are rounded
# differently (rows 1-5 of a CPU matmul did): a short last chunk is widened back to this.
MIN_ROWS = 32
# Neighbours remembered for the next task that searches the same bank with the same queries
# (part-seg-nn and object-seg-nn read the same maps; on SynParts their banks hold the same
# patches): at most this much, and only for the bank searched last.
REMEMBERED_BYTES = 256 * 2**20
UPSAMPLE_BYTES = 64 * 2**20  # upsampled class scores held at once while labelling


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


def _read_cells(size: int, cells: int) -> np.ndarray:
    """(size, cells) bool: the cells a bilinear upsampling (align_corners=False) from ``cells``
    to ``size`` points reads at each point, with a cell to spare where the point's source
    coordinate lies within rounding of a cell boundary (the kernel computes it in float32)."""
    src = np.maximum((np.arange(size) + 0.5) * (cells / size) - 0.5, 0.0)
    lo = np.clip(np.floor(src - 1e-4), 0, cells - 1).astype(np.int64)
    hi = np.clip(np.floor(src + 1e-4) + 1, 0, cells - 1).astype(np.int64)
    span = np.arange(cells)[None, :]
    return (span >= lo[:, None]) & (span <= hi[:, None])


def reached_cells(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h * w,) bool: the cells whose vote reaches a labelled pixel of ``mask`` once upsampled
    to it. Only these are searched: the other cells' votes are read by no pixel that is
    scored, so leaving them at zero changes no prediction that counts."""
    mask = np.asarray(mask)
    labelled = (mask != IGNORE).astype(np.int64)
    rows = _read_cells(mask.shape[0], grid[0]).astype(np.int64)
    cols = _read_cells(mask.shape[1], grid[1]).astype(np.int64)
    return (rows.T @ labelled @ cols > 0).ravel()


def _digest(t: torch.Tensor) -> bytes:
    data = t.detach().cpu().contiguous()
    return (
        hashlib.blake2b(data.view(torch.uint8).numpy(), digest_size=16).digest()
        + repr((tuple(data.shape), data.dtype)).encode()
    )


class _Remembered:
    """Each query's k nearest bank rows, by the content of the queries and the bank: rows
    found once are not searched again by a later task with the same maps and bank."""

    def __init__(self) -> None:
        self.bank: bytes | None = None
        self.found: OrderedDict[tuple[bytes, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (
            OrderedDict()
        )

    def lookup(
        self, bank: bytes, queries: bytes, n: int, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sims, idx, done) on the host for ``n`` queries; rows not ``done`` are to be found."""
        if bank != self.bank:
            self.bank, self.found = bank, OrderedDict()
        key = (queries, k)
        if key not in self.found:
            self.found[key] = (
                torch.empty(n, k),
                torch.empty(n, k, dtype=torch.long),
                torch.zeros(n, dtype=torch.bool),
            )
            while len(self.found) > 1 and self._bytes() > REMEMBERED_BYTES:
                self.found.popitem(last=False)
        else:
            self.found.move_to_end(key)
        return self.found[key]

    def _bytes(self) -> int:
        return sum(s.numel() * 4 + i.numel() * 8 + d.numel() for s, i, d in self.found.values())

    def clear(self) -> None:
        self.bank, self.found = None, OrderedDict()


REMEMBERED = _Remembered()


def _row_chunks(rows: torch.Tensor, per: int, total: int) -> list[torch.Tensor]:
    """``rows`` (sorted query indices) in chunks of ``per``; a short last chunk takes rows from
    before it, or from outside ``rows``, up to MIN_ROWS."""
    chunks = [rows[i : i + per] for i in range(0, len(rows), per)]
    floor = min(MIN_ROWS, total)
    if chunks and len(chunks[-1]) < floor:
        if len(rows) >= floor:
            chunks[-1] = rows[-floor:]
        else:
            spare = torch.ones(total, dtype=torch.bool)
            spare[rows] = False
            extra = torch.nonzero(spare).flatten()[: floor - len(rows)]
            chunks[-1] = torch.cat([rows, extra]).sort().values
    return chunks


def knn_vote(
    queries: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    *,
    k: int,
    temperature: float,
    chunk_bytes: int = CHUNK_BYTES,
    rows: torch.Tensor | None = None,
    bank_key: bytes | None = None,
) -> torch.Tensor:
    """(Q, classes): each query's softmax(cosine / temperature)-weighted mean of the label
    distributions of its k most similar bank rows. ``bank`` must be L2-normalised rows on
    the device the search runs on; queries are normalised here. Exact search, queries in
    chunks so that a chunk's similarities stay within ``chunk_bytes`` and a quarter of the
    bank's size (or SMALL_CHUNK_BYTES). ``rows`` (bool, Q) limits the vote to those queries,
    the others left at zero. With ``bank_key`` (the bank's digest) the neighbours found are
    remembered for the next call with the same bank and queries (REMEMBERED)."""
    k = min(k, len(bank))
    # A chunk's similarities stay within a quarter of the bank's own size too (but never below
    # SMALL_CHUNK_BYTES), so that the search holds little more than the bank.
    budget = min(chunk_bytes, max(bank.numel() * bank.element_size() // 4, SMALL_CHUNK_BYTES))
    per = max(MIN_ROWS, budget // (4 * max(1, len(bank))))
    wanted = torch.ones(len(queries), dtype=torch.bool) if rows is None else rows.cpu()
    if bank_key is not None:
        sims, idx, done = REMEMBERED.lookup(bank_key, _digest(queries), len(queries), k)
    else:
        sims, idx = torch.empty(len(queries), k), torch.empty(len(queries), k, dtype=torch.long)
        done = torch.zeros(len(queries), dtype=torch.bool)
    todo = torch.nonzero(wanted & ~done).flatten()
    for part in _row_chunks(todo, per, len(queries)):
        q = F.normalize(queries[part].to(bank.device).float(), dim=1)
        s, i = torch.topk(q @ bank.T, k, dim=1)
        sims[part], idx[part], done[part] = s.cpu(), i.cpu(), True
    out = torch.zeros(len(queries), bank_labels.shape[1], device=bank.device)
    voting = torch.nonzero(wanted).flatten()
    for i in range(0, len(voting), per):
        part = voting[i : i + per]
        weights = torch.softmax(sims[part].to(bank.device) / temperature, dim=1)
        out[part.to(bank.device)] = torch.einsum(
            "qk,qkc->qc", weights, bank_labels[idx[part].to(bank.device)]
        )
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
        bank_key = _digest(bank)
        for i in range(0, len(masks), per_image):
            block = torch.as_tensor(np.asarray(maps[i : i + per_image]))
            targets = [np.asarray(masks[i + j]) for j in range(len(block))]
            votes = knn_vote(
                block.reshape(-1, block.shape[-1]),
                bank,
                bank_labels,
                k=opts["k"],
                temperature=opts["temperature"],
                rows=torch.as_tensor(np.concatenate([reached_cells(t, (h, w)) for t in targets])),
                bank_key=bank_key,
            ).reshape(len(block), h, w, classes)
            # Upsampled and labelled together: images with maps of one size, as many as
            # UPSAMPLE_BYTES of class scores hold (a coarse grid puts a thousand images in a block).
            start = 0
            while start < len(block):
                shape = targets[start].shape
                most = max(1, UPSAMPLE_BYTES // (4 * classes * shape[0] * shape[1]))
                end = start + 1
                while end < min(len(block), start + most) and targets[end].shape == shape:
                    end += 1
                up = F.interpolate(
                    votes[start:end].permute(0, 3, 1, 2),
                    size=targets[start].shape,
                    mode="bilinear",
                    align_corners=False,
                )
                pred = up.argmax(1)
                for j in range(start, end):
                    target = torch.as_tensor(targets[j].astype(np.int64), device=device)
                    i_c, u_c = mask_counts(pred[j - start], target, classes)
                    inter[i + j], union[i + j] = i_c.cpu().numpy(), u_c.cpu().numpy()
                start = end

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
