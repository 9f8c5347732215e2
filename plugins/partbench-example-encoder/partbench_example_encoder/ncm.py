"""example-ncm: each test image takes the class whose mean training vector is nearest."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from partbench.api import (
    Dataset,
    Encoder,
    Features,
    Task,
    TaskResult,
    View,
    bootstrap_ci,
    chance_top1,
    counts_by_class,
    percent,
)


class NearestClassMean(Task):
    """A probe with nothing to train: cosine similarity to each class's mean training vector.
    ``self.options`` holds the options, typed and checked, bound when the task was created."""

    source = "images"

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        outputs = frozenset({self.options["feature"]})
        return {role: View(source=self.source, role=role, outputs=outputs) for role in ("train", "test")}

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        *,
        device: torch.device,
        seed: int,
        repeats: int = 1,
    ) -> TaskResult:
        train, test = features["train"], features["test"]
        feature = self.options["feature"]
        x = F.normalize(train[feature].float().to(device), dim=1)
        labels = torch.as_tensor(train.labels, device=device)
        classes = np.unique(train.labels)
        means = F.normalize(torch.stack([x[labels == c].mean(dim=0) for c in classes]), dim=1)
        sims = F.normalize(test[feature].float().to(device), dim=1) @ means.T
        predicted = classes[sims.argmax(dim=1).cpu().numpy()]
        correct = (predicted == test.labels).astype(np.float64)  # deterministic: repeats change nothing
        return TaskResult(
            metrics={"top1": percent(correct.mean(), bootstrap_ci(correct, seed=seed))},
            n_items=len(correct),
            items_per_class=counts_by_class(test.labels, dataset.classes_for(self.source)),
            items={"correct": correct, "label": test.labels.astype(np.int64)},
            chance={"top1": chance_top1(train.labels, test.labels)},
        )
