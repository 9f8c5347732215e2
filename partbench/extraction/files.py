"""A pass's files in the feature cache: the writer thread that appends each batch's outputs, the
labels and label maps, the blocks of several processes joined, float16 maps with their scales,
and the features a view reads back, memory-mapped."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from partbench.cache import SCALE, ArrayWriter, Entry, Written
from partbench.extraction.inputs import Load
from partbench.extraction.merge import Pass
from partbench.features import MASK_SOURCES, Features, View

# The outputs kept as float16 (with a per-item scale where a map exceeds float16's range).
MAPS = frozenset({"tokens", "stages"})


class Writer:
    """Writes each batch's outputs from a thread, so the device runs the next batch while the
    host copies and writes this one; a bounded queue keeps memory to a few batches."""

    def __init__(self, folder: Path, names: Sequence[str]):
        self.writers = {n: ArrayWriter(folder, n) for n in names}
        self.q: queue.Queue = queue.Queue(maxsize=3)
        self.error: BaseException | None = None
        # Where a pass's time goes when the device idles: the main thread waiting for the
        # writer, the writer's copies off the device (which wait for the forward too), and
        # its file writes.
        self.wait_seconds = self.copy_seconds = self.write_seconds = 0.0
        self.bytes = 0
        self.thread = threading.Thread(target=self._work, daemon=True)
        self.thread.start()

    def _work(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                return
            if self.error is not None:
                continue
            # item[2], the device tensors the copies read, must live until the copies are done.
            arrays, copied = item[0], item[1]
            try:
                t0 = time.perf_counter()
                if copied is not None:
                    copied.synchronize()
                item = None  # the copies are done: the device memory may be reused
                self.copy_seconds += time.perf_counter() - t0
                for name, t in arrays.items():
                    if name in self.writers:
                        t0 = time.perf_counter()
                        rows = t.cpu().numpy()
                        t1 = time.perf_counter()
                        self.writers[name].append(rows)
                        self.copy_seconds += t1 - t0
                        self.write_seconds += time.perf_counter() - t1
                        self.bytes += rows.nbytes
            except BaseException as exc:  # reported by finish()
                self.error = exc

    def put(self, arrays: dict[str, torch.Tensor], copied: Any = None, sources: Any = None) -> None:
        """Queue a batch's outputs. After an _Offload, ``copied`` is the event that says the
        host copies are complete and ``sources`` the device tensors they are read from."""
        if self.error is not None:
            raise self.error
        t0 = time.perf_counter()
        self.q.put((arrays, copied, sources))
        self.wait_seconds += time.perf_counter() - t0

    def figures(self) -> dict[str, float]:
        return {
            "writer_wait_seconds": self.wait_seconds,
            "device_to_host_seconds": self.copy_seconds,
            "write_seconds": self.write_seconds,
            "written_mb": self.bytes / 2**20,
        }

    def finish(self) -> dict[str, tuple]:
        self.q.put(None)
        self.thread.join()
        if self.error is not None:
            self.discard()
            raise self.error
        return {n: w.close() for n, w in self.writers.items()}

    def discard(self) -> None:
        for w in self.writers.values():
            w.discard()


class Labels:
    """The labels and sample indices of a block's items, kept in memory, and its label maps,
    streamed to their files as they arrive (only their shapes stay in memory)."""

    def __init__(self, entry: Entry, p: Pass):
        self.entry, self.p = entry, p
        self.labels: list[np.ndarray] = []
        self.sample_index: list[np.ndarray] = []
        self.mask_files = {source: ArrayWriter(entry.folder, p.mask_name(source, r)) for source, r in p.masks}
        self.mask_shapes: dict[str, list[tuple[int, int]]] = {source: [] for source, _ in p.masks}

    def add(self, load: Load) -> None:
        self.labels.append(load.labels)
        self.sample_index.append(load.sample_index)
        for source, maps in load.masks.items():
            for m in maps:
                self.mask_files[source].append(m.numpy().reshape(-1))
                self.mask_shapes[source].append(tuple(m.shape))

    def discard(self) -> None:
        for w in self.mask_files.values():
            w.discard()

    def files(self, all_labels: np.ndarray) -> dict[str, tuple]:
        """The files of the labels, the sample indices and each label map with its shapes."""
        entry, p = self.entry, self.p
        files = _array_files(entry, "labels", all_labels)
        files |= _array_files(
            entry,
            "sample_index",
            np.concatenate(self.sample_index) if self.sample_index else np.zeros(0, np.int64),
        )
        for source, resolution in p.masks:
            name = p.mask_name(source, resolution)
            if self.mask_files[source].rows == 0:
                self.mask_files[source].append(np.zeros(0, dtype=np.uint8))
            files[name] = self.mask_files[source].close()
            shapes = np.asarray(self.mask_shapes[source], dtype=np.int64).reshape(-1, 2)
            files |= _array_files(entry, name + ":shapes", shapes)
        return files


def join_blocks(entry: Entry, blocks: list[dict[str, tuple]]) -> dict[str, tuple]:
    """One file per array from the ranks' files, joined in rank order by streaming copies."""
    if len(blocks) == 1:
        return {
            k: Written(Path(path), np.dtype(dt), shape, digests)
            for k, (path, dt, shape, digests) in blocks[0].items()
        }
    out = {}
    for name in blocks[0]:
        parts = [b[name] for b in blocks if name in b]
        filled = [part for part in parts if part[2][0] > 0]
        dtype = np.dtype(filled[0][1] if filled else parts[0][1])
        row = tuple(filled[0][2][1:]) if filled else tuple(parts[0][2][1:])
        writer = ArrayWriter(entry.folder, name)
        for path, _, shape, _ in parts:
            writer.append_file(Path(path), shape[0])
            Path(path).unlink(missing_ok=True)
        out[name] = Written(writer.path, dtype, (writer.rows, *row), writer.close().blocks)
    return out


