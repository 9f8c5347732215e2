"""Unsupervised part discovery, no labels used for fitting (Amir et al., "Deep ViT Features as
Dense Visual Descriptors"; the SCOPS line of work): per image, k-means over the L2-normalised
features of the object's patches (those with a labelled pixel), k the number of part classes
present in them or fixed by option. Only then are labels read: each cluster is matched to at
most one part class by the Hungarian assignment that maximises the pixels they share
(scipy.optimize.linear_sum_assignment), every pixel takes its patch's cluster's class
(pixels of unmatched clusters take none), and mIoU is counted per image as ``part-seg``
counts it. NMI and ARI compare the clusters with each patch's majority class."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from partbench.datasets.base import IGNORE, Dataset
from partbench.encoders.base import Encoder
from partbench.errors import PartbenchError
from partbench.features import FULL, Features, View
from partbench.metrics.resampling import bootstrap_ci
from partbench.metrics.scores import miou_from_counts
from partbench.tasks.base import Task, TaskResult, percent
from partbench.tasks.correspondence import dense_maps, dense_view
from partbench.tasks.incontext import patch_labels

KMEANS_ITERATIONS = 100
CHANCE_DRAWS = 20  # random partitions per image for the chance level: its MC error stays well under a point
CHANCE_STREAM = 7919  # the chance draws' own random stream, apart from k-means' [seed, image]


def kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, iterations: int = KMEANS_ITERATIONS
) -> np.ndarray:
    """Lloyd's k-means from a k-means++ start; returns each row's cluster (0..k-1)."""
    n = len(x)
    k = min(k, n)
    centres = [x[rng.integers(n)]]
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        pick = rng.choice(n, p=d2 / total) if total > 0 else int(rng.integers(n))
        centres.append(x[pick])
        d2 = np.minimum(d2, ((x - x[pick]) ** 2).sum(1))
    c = np.stack(centres)
    assign = np.full(n, -1)
    for _ in range(iterations):
        dist = (x * x).sum(1)[:, None] - 2 * x @ c.T + (c * c).sum(1)[None, :]
        new = dist.argmin(1)
        if np.array_equal(new, assign):
            break
        assign = new
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return assign


def match_clusters(overlap: np.ndarray) -> dict[int, int]:
    """Cluster -> class by the assignment maximising the summed overlap (clusters x classes)."""
    rows, cols = linear_sum_assignment(overlap, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True)}


def contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _, ia = np.unique(a, return_inverse=True)
    _, ib = np.unique(b, return_inverse=True)
    table = np.zeros((ia.max() + 1 if len(ia) else 0, ib.max() + 1 if len(ib) else 0))
    np.add.at(table, (ia.ravel(), ib.ravel()), 1)
    return table


def nmi(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation; 1 when both are one
    group (scikit-learn's conventions)."""
    table = contingency(labels, clusters)
    if table.shape[0] == table.shape[1] == 1 or table.size == 0:
        return 1.0
    n = table.sum()
    a, b = table.sum(1), table.sum(0)
    nz = table > 0
    mi = float((table[nz] / n * np.log(n * table[nz] / np.outer(a, b)[nz])).sum())

    def entropy(counts: np.ndarray) -> float:
        p = counts[counts > 0] / n
        return float(-(p * np.log(p)).sum())

    normaliser = max((entropy(a) + entropy(b)) / 2, np.finfo(np.float64).eps)
    return max(mi, 0.0) / normaliser


