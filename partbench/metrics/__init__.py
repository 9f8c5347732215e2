"""Metrics as plain functions on arrays or tensors, so they can be checked and reused.

Three rooms, one module each; partbench's own code imports from the module that holds a name:

scores      the scores of a task: retrieval_ap, mean_ap_per_class, top1, intersection_union,
            miou, miou_from_counts
items       a task's headline metric from its per-item results: score_from_items, ItemScorer
resampling  bootstrap intervals: bootstrap_ci, paired_bootstrap, level_bootstrap,
            paired_level_bootstrap
chance      chance levels: chance_retrieval_ap, chance_top1, chance_miou

This package itself is what plugins get as ``partbench.api.metrics``: every public name of the
four, in one namespace (the names ``partbench.api`` promises).
"""

from __future__ import annotations

from partbench.metrics.chance import chance_miou, chance_retrieval_ap, chance_top1
from partbench.metrics.items import ITEM_FIELDS, ItemScorer, score_from_items
from partbench.metrics.resampling import (
    bootstrap_ci,
    level_bootstrap,
    paired_bootstrap,
    paired_level_bootstrap,
)
from partbench.metrics.scores import (
    intersection_union,
    mean_ap_per_class,
    miou,
    miou_from_counts,
    retrieval_ap,
    top1,
)

__all__ = [
    "ITEM_FIELDS",
    "ItemScorer",
    "bootstrap_ci",
    "chance_miou",
    "chance_retrieval_ap",
    "chance_top1",
    "intersection_union",
    "level_bootstrap",
    "mean_ap_per_class",
    "miou",
    "miou_from_counts",
    "paired_bootstrap",
    "paired_level_bootstrap",
    "retrieval_ap",
    "score_from_items",
    "top1",
]
