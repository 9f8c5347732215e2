"""Metrics as plain functions on arrays or tensors, so they can be checked and reused.

Scores of a task
    retrieval_ap            per-query average precision, equal to scikit-learn's
                            average_precision_score, in chunks of queries on any device
    mean_ap_per_class       the mean over classes of the per-class mean AP
    top1                    accuracy of predictions
    intersection_union      per-class intersection and union counts of label maps
    miou, miou_from_counts  mean intersection over union, ignoring a label value
    bootstrap_ci            a percentile interval of any statistic over resampled items

Per-item results and paired comparisons (a run's ``items``: see ``score_from_items``)
    score_from_items        a task's headline metric (percent) from its per-item results,
                            optionally weighted by how often each item is drawn
    ItemScorer              the same for many draws at once (a count matrix)
    paired_bootstrap        the difference of two runs on the same items, with its interval
    level_bootstrap         the mean of several tasks' scores; each draw resamples every task
    paired_level_bootstrap  the difference of two such means, with the same draws for both

Chance levels (percent, on the items a task scored)
    chance_retrieval_ap     the expected mAP of a random ranking with the same labels
    chance_top1             always predicting the largest training class
    chance_miou             the best constant label map

Every bootstrap here draws its resamples as ``bootstrap_ci`` does (``rng.integers(0, n, n)``
per resample from ``np.random.default_rng(seed)``, tasks in order), so an interval recomputed
from stored per-item results equals the one the task computed when it ran.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
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
# Entries of one bootstrap count matrix (resamples x items), float64.
_DRAW_ENTRIES = 2**22


def _np(x: Any) -> np.ndarray:
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

    feats = features.detach() if isinstance(features, torch.Tensor) else torch.as_tensor(_np(features))
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(feats.shape)}")
    lab = _np(labels).reshape(-1)
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
    ap, labels = _np(ap).astype(np.float64), _np(labels)
    w = np.ones_like(ap) if weights is None else np.asarray(weights, dtype=np.float64)
    ok = ~np.isnan(ap)
    classes, inv = np.unique(labels[ok], return_inverse=True)
    num = np.bincount(inv, weights=ap[ok] * w[ok], minlength=len(classes))
    den = np.bincount(inv, weights=w[ok], minlength=len(classes))
    present = den > 0
    return float(np.mean(num[present] / den[present])) if present.any() else float("nan")


def top1(predictions: Any, targets: Any) -> float:
    """Fraction of predictions equal to the targets; predictions may be logits (N x C)."""
    pred, tgt = _np(predictions), _np(targets)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    return float(np.mean(pred == tgt)) if len(tgt) else float("nan")


def intersection_union(
    pred: Any, target: Any, num_classes: int, ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union counts of one label map (or a stack of them)."""
    p, t = _np(pred).reshape(-1).astype(np.int64), _np(target).reshape(-1).astype(np.int64)
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