def output_of(array_name: str) -> str:
    return array_name.split("@", 1)[0].split(":", 1)[0]


F16_MAX = float(np.finfo(np.float16).max)


def fit_float16(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token and stage maps are kept as float16, which ends at 65,504; modern ViTs have
    high-norm tokens above it, which became infinity. Each item whose map exceeds it is divided
    by the power of two that brings it in range, and the divisor is kept beside the array
    (``<array>:scale``, one float32 an item). An item that fits is divided by 1: its bytes,
    hence every score on it, are those float16 alone gives. Measured against bfloat16 and a
    float32 fallback in benchmarks/test_cache_costs.py. Computed on the device without waiting
    for it, so the pass's pipeline is untouched."""
    amax = t.detach().abs().flatten(1).amax(1).float()
    scale = torch.exp2(torch.ceil(torch.log2(amax / F16_MAX)))
    scale = torch.where(amax > F16_MAX, scale, torch.ones_like(scale))
    scale = torch.where(amax / scale > F16_MAX, scale * 2, scale)  # log2's rounding
    scale = torch.nan_to_num(scale, nan=1.0, posinf=1.0)  # a non-finite item fails on its own
    return t / scale.view(-1, *[1] * (t.ndim - 1)).to(t.dtype), scale


def unscaled(entry: Entry, name: str) -> np.ndarray:
    """An array as the encoder gave it: float16 maps times their items' scales, where an item
    needed one (then in float32, in memory); else the memory-mapped array itself."""
    array = entry.read(name)
    if name + SCALE not in entry.arrays():
        return array
    scale = np.asarray(entry.read(name + SCALE))
    if not len(scale) or (scale == 1).all():
        return array
    return np.asarray(array, dtype=np.float32) * scale.reshape(-1, *[1] * (array.ndim - 1))


def _array_files(entry: Entry, name: str, array: np.ndarray) -> dict[str, tuple]:
    w = ArrayWriter(entry.folder, name)
    w.append(array)
    return {name: w.close()}


def read_masks(entry: Entry, name: str) -> list[np.ndarray]:
    flat = entry.read(name)
    shapes = entry.read(name + ":shapes")
    out, start = [], 0
    for h, w in shapes.tolist():
        out.append(np.asarray(flat[start : start + h * w]).reshape(h, w))
        start += h * w
    return out


def features_from(
    entry: Entry,
    p: Pass,
    view: View,
    timing: Mapping[str, Any],
    stage_channels: Sequence[int] = (),
) -> Features:
    """A view's features, memory-mapped from the pass's cache entry. Where the pass read more
    stages than the view asks for (merge_views), the view's stages are cut out of the
    channels of the pass's stage maps; ``stage_channels``: each declared stage's width."""
    info = entry.info()
    grid = tuple(info.get("stages_grid" if "stages" in view.outputs else "grid", (0, 0)))
    arrays = {o: torch.from_numpy(unscaled(entry, p.array_name(o))) for o in view.outputs}
    if "stages" in view.outputs and tuple(view.stages) != tuple(p.stages):
        starts = np.cumsum([0, *(stage_channels[i] for i in p.stages)])
        cols = [np.arange(starts[p.stages.index(i)], starts[p.stages.index(i) + 1]) for i in view.stages]
        arrays["stages"] = arrays["stages"][..., torch.from_numpy(np.concatenate(cols))]
    masks = {}
    if view.masks is not None and view.source in MASK_SOURCES:
        resolution = dict(p.masks)[view.source]
        masks[view.source] = read_masks(entry, p.mask_name(view.source, resolution))
    return Features(
        arrays=arrays,
        labels=np.asarray(entry.read("labels")),
        grid=grid,  # type: ignore[arg-type]
        masks=masks,
        timing=dict(timing),
        sample_index=np.asarray(entry.read("sample_index")),
    )
