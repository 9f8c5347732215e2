"""Chance levels (percent, on the items a task scored): what chance-level predictions score.

chance_retrieval_ap     the expected mAP of a random ranking with the same labels
chance_top1             always predicting the largest training class
chance_miou             the best constant label map
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from partbench.metrics.scores import to_numpy


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
    lab = to_numpy(labels).reshape(-1)
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
    train, test = to_numpy(train_labels).reshape(-1), to_numpy(test_labels).reshape(-1)
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
