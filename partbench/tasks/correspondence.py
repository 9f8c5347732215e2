"""Semantic keypoint correspondence, no training: each keypoint annotated on both images of
a pair is looked up in the target by cosine similarity over the target's dense feature map.

The source descriptor is the feature map sampled bilinearly at the keypoint (cell centres at
(j + 0.5) / grid of the image, as ``F.grid_sample`` with ``align_corners=False`` reads them,
clamped at the border). The target map is upsampled bilinearly ``upsample`` times between its
cell centres, as DIFT and the correspondence papers upsample it towards the image, and the
prediction is the best-matching point mapped to the target image's pixels: a cell's centre
alone would put a SynParts prediction up to 8 pixels off, more than PCK@0.10 of its boxes
allows. ``predict=soft-argmax`` instead takes the softmax-weighted mean of the cell centres in
a window around the best cell. Scored by PCK@α: a prediction is correct when it lies within
α times the larger side of the target's object box (SPair-71k's convention;
``reference=image``: of the target image) of the annotated point. PCK@0.10 is the headline;
0.05 and 0.15 are reported beside it. The interval resamples pairs; the chance level is a
point drawn uniformly in the target's box."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from partbench.datasets.base import Dataset
from partbench.datasets.pairs import KeypointPair
from partbench.encoders.base import Encoder
from partbench.errors import PartbenchError
from partbench.features import Features, View
from partbench.metrics.resampling import bootstrap_ci
from partbench.tasks.base import Task, TaskResult, percent

ALPHAS = (0.05, 0.10, 0.15)
HEADLINE = "PCK@0.10"
CHUNK_BYTES = 64 * 2**20  # float32 working memory of a chunk of pairs
CHANCE_GRID = 64  # the chance level's midpoint rule: 64 x 64 points of the target box


def dense_maps(features: Features, stage: int) -> torch.Tensor:
    """(N, T, C) patch descriptors of a ``dense_view`` on its grid, prefix tokens dropped: the
    final map (``stage`` < 0: the token output) or the stage the view asked for."""
    output = "tokens" if stage < 0 else "stages"
    x = features[output]
    cells = features.grid[0] * features.grid[1]
    if x.ndim != 3 or x.shape[1] < cells:
        raise PartbenchError(f"output '{output}' has shape {tuple(x.shape)}; expected (N, >= {cells}, C)")
    return x[:, x.shape[1] - cells :]


def dense_view(source: str, role: str, stage: int, encoder: Encoder, **extra: Any) -> View:
    """The view of one split's dense maps: the final map (``stage`` < 0: the token output)
    or one declared stage."""
    if stage < 0:
        return View(source, role, "test", frozenset({"tokens"}), **extra)
    if stage >= len(encoder.stages):
        raise PartbenchError(
            f"option stage={stage}: encoder '{encoder.name}' declares stages 0..{len(encoder.stages) - 1}"
        )
    return View(source, role, "test", frozenset({"stages"}), (stage,), **extra)


def interpolation_weights(cells: int, factor: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The points ``factor`` to a cell between the first and the last cell centre
    ((cells - 1) * factor + 1 of them, the centres among them): point t reads the map at cell
    coordinate t / factor, (1 - frac) of cell ``left`` and frac of the next."""
    pos = torch.arange((cells - 1) * factor + 1, device=device, dtype=torch.float64) / factor
    left = pos.floor().long().clamp(max=max(cells - 2, 0))
    return left, pos - left