def ari(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Adjusted Rand index from the pair confusion counts; 1 on perfect agreement."""
    table = contingency(labels, clusters)
    n = table.sum()
    sum_sq = (table**2).sum()
    a, b = table.sum(1), table.sum(0)
    tp = sum_sq - n
    fp = (table @ b).sum() - sum_sq  # pairs together in the clusters, apart in the labels
    fn = (table.T @ a).sum() - sum_sq  # together in the labels, apart in the clusters
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return float(2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)))


def assignment_counts(cell_counts: np.ndarray, assign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class intersection and union of one image when each object patch takes its
    cluster's matched class and every other pixel none. cell_counts: (patches, classes) of
    each object patch's labelled pixels per class; assign: each patch's cluster. The
    clusters are matched to classes by the Hungarian assignment maximising shared pixels."""
    overlap = np.zeros((int(assign.max()) + 1, cell_counts.shape[1]))
    np.add.at(overlap, assign, cell_counts)
    inter = np.zeros(cell_counts.shape[1])
    predicted = np.zeros_like(inter)
    for cluster, cls in match_clusters(overlap).items():
        inter[cls] = overlap[cluster, cls]
        predicted[cls] = overlap[cluster].sum()
    return inter, predicted + cell_counts.sum(0) - inter


def chance_partition_miou(
    cell_counts: Sequence[np.ndarray], ks: Sequence[int], *, seed: int, draws: int = CHANCE_DRAWS
) -> float:
    """The expected mIoU (percent) of random clusters: each image's object patches put in k
    clusters uniformly at random (k as the task chose it for the image; a cluster may stay
    empty), matched and counted as the task matches and counts k-means' clusters, the
    dataset-level mIoU averaged over ``draws`` draws. The best constant label map
    (chance_miou) scores lower: the Hungarian step gives each cluster its best class, and
    random clusters profit from it too. A seeded Monte Carlo, so a run's level is fixed."""
    rng = np.random.default_rng([seed, CHANCE_STREAM])
    classes = next((c.shape[1] for c in cell_counts), 0)
    scores = []
    for _ in range(draws):
        inter, union = np.zeros(classes), np.zeros(classes)
        for counts, k in zip(cell_counts, ks, strict=True):
            if len(counts) and k > 0:
                i_c, u_c = assignment_counts(counts, rng.integers(k, size=len(counts)))
                inter += i_c
                union += u_c
        scores.append(miou_from_counts(inter, union))
    return 100 * float(np.mean(scores))


class PartDiscovery(Task):
    source = "part-masks"

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        return {"test": dense_view(self.source, "test", self.options["stage"], encoder, masks=FULL)}

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
        names = dataset.classes_for(self.source)
        classes = len(names)
        masks = test.masks[self.source]
        h, w = test.grid
        inter = np.zeros((len(masks), classes))
        union = np.zeros_like(inter)
        nmis, aris = np.full(len(masks), np.nan), np.full(len(masks), np.nan)
        cell_counts, ks = [], []
        for i, mask in enumerate(masks):
            counts = patch_labels(np.asarray(mask), (h, w), classes)
            obj = np.flatnonzero(counts.sum(1) > 0)
            cell_counts.append(counts[obj])
            if len(obj):
                x = np.asarray(maps[i], dtype=np.float64)[obj]
                x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
                major = counts[obj].argmax(1)
                k = opts["clusters"] or len(np.unique(major))
                ks.append(min(k, len(obj)))  # as kmeans caps it
                assign = kmeans(x, k, np.random.default_rng([seed, i]))
                inter[i], union[i] = assignment_counts(counts[obj], assign)
                nmis[i], aris[i] = nmi(major, assign), ari(major, assign)
            else:
                ks.append(0)
        scored = ~np.isnan(nmis)
        if not scored.any():
            raise PartbenchError(f"{dataset.name}: no test image has a labelled patch")

        def miou_stat(c: np.ndarray) -> float:
            return miou_from_counts(c @ inter, c @ union)

        def mean_stat(values: np.ndarray):
            return lambda c: float((c[scored] @ values[scored]) / c[scored].sum())

        n = len(masks)
        ones = np.ones(n)
        results = {
            "mIoU": percent(miou_stat(ones), bootstrap_ci(n, miou_stat, seed=seed)),
            "NMI": percent(mean_stat(nmis)(ones), bootstrap_ci(n, mean_stat(nmis), seed=seed)),
            "ARI": percent(mean_stat(aris)(ones), bootstrap_ci(n, mean_stat(aris), seed=seed)),
        }
        pixels = np.zeros(classes, dtype=np.int64)
        for m in masks:
            m = np.asarray(m)
            pixels += np.bincount(m[m != IGNORE].ravel(), minlength=classes)[:classes]
        total_i, total_u = inter.sum(0), union.sum(0)
        iou = np.divide(total_i, total_u, out=np.full(classes, np.nan), where=total_u > 0)
        details: dict[str, Any] = {
            "chance": f"random partitions of each object's patches, {CHANCE_DRAWS} draws",
            "per_class_iou": {names[c]: 100 * float(iou[c]) for c in range(classes) if not np.isnan(iou[c])},
            "clusters": opts["clusters"] or "part classes present",
            "images_without_object": int((~scored).sum()),
            "interval": "test images resampled",
        }
        return TaskResult(
            metrics=results,
            n_items=n,
            items_per_class={names[c]: int(pixels[c]) for c in range(classes) if pixels[c]},
            details=details,
            items={"intersection": inter, "union": union, "nmi": nmis, "ari": aris},
            chance={"mIoU": chance_partition_miou(cell_counts, ks, seed=seed)},
        )
