"""Retrieval by cosine similarity, no training: every item queries all items (the study's
part and object retrieval). Scored by AP per query, and mAP over classes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from partbench.datasets.base import Dataset
from partbench.encoders.base import Encoder
from partbench.extraction import Features, View
from partbench.metrics import bootstrap_ci, mean_ap_per_class, retrieval_ap
from partbench.tasks.base import Task, TaskResult, counts_by_class, percent


class Retrieval(Task):
    def __init__(self, source: str):
        self.source = source  # "keypoints" for parts, "images" for objects

    def views(self, dataset: Dataset, encoder: Encoder, options: Mapping[str, Any]) -> dict[str, View]:
        return {"gallery": View(self.source, "retrieval", "test", frozenset({options["feature"]}))}

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        options: Mapping[str, Any],
        *,
        seed: int,
        repeats: int = 1,
    ) -> TaskResult:
        gallery = features["gallery"]
        labels = gallery.labels
        ap = retrieval_ap(gallery[options["feature"]], labels, include_self=options["include_self"])
        valid = ~(ap != ap)  # NaN: a query with no other positive, left out of both means
        names = dataset.classes_for(self.source)

        def map_stat(counts):
            return mean_ap_per_class(ap, labels, counts)

        def ap_stat(counts):
            return float((ap[valid] * counts[valid]).sum() / max(counts[valid].sum(), 1))

        n = len(ap)
        metrics = {
            "mAP": percent(mean_ap_per_class(ap, labels), bootstrap_ci(n, map_stat, seed=seed)),
            "AP": percent(float(ap[valid].mean()), bootstrap_ci(n, ap_stat, seed=seed)),
        }
        per_class = {
            names[c]: 100 * float(ap[valid & (labels == c)].mean())
            for c in sorted(set(labels[valid].tolist()))
        }
        return TaskResult(
            metrics=metrics,
            n_items=int(valid.sum()),
            items_per_class=counts_by_class(labels, names),
            details={"per_class_ap": per_class, "queries_without_positive": int((~valid).sum())},
        )