def interpolation_matrix(cells: int, factor: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(points, cells): the weights of ``interpolation_weights`` as a matrix."""
    left, frac = interpolation_weights(cells, factor, device)
    m = torch.zeros(len(left), cells, dtype=torch.float64, device=device)
    rows = torch.arange(len(left), device=device)
    m[rows, left] = 1 - frac
    m[rows, (left + 1).clamp(max=cells - 1)] += frac
    return m.to(dtype)


def upsampled_scores(desc: torch.Tensor, target_maps: torch.Tensor, factor: int) -> torch.Tensor:
    """Each descriptor's cosine similarity with the target map bilinearly upsampled ``factor``
    times between its cell centres, times the descriptor's norm (the same argmax, a pass
    fewer): desc (P, C, K), target_maps (P, C, h, w) -> (P, K, H, W), H = (h - 1) * factor + 1.

    The upsampled map is never built. Its dot products with a descriptor are the coarse dot
    products upsampled (interpolation is linear); its squared norm at a point is the quadratic
    form of the four surrounding cells' Gram matrix in their interpolation weights, read from
    one Gram matrix of the cells per pair. That costs C * (h * w)^2 per pair, where building
    the map costs C * H * W and each keypoint as much again."""
    p, c, h, w = target_maps.shape
    dev, dtype = target_maps.device, target_maps.dtype
    ay = interpolation_matrix(h, factor, dtype, dev)  # (H, h)
    ax = interpolation_matrix(w, factor, dtype, dev)  # (W, w)
    flat = target_maps.reshape(p, c, h * w)
    dots = torch.bmm(desc.transpose(1, 2), flat).reshape(p, -1, h, w)
    dots = ay @ dots @ ax.T  # (P, K, H, W)
    gram = torch.bmm(flat.transpose(1, 2), flat).reshape(p, -1)  # (P, (h w)^2), row-major (i, j, k, l)
    j0, fx = interpolation_weights(w, factor, dev)
    j1 = (j0 + 1).clamp(max=w - 1)
    a0, a1 = (1 - fx).to(dtype), fx.to(dtype)
    rows = torch.arange(h, device=dev)[:, None]

    def entries(i: torch.Tensor, j: torch.Tensor, k: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return gram.index_select(1, (((i * w + j) * h + k) * w + m).reshape(-1)).reshape(p, h, -1)

    def along_x(k: torch.Tensor) -> torch.Tensor:
        """(P, h, W): the products of row i and row k of the map upsampled along x."""
        return (
            a0**2 * entries(rows, j0, k, j0)
            + a1**2 * entries(rows, j1, k, j1)
            + a0 * a1 * (entries(rows, j0, k, j1) + entries(rows, j1, k, j0))
        )

    same, next_row = along_x(rows), along_x((rows + 1).clamp(max=h - 1))
    i0, fy = interpolation_weights(h, factor, dev)
    i1 = (i0 + 1).clamp(max=h - 1)
    b0, b1 = (1 - fy).to(dtype)[:, None], fy.to(dtype)[:, None]
    norm2 = (
        b0**2 * same.index_select(1, i0)
        + b1**2 * same.index_select(1, i1)
        + 2 * b0 * b1 * next_row.index_select(1, i0)
    )
    return dots.mul_(norm2.clamp_min(1e-24).rsqrt_()[:, None])


def predict_points(
    source_maps: torch.Tensor,
    target_maps: torch.Tensor,
    source_points: torch.Tensor,
    *,
    predict: str = "argmax",
    upsample: int,
    window: int = 5,
    temperature: float = 0.04,
) -> torch.Tensor:
    """Matches for a batch of pairs.

    source_maps, target_maps: (P, C, h, w). source_points: (P, K, 2), x and y as fractions of
    the source image's width and height. Returns (P, K, 2) predicted points as fractions of
    the target image's width and height. ``argmax``: the best of the target map's points
    upsampled ``upsample`` times between cell centres (1: the cell centres);
    ``soft-argmax``: the weighted mean of the cell centres in a window around the best cell."""
    p, c, h, w = target_maps.shape
    grid = (source_points * 2 - 1).unsqueeze(2)  # (P, K, 1, 2) in grid_sample's [-1, 1]
    desc = F.grid_sample(source_maps, grid, mode="bilinear", padding_mode="border", align_corners=False)
    desc = desc.squeeze(-1)  # (P, C, K)
    if predict == "argmax":
        sims = upsampled_scores(desc, target_maps, upsample)
        big_w = sims.shape[-1]
        best = sims.flatten(2).argmax(-1)
        # Point t of the upsampled axis sits at cell coordinate 0.5 + t / upsample.
        y = 0.5 + (best // big_w).to(sims.dtype) / upsample
        x = 0.5 + (best % big_w).to(sims.dtype) / upsample
        return torch.stack([x / w, y / h], dim=-1)
    keys = target_maps.reshape(p, c, h * w)
    # Cosine as dot products over the norms: one product and one norm pass over the target
    # maps, where normalising them first costs a pass more (the maps dominate the work).
    dots = torch.bmm(desc.transpose(1, 2), keys)  # (P, K, T)
    d_norm = torch.linalg.vector_norm(desc, dim=1).clamp_min(1e-12)
    k_norm = torch.linalg.vector_norm(keys, dim=1).clamp_min(1e-12)
    sims = dots / d_norm[:, :, None] / k_norm[:, None, :]
    best = sims.argmax(-1)
    row, col = best // w, best % w
    if predict == "soft-argmax":
        r = window // 2
        offsets = torch.arange(-r, r + 1, device=sims.device)
        rows = row[..., None, None] + offsets[:, None]  # (P, K, W, 1)
        cols = col[..., None, None] + offsets[None, :]  # (P, K, 1, W)
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        flat = (rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)).reshape(p, sims.shape[1], -1)
        logits = sims.gather(-1, flat) / temperature
        logits = logits.masked_fill(~inside.reshape(flat.shape), float("-inf"))
        weights = logits.softmax(-1)
        ys = (rows.expand_as(inside) + 0.5).reshape(flat.shape).to(sims.dtype)
        xs = (cols.expand_as(inside) + 0.5).reshape(flat.shape).to(sims.dtype)
        y, x = (weights * ys).sum(-1), (weights * xs).sum(-1)
    else:
        raise ValueError(f"predict must be argmax or soft-argmax, got '{predict}'")
    return torch.stack([x / w, y / h], dim=-1)


def reference_sizes(pairs: Sequence[KeypointPair], reference: str) -> np.ndarray:
    """The length α multiplies, per pair: the larger side of the target's box, or image."""
    if reference == "bbox":
        return np.array(
            [max(p.target_box[2] - p.target_box[0], p.target_box[3] - p.target_box[1]) for p in pairs]
        )
    return np.array([max(p.target_size) for p in pairs], dtype=np.float64)


