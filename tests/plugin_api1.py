"""A plugin written for plugin API 1, kept to prove it still runs: the example plugin as
partbench shipped it before encoders declared stages (plugins/partbench-example-encoder/
partbench_example_encoder.py at commit befe1fe), unchanged but for its docstring and the
encoder's name, plus a task written to API 1's README and interfaces (a factory with no
parameter; ``views`` and ``evaluate`` taking the options). It declares no PARTBENCH_API, as
no plugin of its time did.

Tests register it in-process (``plugin_manager(extra=[(name, module)])``); the encoder and task
are renamed with ``api1-`` so that an installed example plugin cannot collide with them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from partbench.hookspecs import hookimpl
from partbench.specs import EncoderRequest, EncoderSpec, TaskSpec

CELL = 8
BINS = 9


def build(request: EncoderRequest):
    import math

    import torch
    import torch.nn.functional as F

    from partbench.encoders.base import Encoder, EncoderOutput

    class HogEncoder(Encoder):
        name = request.name
        family = "none"
        weights_id = "hand-crafted:hog-v1"
        input_size = 64
        patch_size = CELL
        embed_dim = BINS + 3
        depth = 1
        num_heads = 1

        def __init__(self) -> None:
            sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
            self.module = torch.nn.Module()
            self.module.register_buffer("kernel", torch.stack([sobel, sobel.T])[:, None])

        def forward(self, images: torch.Tensor, blocks: Sequence[int] = ()) -> EncoderOutput:
            mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
            rgb = images * std + mean  # undo the normalisation the runner applied
            grey = rgb.mean(dim=1, keepdim=True)
            g = F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), self.module.kernel)
            magnitude = g.norm(dim=1, keepdim=True)
            angle = torch.atan2(g[:, 1:], g[:, :1]) % math.pi  # unsigned orientation
            bins = (angle / math.pi * BINS).long().clamp(max=BINS - 1)
            hist = torch.zeros(images.shape[0], BINS, *grey.shape[-2:], device=images.device)
            hist.scatter_(1, bins, magnitude)
            cells = F.avg_pool2d(torch.cat([hist, rgb], dim=1), CELL)  # (B, BINS + 3, h, w)
            grid = (cells.shape[-2], cells.shape[-1])
            tokens = cells.flatten(2).transpose(1, 2)
            tokens = tokens / tokens.norm(dim=-1, keepdim=True).clamp(min=1e-6)
            return EncoderOutput(
                cls=tokens.mean(dim=1),
                patch_tokens=tokens,
                grid=grid,
                blocks={b: tokens for b in blocks},
            )

    return HogEncoder()


@hookimpl
def register_encoders(register: Callable[[EncoderSpec], None]) -> None:
    register(
        EncoderSpec(
            name="api1-hog",
            load=build,
            family="none",
            description="example plugin: gradient-orientation histograms per 8 x 8 cell",
            weights_source="none: hand-crafted",
        )
    )


# --- a task as API 1's README described one --------------------------------------------------


def create_nearest_mean():
    import numpy as np
    import torch
    import torch.nn.functional as F

    from partbench.extraction import View
    from partbench.metrics import bootstrap_ci
    from partbench.tasks.base import Task, TaskResult, counts_by_class, percent

    class NearestMean(Task):
        """Each test item takes the class whose mean training class token is nearest, by cosine."""

        source = "images"

        def views(self, dataset, encoder, options):
            return {role: View(source=self.source, role=role) for role in ("train", "test")}

        def evaluate(self, features, dataset, options, *, seed, repeats=1):
            train, test = features["train"], features["test"]
            x = F.normalize(train["cls"].float(), dim=1)
            classes = np.unique(train.labels)
            rows = [x[torch.from_numpy(train.labels == c)].mean(0) for c in classes]
            means = F.normalize(torch.stack(rows), dim=1)
            predicted = classes[(F.normalize(test["cls"].float(), dim=1) @ means.T).argmax(1).numpy()]
            correct = (predicted == test.labels).astype(np.float64)
            return TaskResult(
                metrics={"top1": percent(correct.mean(), bootstrap_ci(correct, seed=seed))},
                n_items=len(correct),
                items_per_class=counts_by_class(test.labels, dataset.object_classes),
            )

    return NearestMean()


@hookimpl
def register_tasks(register):
    register(
        TaskSpec(
            name="api1-nearest-mean",
            level="object",
            metric="top1",
            requires="images",
            create=create_nearest_mean,
            description="API 1 test plugin: nearest class mean of the training class tokens",
        )
    )
