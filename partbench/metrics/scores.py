"""Scores of a task, as plain functions on arrays or tensors, so they can be checked and reused.

retrieval_ap            per-query average precision, equal to scikit-learn's
                        average_precision_score, in chunks of queries on any device
mean_ap_per_class       the mean over classes of the per-class mean AP
top1                    accuracy of predictions
intersection_union      per-class intersection and union counts of label maps
miou, miou_from_counts  mean intersection over union, ignoring a label value
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the CLI imports this module at start-up
    import torch

# Work arrays of one chunk of queries on the CPU (similarities, their sorted positives, counts).
_CPU_BUDGET = 256 * 2**20
# The gallery is held normalised in float64 when it takes at most this much, else streamed in
# blocks of _GALLERY_BLOCK bytes (converted and normalised block by block).
_CPU_GALLERY_BUDGET = 256 * 2**20
_GALLERY_BLOCK = 32 * 2**20
# Share of the free accelerator memory that retrieval's chunks may use (the rest is left to
# whatever else the run holds there), and a cap: larger chunks no longer run faster.
_DEVICE_SHARE = 0.5
_DEVICE_CAP = 4 * 2**30


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array (a tensor detached and moved to the CPU first)."""
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------
# Retrieval


def retrieval_ap(
    features: Any,
    labels: Any,
    include_self: bool = True,
    *,
    device: Any = None,
    chunk: int | None = None,
) -> np.ndarray:
    """Average precision of every item as a query against all items, by cosine similarity.

    Similarities are float64 cosines rounded to 9 decimals; equal rounded values are ties,
    scored the way scikit-learn scores them (a tie group enters the ranking at once, its
    precision taken at its last member), so the result equals ``average_precision_score``
    per query to 1e-6 whatever the device or chunking. With ``include_self`` the query stays
    in its own gallery (the study's code does this); without it, a query with no other
    positive gets NaN.

    ``features`` (N, D) stay where they are (a CPU tensor, a memory-mapped array) and are never
    copied whole to float64 unless that copy is small; the work runs on ``device`` (default:
    the features' device, the CPU for arrays) in chunks of ``chunk`` queries, by default as
    many as fit the free memory (CUDA) or a fixed budget of a few hundred MB (CPU).
    """
    import torch

    feats = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(to_numpy(features))
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(feats.shape)}")
    lab = to_numpy(labels).reshape(-1)
    n = len(lab)
    if feats.shape[0] != n:
        raise ValueError(f"{feats.shape[0]} features but {n} labels")
    out = np.full(n, np.nan)
    if n == 0:
        return out
    dev = torch.device(device) if device is not None else feats.device
    codes = np.unique(lab, return_inverse=True)[1].reshape(-1)

    # Queries are taken in label order, so that each chunk's positives are the gallery items
    # of a contiguous range of classes: order[start[c]:start[c + 1]] are the items of class c.
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    start = np.concatenate([[0], np.cumsum(sizes)])
    sorted_codes = codes[order]
    first, stop = start[sorted_codes], start[sorted_codes + 1]  # per query, in label order
    npos = sizes[sorted_codes] - (0 if include_self else 1)

    gallery = _Gallery(feats, dev)
    if chunk is None:
        chunk = _queries_per_chunk(n, int(sizes.max()), dev)
    chunk = max(1, int(chunk))
    use_numpy = dev.type == "cpu" and _NUMPY_ON_CPU
    for q0 in range(0, n, chunk):
        q1 = min(q0 + chunk, n)
        rows = order[q0:q1]
        sims = gallery.similarities(rows)  # (c, n) float64 on dev, columns in item order
        # Rounded so that equal cosines tie whatever the matmul's summation order (chunk
        # size, device); otherwise float noise would split ties at random.
        sims.round_(decimals=9)
        rows_t = torch.as_tensor(rows, device=dev)
        local = torch.arange(q1 - q0, device=dev)
        if not include_self:
            sims[local, rows_t] = -torch.inf
        # The similarities of each query to its positives; other items of the span are +inf,
        # which sorts them behind the positives.
        a, b = int(first[q0]), int(stop[q1 - 1])
        pos = sims.index_select(1, torch.as_tensor(order[a:b], device=dev))
        col = torch.arange(a, b, device=dev)
        lo = torch.as_tensor(first[q0:q1], device=dev)[:, None]
        hi = torch.as_tensor(stop[q0:q1], device=dev)[:, None]
        positive = (col >= lo) & (col < hi)
        if not include_self:
            positive &= col != torch.arange(q0, q1, device=dev)[:, None]
        pos.masked_fill_(~positive, torch.inf)
        if use_numpy:
            ap = _ap_numpy(sims.numpy(), pos.numpy(), npos[q0:q1])
        else:
            ap = _ap_torch(sims, pos, torch.as_tensor(npos[q0:q1], device=dev)).cpu().numpy()
        out[rows] = ap
    return out