def chance_hits(
    boxes: np.ndarray, points: np.ndarray, radii: np.ndarray, grid: int = CHANCE_GRID
) -> np.ndarray:
    """For each keypoint, the share of its target box within ``radius`` of it: the chance
    that a point drawn uniformly in the box is correct. The disc's part of the box is
    integrated by the midpoint rule on a grid x grid lattice of the box clipped to the disc's
    bounding square, so the lattice is as fine relative to the disc whatever the box's size.
    boxes (K, 4), points (K, 2), radii (K,) or (K, A) -> the shape of radii."""
    r_all = np.reshape(radii, (len(radii), -1)).astype(np.float64)
    t = (np.arange(grid) + 0.5) / grid
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    out = np.zeros_like(r_all)
    for a in range(r_all.shape[1]):
        for start in range(0, len(points), 4096):
            sl = slice(start, start + 4096)
            b, pt, r = boxes[sl], points[sl], r_all[sl, a]
            x0, x1 = np.maximum(b[:, 0], pt[:, 0] - r), np.minimum(b[:, 2], pt[:, 0] + r)
            y0, y1 = np.maximum(b[:, 1], pt[:, 1] - r), np.minimum(b[:, 3], pt[:, 1] + r)
            w, h = np.clip(x1 - x0, 0, None), np.clip(y1 - y0, 0, None)
            xs = x0[:, None] + t * w[:, None]  # (k, G)
            ys = y0[:, None] + t * h[:, None]
            d2 = (xs[:, None, :] - pt[:, 0, None, None]) ** 2 + (ys[:, :, None] - pt[:, 1, None, None]) ** 2
            inside = (d2 <= (r**2)[:, None, None]).mean(axis=(1, 2))
            out[sl, a] = inside * w * h / area[sl]
    return out.reshape(np.shape(radii))