def bootstrap_ci(
    data: Any,
    statistic: Callable[[np.ndarray], float] | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval.

    ``data`` is either a 1-D array (the statistic defaults to its mean) or an item count n, in
    which case ``statistic`` receives an array of counts (how often each of the n items was
    drawn) and computes the statistic from them, which covers class means and summed IoUs.
    """
    rng = np.random.default_rng(seed)
    if np.ndim(data) == 0:
        n = int(data)
        if statistic is None:
            raise ValueError("bootstrap_ci(n) needs a statistic of item counts")
        stat = statistic
    else:
        values = _np(data).astype(np.float64)
        n = len(values)
        if statistic is None:

            def stat(counts: np.ndarray) -> float:
                return float(np.sum(values * counts) / counts.sum())
        else:
            fn = statistic

            def stat(counts: np.ndarray) -> float:
                return float(fn(np.repeat(values, counts)))

    if n == 0:
        return (float("nan"), float("nan"))
    draws = np.array([stat(np.bincount(rng.integers(0, n, n), minlength=n)) for _ in range(n_resamples)])
    return _percentiles(draws, confidence)


def _percentiles(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


# --------------------------------------------------------------------------------------------
# Per-item results and paired comparisons

# The per-item arrays (a task's ``items``) each metric is computed from; ``top1`` items may also
# carry ``label``, which paired comparisons check.
ITEM_FIELDS: dict[str, tuple[str, ...]] = {
    "mAP": ("ap", "label"),
    "AP": ("ap",),
    "top1": ("correct",),
    "mIoU": ("intersection", "union"),
    # Keypoints, each with the pair it belongs to: a draw resamples pairs.
    "PCK@0.10": ("correct", "pair"),
}


def score_from_items(metric: str, items: Mapping[str, np.ndarray], counts: np.ndarray | None = None) -> float:
    """A task's headline metric in percent from its per-item results.

    ``counts`` says how often each item is taken (a bootstrap draw); None takes each once.
    ``mAP``: ``mean_ap_per_class(ap, label, counts)``; ``AP``: the weighted mean AP of the
    queries with a positive; ``top1``: the weighted mean of ``correct``; ``mIoU``:
    ``miou_from_counts(counts @ intersection, counts @ union)``.
    """
    prepared = ItemScorer(metric, items)
    c = None if counts is None else np.asarray(counts, dtype=np.float64).reshape(1, -1)
    return float(prepared.scores(c)[0])


# The attributes an ItemScorer's scores read, per metric (top1: ``values``).
_SCORED_FIELDS = {
    "mIoU": ("inter", "union"),
    "PCK@0.10": ("hits", "totals"),
    "mAP": ("valid", "values", "starts"),
    "AP": ("valid", "values"),
}


class ItemScorer:
    """One task's per-item results (``metric``'s ``ITEM_FIELDS``), checked once and laid out
    to score many bootstrap draws at once: ``scores(counts)`` takes a (resamples x n) matrix
    of how often each of the ``n`` items is drawn and returns one score (percent) per row."""

    def __init__(self, metric: str, items: Mapping[str, np.ndarray]) -> None:
        if metric not in ITEM_FIELDS:
            raise ValueError(f"no per-item scoring for metric {metric!r}; known: {sorted(ITEM_FIELDS)}")
        missing = [k for k in ITEM_FIELDS[metric] if k not in items]
        if missing:
            raise ValueError(f"{metric} needs per-item {missing}; got {sorted(items)}")
        self.metric = metric
        self._digest: str | None = None
        if metric in ("mAP", "AP"):
            ap = np.asarray(items["ap"], dtype=np.float64).reshape(-1)
            self.n = len(ap)
            self.valid = np.flatnonzero(~np.isnan(ap))
            self.values = ap[self.valid]
            if metric == "mAP":
                label = np.asarray(items["label"]).reshape(-1)
                if len(label) != self.n:
                    raise ValueError(f"{self.n} AP values but {len(label)} labels")
                self.label = label
                # Valid queries grouped by class: each class a contiguous run, summed by reduceat.
                classes, inv = np.unique(label[self.valid], return_inverse=True)
                order = np.argsort(inv.reshape(-1), kind="stable")
                self.valid, self.values = self.valid[order], self.values[order]
                self.starts = np.searchsorted(inv.reshape(-1)[order], np.arange(len(classes)))
        elif metric == "PCK@0.10":
            pair = np.asarray(items["pair"], dtype=np.int64).reshape(-1)
            correct = np.asarray(items["correct"], dtype=np.float64).reshape(-1)
            if len(pair) != len(correct):
                raise ValueError(f"{len(correct)} keypoints but {len(pair)} pair indices")
            self.totals = np.bincount(pair).astype(np.float64)
            self.hits = np.bincount(pair, correct, minlength=len(self.totals))
            self.n = len(self.totals)
        elif metric == "top1":
            self.values = np.asarray(items["correct"], dtype=np.float64).reshape(-1)
            self.n = len(self.values)
            self.label = None if "label" not in items else np.asarray(items["label"]).reshape(-1)
        else:
            self.inter = np.asarray(items["intersection"], dtype=np.float64)
            self.union = np.asarray(items["union"], dtype=np.float64)
            if self.inter.shape != self.union.shape or self.inter.ndim != 2:
                raise ValueError("intersection and union must both be (N, C)")
            self.n = len(self.inter)

    def scores(self, counts: np.ndarray | None) -> np.ndarray:
        """Percent, one per row of ``counts`` (resamples x items); None: each item once."""
        c = np.ones((1, self.n)) if counts is None else counts
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.metric == "top1":
                return 100 * (c @ self.values) / c.sum(axis=1)
            if self.metric == "PCK@0.10":
                return 100 * (c @ self.hits) / (c @ self.totals)
            if self.metric == "mIoU":
                inter, union = c @ self.inter, c @ self.union
                return 100 * _mean_present(inter / np.where(union > 0, union, 1), union > 0)
            w = c[:, self.valid]
            if self.metric == "AP":
                return 100 * (w @ self.values) / w.sum(axis=1)
            if len(self.valid) == 0:
                return np.full(len(c), np.nan)
            num = np.add.reduceat(w * self.values, self.starts, axis=1)
            den = np.add.reduceat(w, self.starts, axis=1)
            return 100 * _mean_present(num / np.where(den > 0, den, 1), den > 0)

    def digest(self) -> str:
        """What the scores of any draw depend on, hashed: the memo's key (see ``_draws``)."""
        if self._digest is None:
            h = hashlib.blake2b(self.metric.encode(), digest_size=16)
            for name in _SCORED_FIELDS.get(self.metric, ("values",)):
                a = np.ascontiguousarray(getattr(self, name))
                h.update(f"{name}{a.dtype.str}{a.shape}".encode())
                h.update(a.tobytes())
            self._digest = h.hexdigest()
        return self._digest

    def same_items(self, other: ItemScorer) -> None:
        """Paired comparisons need the same items in the same order."""
        if other.metric != self.metric:
            raise ValueError(f"cannot pair {self.metric} with {other.metric}")
        if other.n != self.n:
            raise ValueError(f"cannot pair runs with {self.n} and {other.n} items")
        if self.metric == "mIoU" and other.inter.shape != self.inter.shape:
            raise ValueError(f"cannot pair {self.inter.shape[1]} classes with {other.inter.shape[1]}")
        mine, theirs = getattr(self, "label", None), getattr(other, "label", None)
        if mine is not None and theirs is not None and not np.array_equal(mine, theirs):
            raise ValueError("cannot pair runs whose items have different labels")


