"""A task's headline metric from its per-item results (a run's ``items``), under any weighting
of the items: once each (the score), or as often as a bootstrap draw takes each (resampling).

score_from_items  one score, optionally weighted by how often each item is drawn
ItemScorer        the same for many draws at once (a count matrix)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

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
            # np.take along the columns, not c[:, valid]: the same copy, five times faster on a
            # draw matrix of 1,000 x 5,625 (the one a study's part retrieval resamples).
            w = np.take(c, self.valid, axis=1)
            if self.metric == "AP":
                return 100 * (w @ self.values) / w.sum(axis=1)
            if len(self.valid) == 0:
                return np.full(len(c), np.nan)
            den = np.add.reduceat(w, self.starts, axis=1)
            w *= self.values  # the weights are a copy: scaled in place, one matrix fewer
            num = np.add.reduceat(w, self.starts, axis=1)
            return 100 * _mean_present(num / np.where(den > 0, den, 1), den > 0)

    def counted(self) -> tuple[int, str]:
        """How many items a score is computed over, and what they are: the rows a draw
        resamples, less the queries an AP metric sets aside (no positive: a NaN ``ap``)."""
        if self.metric in ("mAP", "AP"):
            return len(self.valid), "queries with a finite 'ap'"
        if self.metric == "PCK@0.10":
            # One row per keypoint; the items resampled and counted are the pairs.
            return int(np.count_nonzero(self.totals)), "distinct values of 'pair'"
        field = ITEM_FIELDS[self.metric][0]
        return self.n, f"rows of '{field}'"

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


def _mean_present(ratio: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Row means of ``ratio`` over the ``present`` entries; NaN for a row with none."""
    k = present.sum(axis=1)
    total = np.where(present, ratio, 0.0).sum(axis=1)
    return np.where(k > 0, total / np.maximum(k, 1), np.nan)
