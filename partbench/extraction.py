"""The one place an encoder meets data: views of a dataset in, features out, timed.

A task asks for a View; the runner merges the views of all its tasks so that one pass of the
encoder over one split serves every task that reads it (and this is where a persistent
feature cache, mixed precision and a distributed sampler belong).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from partbench.datasets.base import Dataset, Sample
from partbench.datasets.views import part_crops, resize_for_encoder
from partbench.encoders.base import Encoder
from partbench.errors import DataError
from partbench.timing import ForwardTimer

OUTPUTS = ("cls", "embedding", "projection", "tokens", "blocks")


@dataclass(frozen=True)
class View:
    """What a task needs from one split of a dataset.

    source: the dataset capability read ("keypoints" gives part crops; "images",
    "part-masks" and "object-masks" give whole images). role: "retrieval", "train" or "test".
    """

    source: str
    role: str
    transform: str = "test"
    outputs: frozenset[str] = frozenset({"cls"})
    blocks: tuple[int, ...] = ()

    @property
    def inputs(self) -> str:
        return "crops" if self.source == "keypoints" else "images"

    def merge_key(self, dataset: Dataset) -> tuple[str, str, str]:
        # Roles that read the same split share one pass (retrieval and test, often).
        return (self.inputs, dataset.split_for(self.role), self.transform)


@dataclass
class Features:
    """Encoder outputs for every item of a view, with the labels the item carries."""

    arrays: dict[str, torch.Tensor]  # output name -> (N, ...) on the CPU; token maps in float16
    labels: np.ndarray  # (N,) class per item: part class for crops, object class for images
    grid: tuple[int, int]
    masks: dict[str, list[np.ndarray]] = field(default_factory=dict)  # capability -> label maps
    timing: dict[str, Any] = field(default_factory=dict)
    n_images: int = 0

    def __getitem__(self, output: str) -> torch.Tensor:
        return self.arrays[output]


def merge_views(views: Sequence[View], dataset: Dataset) -> dict[tuple[str, str, str], View]:
    merged: dict[tuple[str, str, str], View] = {}
    for v in views:
        key = v.merge_key(dataset)
        if key in merged:
            m = merged[key]
            merged[key] = View(
                source=m.source,
                role=m.role,
                transform=m.transform,
                outputs=m.outputs | v.outputs,
                blocks=tuple(sorted(set(m.blocks) | set(v.blocks))),
            )
        else:
            merged[key] = v
    return merged


def _inputs(view: View, sample: Sample, dataset: Dataset, size: int) -> list[tuple[np.ndarray, int]]:
    if view.inputs == "crops":
        if sample.keypoints is None:
            raise DataError(f"{dataset.name}: {sample.key} has no keypoints")
        return [
            (resize_for_encoder(crop, size, view.transform), part)
            for crop, part in part_crops(sample, dataset.crop_bounds)
        ]
    label = -1 if sample.label is None else sample.label
    return [(resize_for_encoder(sample.image, size, view.transform), label)]


def extract(
    encoder: Encoder,
    dataset: Dataset,
    view: View,
    *,
    device: torch.device,
    batch_size: int,
    precision: str,
    limit: int | None,
    progress: Any | None = None,
) -> Features:
    split = dataset.split_for(view.role)
    samples = dataset.samples(split)
    if limit is not None:
        samples = samples[: min(limit, len(samples))]
    mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    timer = ForwardTimer(device)
    chunks: dict[str, list[torch.Tensor]] = {k: [] for k in view.outputs}
    labels: list[int] = []
    masks: dict[str, list[np.ndarray]] = {"part-masks": [], "object-masks": []}
    grid: tuple[int, int] = (0, 0)
    task_id = (
        progress.add_task(f"{encoder.name} · {split} {view.inputs}", total=len(samples)) if progress else None
    )

    def run_batch(batch: list[np.ndarray]) -> None:
        nonlocal grid
        x = torch.from_numpy(np.stack(batch)).to(device).permute(0, 3, 1, 2).float().div_(255)
        x = (x - mean) / std

        def forward():
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
            ):
                return encoder.forward(x, blocks=view.blocks if "blocks" in view.outputs else ())

        out = timer(forward, len(batch))
        grid = out.grid
        for name in view.outputs:
            if name == "cls":
                t = out.cls
            elif name == "embedding":
                t = out.embedding
            elif name == "projection":
                if out.projection is None:
                    raise DataError(f"{encoder.name} has no projection head; choose cls or embedding")
                t = out.projection
            elif name == "tokens":
                t = torch.cat([out.cls[:, None], out.patch_tokens], dim=1)
            else:  # blocks: patch tokens of the asked blocks, concatenated channel-wise
                t = torch.cat([out.blocks[b] for b in view.blocks], dim=-1)
            # Token maps dominate memory (items x tokens x width): they are kept in half
            # precision, which probes read back as float32; pooled vectors stay float32.
            keep = torch.float16 if name in ("tokens", "blocks") else torch.float32
            chunks[name].append(t.to(keep).cpu())

    batch: list[np.ndarray] = []
    for sample in samples:
        for cap, mask in (("part-masks", sample.part_mask), ("object-masks", sample.object_mask)):
            if mask is not None:
                masks[cap].append(mask)
        for image, label in _inputs(view, sample, dataset, encoder.input_size):
            batch.append(image)
            labels.append(label)
            if len(batch) == batch_size:
                run_batch(batch)
                batch = []
        if progress:
            progress.advance(task_id)
    if batch:
        run_batch(batch)
    if progress:
        progress.remove_task(task_id)
    if not labels:
        raise DataError(f"{dataset.name}: the {split} split gave no {view.inputs} to evaluate")
    return Features(
        arrays={k: torch.cat(v) for k, v in chunks.items()},
        labels=np.asarray(labels),
        grid=grid,
        masks={k: v for k, v in masks.items() if v},
        timing=timer.summary(),
        n_images=len(samples),
    )
