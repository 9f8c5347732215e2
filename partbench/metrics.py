"""Metrics as plain functions on arrays or tensors, so they can be checked and reused.

retrieval_ap        per-query average precision, as scikit-learn's average_precision_score
mean_ap_per_class   the mean over classes of the per-class mean AP
top1                accuracy of predictions
miou                mean intersection over union, ignoring a label value
bootstrap_ci        a percentile interval of any statistic over resampled items
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def retrieval_ap(features: Any, labels: Any, include_self: bool = True, chunk: int = 512) -> np.ndarray:
    """Average precision of every item as a query against all items, by cosine similarity.

    Ties in similarity are scored the way scikit-learn scores them: items with equal scores
    enter the ranking together. With ``include_self`` the query stays in its own gallery (the
    study's code does this); without it, a query with no other positive gets NaN.
    """
    feats = torch.as_tensor(_np(features), dtype=torch.float64)
    feats = torch.nn.functional.normalize(feats, dim=1)
    lab = torch.as_tensor(_np(labels))
    n = feats.shape[0]
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        q = slice(start, min(start + chunk, n))
        # Rounded so that equal cosines tie whatever the matmul's summation order (chunk
        # size, device); otherwise float noise would split ties at random.
        sims = torch.round(feats[q] @ feats.T, decimals=9)  # (c, n)
        rel = (lab[q, None] == lab[None, :]).to(torch.float64)
        if not include_self:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -torch.inf
            rel[rows, rows + start] = 0.0
        order = torch.argsort(sims, dim=1, descending=True, stable=True)
        s_sorted = torch.gather(sims, 1, order)
        r_sorted = torch.gather(rel, 1, order)
        tp = torch.cumsum(r_sorted, dim=1)
        # A tie group is scored once, at its last member.
        last = torch.ones_like(s_sorted, dtype=torch.bool)
        last[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
        tp_at_ends = torch.where(last, tp, torch.zeros_like(tp))
        prev = torch.cummax(tp_at_ends, dim=1).values
        prev = torch.cat([torch.zeros_like(prev[:, :1]), prev[:, :-1]], dim=1)
        rank = torch.arange(1, n + 1, dtype=torch.float64)
        gain = torch.where(last, (tp - prev) * tp / rank, torch.zeros_like(tp))
        npos = r_sorted.sum(dim=1)
        ap = gain.sum(dim=1) / npos.clamp(min=1)
        ap[npos == 0] = torch.nan
        out[q] = ap.numpy()
    return out


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
    draws = draws[~np.isnan(draws)]
    if len(draws) == 0:
        return (float("nan"), float("nan"))
    alpha = (1 - confidence) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))