# The CPU path sorts with NumPy (values only, SIMD, in place) in threads; the generic torch path
# is the one every other device takes. Tests switch this off to run that path on the CPU.
_NUMPY_ON_CPU = True


def _ap_torch(sims: torch.Tensor, pos: torch.Tensor, npos: torch.Tensor) -> torch.Tensor:
    """AP of each row from its similarities to all items and to its positives (+inf padded).

    Each positive with similarity v contributes (positives >= v) / (items >= v): within a tie
    group every positive gets the group's precision at its last member, which is how
    scikit-learn scores ties. AP is the mean over the positives.
    """
    import torch

    n = sims.shape[1]
    sorted_all = torch.sort(sims, dim=1).values
    pos = torch.sort(pos, dim=1).values
    below_all = torch.searchsorted(sorted_all, pos)  # items < v
    below_pos = torch.searchsorted(pos, pos)  # positives < v
    valid = torch.arange(pos.shape[1], device=pos.device)[None, :] < npos[:, None]
    ge_all = (n - below_all).clamp(min=1).to(torch.float64)
    prec = torch.where(valid, (npos[:, None] - below_pos).to(torch.float64) / ge_all, 0.0)
    # Summed in order up to the last positive (a running sum, not a reduction whose order would
    # follow the padded width), so that a query's AP does not depend on the chunk it is in.
    total = prec.cumsum(dim=1).gather(1, (npos - 1).clamp(min=0)[:, None])[:, 0]
    ap = total / npos.clamp(min=1).to(torch.float64)
    return torch.where(npos > 0, ap, torch.nan)


def _ap_numpy(sims: np.ndarray, pos: np.ndarray, npos: np.ndarray) -> np.ndarray:
    """``_ap_torch`` on the CPU: NumPy sorts values only (no indices) and searches sorted keys
    fast, in place, and releases the GIL, so blocks of rows run in parallel threads."""
    n = sims.shape[1]
    ap = np.full(len(sims), np.nan)

    def block(r0: int, r1: int) -> None:
        sims[r0:r1].sort(axis=1)
        pos[r0:r1].sort(axis=1)
        for r in range(r0, r1):
            m = int(npos[r])
            if m == 0:
                continue
            v = pos[r, :m]
            below_all = np.searchsorted(sims[r], v)
            below_pos = np.searchsorted(v, v)
            ap[r] = float(np.sum((m - below_pos) / (n - below_all))) / m

    # Threads pay off only on big chunks; small ones (small datasets, tests) stay on one.
    threads = max(1, min(_threads(), len(sims))) if sims.size >= 2**20 else 1
    if threads == 1:
        block(0, len(sims))
    else:
        edges = np.linspace(0, len(sims), threads + 1).astype(int)
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(block, edges[:-1], edges[1:]))
    return ap


def _threads() -> int:
    import torch

    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


