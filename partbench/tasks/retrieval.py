"""Retrieval by cosine similarity, no training: every item queries all items (the study's
part and object retrieval). Scored by AP per query, and mAP over classes. The interval
resamples queries; the gallery is what it is."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from partbench.datasets.base import Dataset
from partbench.encoders.base import Encoder
from partbench.errors import PartbenchError
from partbench.features import Features, View
from partbench.metrics.chance import chance_retrieval_ap
from partbench.metrics.resampling import bootstrap_ci
from partbench.metrics.scores import mean_ap_per_class, retrieval_ap
from partbench.tasks.base import Task, TaskResult, counts_by_class, percent


class Retrieval(Task):
    def __init__(self, source: str, options: Mapping | None = None):
        super().__init__(options)
        self.source = source  # "keypoints" for parts, "images" for objects

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        return {"gallery": View(self.source, "retrieval", "test", frozenset({self.options["feature"]}))}

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        *,
        device: torch.device,
        seed: int,
        repeats: int = 1,
    ) -> TaskResult:
        gallery = features["gallery"]
        labels = gallery.labels
        include_self = self.options["include_self"]
        ap = retrieval_ap(gallery[self.options["feature"]], labels, include_self=include_self, device=device)
        valid = ~(ap != ap)  # NaN: a query with no other positive, left out of both means
        if not valid.any():
            raise PartbenchError(
                "no query has a positive in the gallery"
                + ("" if include_self else " (include_self=false and every class has one item)")
            )
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
            details={
                "per_class_ap": per_class,
                "queries_without_positive": int((~valid).sum()),
                "interval": "queries resampled; the gallery is fixed",
            },
            items={"ap": ap, "label": labels.astype("int64")},
            chance={"mAP": chance_retrieval_ap(labels, include_self)},
        )