_Items = ItemScorer  # the name it had while the leaderboard was written against it


def _mean_present(ratio: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Row means of ``ratio`` over the ``present`` entries; NaN for a row with none."""
    k = present.sum(axis=1)
    total = np.where(present, ratio, 0.0).sum(axis=1)
    return np.where(k > 0, total / np.maximum(k, 1), np.nan)


def _count_batches(rng: np.random.Generator, n: int, n_resamples: int) -> Iterator[np.ndarray]:
    """Bootstrap draws as count matrices (resamples x items), a batch at a time.

    One ``rng.integers(0, n, (b, n))`` call yields the same indices as b successive calls of
    ``rng.integers(0, n, n)`` (``bootstrap_ci``'s draws); one bincount over offset indices
    counts them all.
    """
    per = max(1, min(n_resamples, _DRAW_ENTRIES // max(n, 1)))
    for b0 in range(0, n_resamples, per):
        b = min(per, n_resamples - b0)
        idx = rng.integers(0, n, (b, n))
        idx += (np.arange(b) * n)[:, None]
        yield np.bincount(idx.reshape(-1), minlength=b * n).reshape(b, n).astype(np.float64)


def _draws(
    sides: Sequence[Sequence[ItemScorer]], *, n_resamples: int, seed: int
) -> tuple[list[float], list[np.ndarray]]:
    """Point estimate and draws of the mean over tasks, for each side; the same item draws
    for every side, one task after another from one generator."""
    if not sides or not sides[0]:
        raise ValueError("no tasks to score")
    rng = np.random.default_rng(seed)
    k = len(sides[0])
    points = [sum(float(t.scores(None)[0]) for t in side) / k for side in sides]
    totals = [np.zeros(n_resamples) for _ in sides]
    ns = tuple(t.n for t in sides[0])
    for j in range(k):
        n = ns[j]
        if n == 0:
            for total in totals:
                total[:] = np.nan
            continue
        # Task j's draws follow from the seed, the draw count and the item counts up to j.
        drawn = (seed, n_resamples, ns[: j + 1])
        keys = [(drawn, side[j].digest()) for side in sides]
        found = [_DRAW_MEMO.get(key) for key in keys]
        state = _DRAW_MEMO.get((drawn, "state"))
        if state is None or any(f is None for f in found):
            made = [np.zeros(n_resamples) if f is None else None for f in found]
            b0 = 0
            for counts in _count_batches(rng, n, n_resamples):
                for out, side in zip(made, sides, strict=True):
                    if out is not None:
                        out[b0 : b0 + len(counts)] = side[j].scores(counts)
                b0 += len(counts)
            for i, out in enumerate(made):
                if out is not None:
                    out.flags.writeable = False
                    found[i] = _DRAW_MEMO.put(keys[i], out)
            _DRAW_MEMO.put((drawn, "state"), rng.bit_generator.state)
        else:
            rng.bit_generator.state = state  # where drawing task j would have left it
        for total, scores in zip(totals, found, strict=True):
            total += scores
    return points, [total / k for total in totals]


class _Memo:
    """A bounded store, oldest use evicted first."""

    def __init__(self, entries: int):
        self.entries = entries
        self.store: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        value = self.store.get(key)
        if value is not None:
            self.store.move_to_end(key)
        return value

    def clear(self) -> None:
        self.store.clear()

    def put(self, key: Any, value: Any) -> Any:
        self.store[key] = value
        self.store.move_to_end(key)
        while len(self.store) > self.entries:
            self.store.popitem(last=False)
        return value


# A leaderboard and a study's claims pair every run with several others under the same draws,
# and scoring the draws again each time was 25 s of a 530 s study. A run's scores on task j's
# draws are a pure function of its items, the seed, the draw count and the item counts of
# tasks 0..j, so they are kept (8 KB per 1,000 draws), with the generator's state after task j,
# and a call whose every side is known skips drawing that task.
_DRAW_MEMO = _Memo(4096)


def _prepare(tasks: Sequence[tuple[str, Mapping[str, np.ndarray]]]) -> list[ItemScorer]:
    return [ItemScorer(metric, items) for metric, items in tasks]


def level_bootstrap(
    tasks: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """The mean over tasks of ``score_from_items`` and its percentile interval, (mean, lo, hi).

    Each draw resamples every task's items (tasks drawn independently, in order, from one
    generator), so the interval is one of the mean, not a mean of intervals.
    """
    prepared = _prepare(tasks)
    (point,), (draws,) = _draws([prepared], n_resamples=n_resamples, seed=seed)
    return (point, *_percentiles(draws, confidence))


def paired_level_bootstrap(
    tasks_a: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    tasks_b: Sequence[tuple[str, Mapping[str, np.ndarray]]],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """The difference a - b of two level means (points), with the same draws of each task's
    items for a and b: tasks are paired by position and must score the same items."""
    a, b = _prepare(tasks_a), _prepare(tasks_b)
    if len(a) != len(b):
        raise ValueError(f"cannot pair {len(a)} tasks with {len(b)}")
    for ta, tb in zip(a, b, strict=True):
        ta.same_items(tb)
    (pa, pb), (da, db) = _draws([a, b], n_resamples=n_resamples, seed=seed)
    return (pa - pb, *_percentiles(da - db, confidence))


def paired_bootstrap(
    metric: str,
    items_a: Mapping[str, np.ndarray],
    items_b: Mapping[str, np.ndarray],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """The difference a - b of one task's metric in points and its percentile interval, from
    the same item draws for a and b (a paired bootstrap over the shared items)."""
    return paired_level_bootstrap(
        [(metric, items_a)], [(metric, items_b)], n_resamples=n_resamples, seed=seed, confidence=confidence
    )


# --------------------------------------------------------------------------------------------
# Chance levels


def _expected_ap_random(n: int, r: int) -> float:
    """Expected AP of a uniformly random ranking of n items of which r are positive.

    AP = (1/r) sum over ranks k holding a positive of (positives in the top k) / k. A positive
    is at rank k with probability r/n, and then each of the k-1 items above it is positive
    with probability (r-1)/(n-1), so
    E[AP] = (1/n) sum_k (1 + (k-1)(r-1)/(n-1)) / k = (H_n + (r-1)/(n-1) (n - H_n)) / n.
    """
    if r == 0:
        return float("nan")
    h = _harmonic(n)
    return (h + ((r - 1) / (n - 1) if n > 1 else 0.0) * (n - h)) / n


def _expected_ap_self_first(n: int, m: int) -> float:
    """Expected AP when the query (a positive) ranks first and the other n-1 items, m-1 of
    them positive, are ranked at random.

    A positive at rank s of the rest (probability (m-1)/(n-1)) has 1 + (its positives in the
    rest's top s) positives above or at it, among 1 + s items; with q = (m-2)/(n-2):
    E[AP] = (1/m) (1 + (m-1)/(n-1) sum_{s=1}^{n-1} (2 + (s-1) q) / (s+1))
    and sum (2 + (s-1) q)/(s+1) = 2 (H_n - 1) + q (n - 1 - 2 (H_n - 1)).
    """
    if m == 1:
        return 1.0
    rest, other = n - 1, m - 1
    q = (other - 1) / (rest - 1) if rest > 1 else 0.0
    h = _harmonic(n) - 1  # sum_{s=1}^{rest} 1/(s+1)
    return (1 + other / rest * (2 * h + q * (rest - 2 * h))) / m


@functools.lru_cache(maxsize=64)
def _harmonic(n: int) -> float:
    if n < 10**6:
        return math.fsum(1.0 / k for k in range(1, n + 1))
    # Euler-Maclaurin: the next term, 1 / (120 n^4), is below double precision here.
    return math.log(n) + 0.5772156649015329 + 1 / (2 * n) - 1 / (12 * n**2)


def chance_retrieval_ap(labels: Any, include_self: bool = True) -> float:
    """Expected mAP (percent, the per-class mean of ``mean_ap_per_class``) of a random ranking
    of these items: what random features score with the same labels.

    Every query ranks the other items in a uniformly random order; with ``include_self`` the
    query itself comes first (its cosine is 1), without it a query with no other positive is
    left out (its AP is NaN), as ``retrieval_ap`` scores them. Computed exactly, in closed form.
    """
    lab = _np(labels).reshape(-1)
    n = len(lab)
    if n == 0:
        return float("nan")
    sizes = np.unique(lab, return_counts=True)[1]
    if include_self:
        per_class = [_expected_ap_self_first(n, int(m)) for m in sizes]
    else:
        per_class = [_expected_ap_random(n - 1, int(m) - 1) for m in sizes if m > 1]
    return 100 * float(np.mean(per_class)) if per_class else float("nan")


def chance_top1(train_labels: Any, test_labels: Any) -> float:
    """Top-1 (percent) of always predicting the largest training class, on the test items.

    When several training classes are equally large, the mean of their test shares: the
    expected score of picking one of them at random.
    """
    train, test = _np(train_labels).reshape(-1), _np(test_labels).reshape(-1)
    if len(train) == 0 or len(test) == 0:
        return float("nan")
    classes, counts = np.unique(train, return_counts=True)
    largest = classes[counts == counts.max()]
    return 100 * float(np.mean([np.mean(test == c) for c in largest]))


def chance_miou(pixels_per_class: np.ndarray) -> float:
    """mIoU (percent) of the best constant label map, from the scored pixels of each class.

    ``pixels_per_class`` is (C,) or (images, C), ignored pixels left out. Predicting class c
    everywhere gives IoU(c) = pixels of c / all pixels and 0 for every other present class, so
    the best constant is the most frequent class and the mIoU is its share over the number
    of present classes.
    """
    pixels = np.asarray(pixels_per_class, dtype=np.float64)
    pixels = pixels.reshape(-1, pixels.shape[-1]).sum(axis=0) if pixels.ndim > 1 else pixels.reshape(-1)
    total = pixels.sum()
    if total <= 0:
        return float("nan")
    return 100 * float(pixels.max() / total / np.count_nonzero(pixels))