class Correspondence(Task):
    source = "keypoint-pairs"

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        return {"test": dense_view(self.source, "test", self.options["stage"], encoder)}

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
        test = features["test"]
        maps = dense_maps(test, opts["stage"])
        item_of, pairs = _encoded_pairs(test, len(maps), dataset)
        pred = self._predictions(maps, test.grid, item_of, pairs, device)
        gt = np.concatenate([p.target_xy for p in pairs])
        pair_of = np.concatenate([np.full(len(p.target_xy), i) for i, p in enumerate(pairs)])
        ref = reference_sizes(pairs, opts["reference"])[pair_of]
        ratio = np.sqrt(((pred - gt) ** 2).sum(-1)) / ref
        flags = sorted({f for p in pairs for f in p.flags})
        items = _point_items(pairs, pair_of, ratio, flags)
        results = _pck(pair_of, ratio, len(pairs), seed)
        boxes = np.array([pairs[i].target_box for i in pair_of], dtype=np.float64).reshape(-1, 4)
        chance = chance_hits(boxes, gt, np.outer(ref, ALPHAS))
        names = dataset.classes_for(self.source)
        details = _details(pairs, pair_of, items, flags, chance, names)
        return TaskResult(
            metrics=results,
            n_items=len(pairs),
            items_per_class=_pairs_per_class(pairs, names),
            details=details,
            items=items,
            chance={HEADLINE: 100 * float(chance[:, ALPHAS.index(0.10)].mean())},
        )

    def _predictions(
        self,
        maps: torch.Tensor,
        grid: tuple[int, int],
        item_of: dict[int, int],
        pairs: list[KeypointPair],
        device: torch.device,
    ) -> np.ndarray:
        """Every pair's predicted target points in the target's pixels, pairs in order, found
        in chunks of pairs whose float32 working memory stays near CHUNK_BYTES."""
        opts = self.options
        h, w = grid
        kmax = max(len(p.source_xy) for p in pairs)
        factor = opts["upsample"] if opts["predict"] == "argmax" else 1
        up_h, up_w = (h - 1) * factor + 1, (w - 1) * factor + 1
        # float32 per pair: both maps, the target's Gram matrix, the similarities.
        per_pair = 4 * (2 * maps.shape[1] * maps.shape[2] + (h * w) ** 2 + kmax * up_h * up_w)
        chunk = max(1, CHUNK_BYTES // per_pair)

        def load(items: list[int]) -> torch.Tensor:
            x = torch.as_tensor(np.asarray(maps[np.asarray(items)]))
            return x.to(device).float().reshape(len(items), h, w, -1).permute(0, 3, 1, 2)

        parts = []
        for start in range(0, len(pairs), chunk):
            part = pairs[start : start + chunk]
            src = _source_points(part)
            out = (
                predict_points(
                    load([item_of[p.source] for p in part]),
                    load([item_of[p.target] for p in part]),
                    torch.as_tensor(src, dtype=torch.float32, device=device),
                    predict=opts["predict"],
                    upsample=opts["upsample"],
                    window=opts["window"],
                    temperature=opts["temperature"],
                )
                .double()
                .cpu()
                .numpy()
            )
            for i, p in enumerate(part):
                parts.append(out[i, : len(p.source_xy)] * np.asarray(p.target_size, dtype=np.float64))
        return np.concatenate(parts)


def _encoded_pairs(
    test: Features, n_maps: int, dataset: Dataset
) -> tuple[dict[int, int], list[KeypointPair]]:
    """The feature item of each encoded sample, and the test split's keypoint pairs whose two
    images were both encoded and whose source has keypoints."""
    samples = test.sample_index if test.sample_index is not None else np.arange(n_maps)
    item_of = {int(s): k for k, s in enumerate(samples)}
    split = dataset.split_for("test")
    pairs = [
        p
        for p in dataset.keypoint_pairs(split, int(samples.max()) + 1 if len(samples) else 0)
        if p.source in item_of and p.target in item_of and len(p.source_xy)
    ]
    if not pairs:
        raise PartbenchError(
            f"{dataset.name}: no keypoint pair of the {split} split among the encoded images"
        )
    return item_of, pairs


def _source_points(part: Sequence[KeypointPair]) -> np.ndarray:
    """(pairs, most keypoints, 2): each source keypoint as a fraction of its image's size,
    zero-padded."""
    k = max(len(p.source_xy) for p in part)
    src = np.zeros((len(part), k, 2))
    for i, p in enumerate(part):
        src[i, : len(p.source_xy)] = p.source_xy / np.asarray(p.source_size, dtype=np.float64)
    return src


def _point_items(
    pairs: Sequence[KeypointPair], pair_of: np.ndarray, ratio: np.ndarray, flags: list[str]
) -> dict[str, np.ndarray]:
    """The per-keypoint items stored with a run: correct at PCK@0.10, the pair, the distance
    ratio, and each of the pairs' flags (-1 where a pair lacks it)."""
    items: dict[str, np.ndarray] = {
        "correct": (ratio <= 0.10).astype(np.float64),
        "pair": pair_of.astype(np.int64),
        "ratio": ratio,
    }
    for f in flags:
        items[f"flag.{f}"] = np.array([pairs[i].flags.get(f, -1) for i in pair_of], dtype=np.int64)
    return items


def _pck(pair_of: np.ndarray, ratio: np.ndarray, n: int, seed: int) -> dict[str, Any]:
    """PCK at each α with its interval, resampling the n pairs."""
    hits_per_pair = {a: np.bincount(pair_of, ratio <= a, minlength=n) for a in ALPHAS}
    totals = np.bincount(pair_of, minlength=n).astype(np.float64)

    def stat_for(a: float):
        return lambda counts: float((counts @ hits_per_pair[a]) / (counts @ totals))

    return {
        f"PCK@{a:.2f}": percent(stat_for(a)(np.ones(n)), bootstrap_ci(n, stat_for(a), seed=seed))
        for a in ALPHAS
    }


def _details(
    pairs: Sequence[KeypointPair],
    pair_of: np.ndarray,
    items: dict[str, np.ndarray],
    flags: list[str],
    chance: np.ndarray,
    names: Sequence[str],
) -> dict[str, Any]:
    """The counts, chance levels, PCK per class and PCK by each flag's value."""
    details: dict[str, Any] = {
        "keypoints": len(pair_of),
        "pairs": len(pairs),
        "interval": "pairs resampled",
        "chance": {f"PCK@{a:.2f}": 100 * float(chance[:, j].mean()) for j, a in enumerate(ALPHAS)},
        "per_class_pck": {
            names[c] if 0 <= c < len(names) else str(c): 100 * float(items["correct"][lab == c].mean())
            for lab in [np.array([pairs[i].label for i in pair_of])]
            for c in sorted(set(lab.tolist()))
        },
    }
    for f in flags:
        values = items[f"flag.{f}"]
        details[f"{HEADLINE} by {f}"] = {
            str(v): 100 * float(items["correct"][values == v].mean()) for v in sorted(set(values.tolist()))
        }
    return details


def _pairs_per_class(pairs: Sequence[KeypointPair], names: Sequence[str]) -> dict[str, int]:
    """The number of pairs of each class, in the order the classes first appear."""
    per_class: dict[str, int] = {}
    for p in pairs:
        name = names[p.label] if 0 <= p.label < len(names) else str(p.label)
        per_class[name] = per_class.get(name, 0) + 1
    return per_class