class _Gallery:
    """Normalised float64 gallery rows on the device, held whole when that is small and
    converted block by block from the features otherwise (never a whole float64 copy)."""

    def __init__(self, feats: torch.Tensor, device: torch.device) -> None:
        import torch

        self.device = device
        n, d = feats.shape
        self.n = n
        self.block = max(1, _GALLERY_BLOCK // (8 * max(d, 1)))
        whole = n * d * 8
        if device.type == "cuda":
            free = torch.cuda.mem_get_info(device)[0]
            fits, raw_fits = whole <= 0.4 * free, n * d * feats.element_size() <= 0.4 * free
        else:
            fits, raw_fits = whole <= _CPU_GALLERY_BUDGET, True
        self.full: torch.Tensor | None = None
        self.source = feats
        if fits:
            self.full = _normalise(feats.to(device=device, dtype=torch.float64))
        elif raw_fits:
            # Kept in its own dtype where the work runs; blocks become float64 one at a time.
            self.source = feats.to(device)

    def similarities(self, rows: np.ndarray) -> torch.Tensor:
        import torch

        idx = torch.as_tensor(rows, device=self.source.device if self.full is None else self.device)
        if self.full is not None:
            return self.full.index_select(0, idx) @ self.full.T
        q = _normalise(self.source.index_select(0, idx).to(device=self.device, dtype=torch.float64))
        sims = torch.empty((len(rows), self.n), dtype=torch.float64, device=self.device)
        for j0 in range(0, self.n, self.block):
            j1 = min(j0 + self.block, self.n)
            g = _normalise(self.source[j0:j1].to(device=self.device, dtype=torch.float64))
            torch.mm(q, g.T, out=sims[:, j0:j1])  # written in place: the slice's stride is ldc
        return sims


def _normalise(x: torch.Tensor) -> torch.Tensor:
    import torch

    return torch.nn.functional.normalize(x, dim=1)


def _queries_per_chunk(n: int, largest_class: int, device: torch.device) -> int:
    """Queries per chunk: as many as the memory allows for their work arrays.

    A query holds its n similarities (float64, sorted in place on the CPU; a sorted copy and
    its indices on other devices) and, for the span of classes in its chunk, its similarities
    to them with search results (about 40 bytes each, at most c + 2 x the largest class wide).
    """
    import torch

    if device.type == "cuda":
        budget = min(_DEVICE_SHARE * torch.cuda.mem_get_info(device)[0], _DEVICE_CAP)
    else:
        budget = _CPU_BUDGET
    per_item = 8 if device.type == "cpu" and _NUMPY_ON_CPU else 32

    def need(c: int) -> int:
        return c * (per_item * n + 40 * min(n, c + 2 * largest_class))

    c = max(1, min(n, int(budget // (per_item * n + 40 * min(n, 2 * largest_class + 1)))))
    while c > 1 and need(c) > budget:
        c = max(1, min(c - 1, int(c * budget / need(c))))
    return c


def mean_ap_per_class(ap: Any, labels: Any, weights: np.ndarray | None = None) -> float:
    """Mean over classes of each class's mean AP (queries with NaN AP are left out).

    ``weights`` counts how often each query is taken, which is how bootstrap resamples enter.
    """
    ap, labels = to_numpy(ap).astype(np.float64), to_numpy(labels)
    w = np.ones_like(ap) if weights is None else np.asarray(weights, dtype=np.float64)
    ok = ~np.isnan(ap)
    classes, inv = np.unique(labels[ok], return_inverse=True)
    num = np.bincount(inv, weights=ap[ok] * w[ok], minlength=len(classes))
    den = np.bincount(inv, weights=w[ok], minlength=len(classes))
    present = den > 0
    return float(np.mean(num[present] / den[present])) if present.any() else float("nan")


def top1(predictions: Any, targets: Any) -> float:
    """Fraction of predictions equal to the targets; predictions may be logits (N x C)."""
    pred, tgt = to_numpy(predictions), to_numpy(targets)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    return float(np.mean(pred == tgt)) if len(tgt) else float("nan")


def intersection_union(
    pred: Any, target: Any, num_classes: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union counts of one label map (or a stack of them)."""
    p, t = to_numpy(pred).reshape(-1).astype(np.int64), to_numpy(target).reshape(-1).astype(np.int64)
    keep = t != ignore_index
    p, t = p[keep], t[keep]
    inter = np.bincount(t[p == t], minlength=num_classes)[:num_classes]
    area_p = np.bincount(p[(p >= 0) & (p < num_classes)], minlength=num_classes)[:num_classes]
    area_t = np.bincount(t, minlength=num_classes)[:num_classes]
    return inter.astype(np.float64), (area_p + area_t - inter).astype(np.float64)


def miou(pred: Any, target: Any, num_classes: int, ignore_index: int = 255) -> float:
    """Mean IoU over the classes that occur in the prediction or the target."""
    inter, union = intersection_union(pred, target, num_classes, ignore_index)
    return miou_from_counts(inter, union)


def miou_from_counts(inter: np.ndarray, union: np.ndarray) -> float:
    """Mean IoU from summed intersection and union counts, over classes with a union."""
    present = union > 0
    return float(np.mean(inter[present] / union[present])) if present.any() else float("nan")
