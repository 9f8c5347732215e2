"""What a pass reads, prepared in DataLoader workers: a sample's encoder inputs (its part crops,
its windows or the whole image), its labels and label maps, joined into loads of uint8 items.
The crops and resizes are the functions the study's transforms are written in, so scores do
not depend on the number of workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from partbench import windows
from partbench.datasets.base import Dataset, Sample
from partbench.datasets.views import part_crops, resize_for_encoder
from partbench.errors import DataError, PartbenchError
from partbench.extraction.merge import Pass
from partbench.features import FULL


def sample_inputs(
    inputs: str, transform: str, sample: Sample, dataset: Dataset, size: int
) -> list[tuple[np.ndarray, int]]:
    """The encoder inputs one sample gives: its part crops, a segmentation transform's windows,
    or the whole image."""
    if inputs == "crops":
        if sample.keypoints is None:
            raise DataError(f"{dataset.name}: {sample.key} has no keypoints")
        return [
            (resize_for_encoder(crop, size, transform), part)
            for crop, part in part_crops(sample, dataset.crop_bounds)
        ]
    label = -1 if sample.label is None else sample.label
    geometry = windows.parse(transform)
    if geometry is not None:  # a segmentation resolution: one item per window
        return [(im, label) for im in windows.apply(sample.image, geometry)]
    return [(resize_for_encoder(sample.image, size, transform), label)]


class Items(torch.utils.data.Dataset):
    """Sample i -> (images k x S x S x 3 uint8, labels, sample index, label maps).

    Label maps leave the worker as uint8 tensors, and those a loss reads are sampled down
    there (to at most ``loss_grid`` times their resolution), so that only what is kept
    crosses between processes."""

    def __init__(self, dataset: Dataset, p: Pass, size: int, indices: range, grid: tuple[int, int]):
        self.dataset, self.p, self.size, self.indices, self.grid = dataset, p, size, indices, grid
        self._samples: Sequence[Sample] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> Any:
        try:
            return self._item(k)
        except Exception as exc:
            # Carried to the main process as one line: a DataLoader would wrap it in the
            # worker's traceback.
            return Failure(str(exc) if isinstance(exc, PartbenchError) else f"{type(exc).__name__}: {exc}")

    def _item(self, k: int) -> tuple[np.ndarray, np.ndarray, int, dict[str, np.ndarray]]:
        if self._samples is None:  # built in the worker, so nothing unpicklable crosses over
            self._samples = self.dataset.samples(self.p.split)
        i = self.indices[k]
        sample = self._samples[i]
        pairs = sample_inputs(self.p.inputs, self.p.transform, sample, self.dataset, self.size)
        images = (
            np.stack([im for im, _ in pairs])
            if pairs
            else np.zeros((0, self.size, self.size, 3), dtype=np.uint8)
        )
        labels = np.asarray([lab for _, lab in pairs], dtype=np.int64)
        masks = {}
        for source, resolution in self.p.masks:
            mask = sample.part_mask if source == "part-masks" else sample.object_mask
            if mask is None:
                raise DataError(f"{self.dataset.name}: {sample.key} has no {source}")
            mask = np.asarray(mask)
            if mask.size and (mask.min() < 0 or mask.max() > 255):
                raise DataError(f"{self.dataset.name}: {sample.key}: label values must lie in 0..255")
            geometry = windows.parse(self.p.transform)
            if geometry is not None and geometry.kind == "crop":  # the window's own labels
                mask = windows.crop_mask(mask.astype(np.uint8), geometry)
            if resolution != FULL:
                mask = loss_size(mask, self.grid, resolution)
            masks[source] = mask.astype(np.uint8, copy=False)
        return images, labels, i, masks


@dataclass
class Load:
    """What one DataLoader batch of samples gives, joined in the worker: one tensor of
    images, their labels and sample indices, and each sample's label maps."""

    images: torch.Tensor  # (n, S, S, 3) uint8
    labels: np.ndarray
    sample_index: np.ndarray
    masks: dict[str, list[torch.Tensor]]
    samples: int

    def pin_memory(self) -> Load:  # called by the DataLoader's pinning thread
        self.images = self.images.pin_memory()
        return self


@dataclass
class Failure:
    message: str


def _collate(batch: list) -> Load | Failure:
    failed = next((b for b in batch if isinstance(b, Failure)), None)
    if failed is not None:
        return failed
    images = [torch.from_numpy(im) for im, _, _, _ in batch]
    return Load(
        images=torch.cat(images) if len(images) > 1 else images[0],
        labels=np.concatenate([lab for _, lab, _, _ in batch]),
        sample_index=np.concatenate([np.full(len(lab), i, dtype=np.int64) for _, lab, i, _ in batch]),
        masks={
            source: [torch.from_numpy(np.ascontiguousarray(m[source])) for _, _, _, m in batch]
            for source in (batch[0][3] if batch else {})
        },
        samples=len(batch),
    )


def data_loader(items: Items, samples_per_load: int, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    kwargs: dict[str, Any] = {}
    if workers > 0:
        kwargs = {"prefetch_factor": 2, "persistent_workers": False}
        # fork keeps the dataset object as it is; spawn would pickle it.
        if "fork" in torch.multiprocessing.get_all_start_methods():
            kwargs["multiprocessing_context"] = "fork"
    return torch.utils.data.DataLoader(
        items,
        batch_size=samples_per_load,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=pin,
        **kwargs,
    )


def loss_size(mask: np.ndarray, grid: tuple[int, int], factor: int) -> np.ndarray:
    """Nearest sampling down to at most ``factor`` times the grid (what a loss reads)."""
    size = (min(mask.shape[0], factor * grid[0]), min(mask.shape[1], factor * grid[1]))
    if size == tuple(mask.shape):
        return mask
    t = torch.as_tensor(mask.astype(np.int64))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].to(torch.uint8).numpy()


def available_cores() -> int:
    """The cores this process may run on (its affinity where the platform says)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(device_type: str = "cuda") -> int:
    """DataLoader workers when --workers is not given: every core when a GPU runs the encoder.
    On a CPU the forward itself uses the cores, and decoding beside it only slows both on a
    small machine (measured on 2 cores: 82 s with 2 workers, 68 s with none, for mini-mae on
    every SynParts task): none up to 4 cores, half of them above."""
    cores = available_cores()
    if device_type == "cuda":
        return cores
    return 0 if cores <= 4 else cores // 2
