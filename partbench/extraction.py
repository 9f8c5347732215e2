"""The one place an encoder meets data: views of a dataset in, features out, timed.

Tasks ask for Views; the runner merges the views of all its tasks into Passes, one per
(inputs, split, transform), so one encoder pass over a split serves every task reading it.
A pass streams: DataLoader workers decode, crop and resize (the same functions the study's
transforms are written in, so scores do not depend on the worker count); pinned uint8
batches go to the device without blocking; the forward runs under autocast; each output is
checked and appended to a file of the feature cache by a writer thread while the next batch
runs. Nothing is joined from pieces: the features come back memory-mapped from the cache.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from partbench import windows
from partbench.cache import SCALE, ArrayWriter, Entry, Written
from partbench.datasets.base import Dataset, Sample
from partbench.datasets.views import part_crops, resize_for_encoder
from partbench.distributed import World
from partbench.errors import DataError, PartbenchError
from partbench.features import FULL, MASK_SOURCES, VIEW_OUTPUTS, Features, View
from partbench.timing import PassTimer

# Bump when a change here changes any feature value: it is part of every cache key.
EXTRACTION_VERSION = "2"

# The outputs kept as float16 (with a per-item scale where a map exceeds float16's range).
MAPS = frozenset({"tokens", "stages"})


def _finer(a: int | None, b: int | None) -> int | None:
    if a is None or b is None:
        return b if a is None else a
    return FULL if FULL in (a, b) else max(a, b)


@dataclass(frozen=True)
class Pass:
    """One encoder pass over one split: the union of the views that read it."""

    inputs: str
    split: str
    transform: str
    outputs: frozenset[str]
    stages: tuple[int, ...]
    masks: tuple[tuple[str, int], ...]  # (capability, resolution)

    def array_name(self, output: str) -> str:
        if output == "stages":
            return "stages@" + ",".join(map(str, self.stages))
        return output

    def mask_name(self, source: str, resolution: int) -> str:
        return f"masks:{source}:{'full' if resolution == FULL else f'x{resolution}'}"


def merge_views(views: Sequence[View], dataset: Dataset) -> dict[tuple[str, str, str], Pass]:
    """Views of one split and transform share one pass, which reads the union of the stages
    they ask for (a layer curve's runs read one stage each from it: features_from)."""
    groups: dict[tuple[str, str, str], list[View]] = {}
    for v in views:
        bad = set(v.outputs) - VIEW_OUTPUTS
        if bad:
            raise PartbenchError(
                f"a view asks for unknown outputs {sorted(bad)}; known: {sorted(VIEW_OUTPUTS)}"
            )
        groups.setdefault(v.merge_key(dataset), []).append(v)
    passes = {}
    for key, vs in groups.items():
        stage_sets = {v.stages for v in vs if "stages" in v.outputs}
        if len(stage_sets) > 1:
            stage_sets = {tuple(sorted(set().union(*stage_sets)))}
        masks: dict[str, int | None] = {}
        for v in vs:
            if v.masks is not None and v.source in MASK_SOURCES:
                masks[v.source] = _finer(masks.get(v.source), v.masks)
        passes[key] = Pass(
            inputs=key[0],
            split=key[1],
            transform=key[2],
            outputs=frozenset().union(*(v.outputs for v in vs)),
            stages=next(iter(stage_sets), ()),
            masks=tuple(sorted((s, r) for s, r in masks.items() if r is not None)),
        )
    return passes


# --- preprocessing, run in DataLoader workers -------------------------------------------


def sample_inputs(
    inputs: str, transform: str, sample: Sample, dataset: Dataset, size: int
) -> list[tuple[np.ndarray, int]]:
    """The encoder inputs one sample gives: its part crops, or the whole image."""
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


class _Items(torch.utils.data.Dataset):
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
            return _Failure(str(exc) if isinstance(exc, PartbenchError) else f"{type(exc).__name__}: {exc}")

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
                mask = _loss_size(mask, self.grid, resolution)
            masks[source] = mask.astype(np.uint8, copy=False)
        return images, labels, i, masks


@dataclass
class _Load:
    """What one DataLoader batch of samples gives, joined in the worker: one tensor of
    images, their labels and sample indices, and each sample's label maps."""

    images: torch.Tensor  # (n, S, S, 3) uint8
    labels: np.ndarray
    sample_index: np.ndarray
    masks: dict[str, list[torch.Tensor]]
    samples: int

    def pin_memory(self) -> _Load:  # called by the DataLoader's pinning thread
        self.images = self.images.pin_memory()
        return self


@dataclass
class _Failure:
    message: str


def _collate(batch: list) -> _Load | _Failure:
    failed = next((b for b in batch if isinstance(b, _Failure)), None)
    if failed is not None:
        return failed
    images = [torch.from_numpy(im) for im, _, _, _ in batch]
    return _Load(
        images=torch.cat(images) if len(images) > 1 else images[0],
        labels=np.concatenate([lab for _, lab, _, _ in batch]),
        sample_index=np.concatenate([np.full(len(lab), i, dtype=np.int64) for _, lab, i, _ in batch]),
        masks={
            source: [torch.from_numpy(np.ascontiguousarray(m[source])) for _, _, _, m in batch]
            for source in (batch[0][3] if batch else {})
        },
        samples=len(batch),
    )


def _loader(items: _Items, samples_per_load: int, workers: int, pin: bool):
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


def expected_grid(encoder: Any, p: Pass) -> tuple[int, int]:
    """The feature grid a pass's label maps are sampled down against, known before any
    forward: the one grid of the stages asked for (see stage_grid), else the final stage's."""
    stages = p.stages if "stages" in p.outputs and p.stages else (len(encoder.stages) - 1,)
    strides = [encoder.stages[i].stride for i in stages]
    cells = [-(-encoder.input_size // s) for s in strides]  # ceil: padded borders count
    if len(set(cells)) == 1:
        return (cells[0], cells[0])
    best = min(range(len(strides)), key=lambda k: (abs(strides[k] - 16), strides[k]))
    return (cells[best], cells[best])


class _Staging:
    """Pinned host buffers that batches are cut into, so that every copy to the GPU is
    asynchronous; a buffer is reused only once its last copy has finished."""

    def __init__(self, shape: tuple[int, ...], depth: int = 3):
        self.buffers = [torch.empty(shape, dtype=torch.uint8).pin_memory() for _ in range(depth)]
        self.events: list[Any] = [None] * depth
        self.k = 0
        self.wait_seconds = 0.0  # waiting for the device to take a batch: it is behind, not idle

    def fill(self, pieces: list[torch.Tensor], n: int) -> tuple[torch.Tensor, int]:
        k = self.k
        self.k = (self.k + 1) % len(self.buffers)
        if self.events[k] is not None:
            t0 = time.perf_counter()
            self.events[k].synchronize()
            self.wait_seconds += time.perf_counter() - t0
        out = self.buffers[k][:n]
        torch.cat(pieces, out=out) if len(pieces) > 1 else out.copy_(pieces[0])
        return out, k

    def copied(self, k: int) -> None:
        self.events[k] = torch.cuda.Event()
        self.events[k].record()


class _Offload:
    """Copies a batch's outputs off the GPU on a stream of their own, into pinned host memory.
    A copy on the forward's stream holds the device for its whole length: on an H100 the token
    maps' copies took about as long as the forwards themselves (CUB part tasks: 15.8 s of
    copies beside 13.4 s of forwards, the device busy 53% of the pass). Here the next
    forwards run while the copy does."""

    def __init__(self, device: torch.device):
        self.device = device
        self.stream = torch.cuda.Stream(device)

    def __call__(self, arrays: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], Any, Any]:
        """(host copies, an event recorded after them, the device tensors). The writer holds
        the device tensors until the event has passed, so that the allocator cannot give
        their memory to a later forward while the copy still reads it."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the outputs are ready
        host = {}
        with torch.cuda.stream(self.stream):
            for name, t in arrays.items():
                # Pinned blocks come from torch's caching host allocator, which does not hand a
                # block out again before the copy into it has finished.
                host[name] = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
                host[name].copy_(t, non_blocking=True)
            done = torch.cuda.Event()
            done.record(self.stream)
        return host, done, arrays


# --- outputs: checked, converted, written ------------------------------------------------


class OutputError(PartbenchError):
    """An encoder returned something other than what its interface promises."""


def _check(cond: bool, who: str, what: str) -> None:
    if not cond:
        raise OutputError(f"{who}: {what}")


def _tensor(t: Any, who: str, name: str, ndim: int, batch: int) -> torch.Tensor:
    _check(isinstance(t, torch.Tensor), who, f"{name} must be a torch.Tensor, got {type(t).__name__}")
    _check(
        t.dtype in (torch.float32, torch.float16, torch.bfloat16),
        who,
        f"{name} must be float32, float16 or bfloat16, got {t.dtype}",
    )
    _check(t.ndim == ndim, who, f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    _check(t.shape[0] == batch, who, f"{name} has {t.shape[0]} items for a batch of {batch}")
    return t


def stage_grid(maps: Sequence[torch.Tensor], strides: Sequence[int]) -> tuple[int, int]:
    """The one grid stage maps are resampled to: theirs when they agree, else the grid of the
    stage whose stride is nearest 16 (the finer on a tie), the study's ViT-B/16 resolution."""
    grids = {tuple(m.shape[-2:]) for m in maps}
    if len(grids) == 1:
        return next(iter(grids))  # type: ignore[return-value]
    best = min(range(len(maps)), key=lambda i: (abs(strides[i] - 16), strides[i]))
    return tuple(maps[best].shape[-2:])  # type: ignore[return-value]


def _to_grid(m: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    if tuple(m.shape[-2:]) == grid:
        return m
    if m.shape[-2] >= grid[0] and m.shape[-1] >= grid[1]:
        return F.adaptive_avg_pool2d(m.float(), grid).to(m.dtype)  # area: every cell counted
    return F.interpolate(m.float(), size=grid, mode="bilinear", align_corners=False).to(m.dtype)


def _cells(m: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C). For a map that is a transposed token view this gives back
    the tokens' own layout, so values and reductions match the token-based code exactly."""
    return m.flatten(2).transpose(1, 2)


def encoder_outputs(
    out: Any, encoder: Any, p: Pass, batch: int, who: str
) -> tuple[dict[str, torch.Tensor], dict[str, str], tuple[int, int]]:
    """The pass's outputs from one forward, each validated; a bad one becomes an error."""
    from partbench.encoders.base import EncoderOutput

    if not isinstance(out, EncoderOutput):
        msg = f"{who}: forward must return an EncoderOutput, got {type(out).__name__}"
        return {}, {o: msg for o in p.outputs}, (0, 0)
    result: dict[str, torch.Tensor] = {}
    errors: dict[str, str] = {}
    grid = (0, 0)
    try:
        final = _tensor(out.final, who, "final", 4, batch)
        grid = (int(final.shape[-2]), int(final.shape[-1]))
        tokens = _cells(final)
    except OutputError as exc:
        final = tokens = None
        err = str(exc)
    for name in sorted(p.outputs):
        try:
            if name == "cls":
                t = _tensor(out.pooled, who, "pooled", 2, batch)
            elif name == "projection":
                _check(out.projection is not None, who, "has no projection head; choose cls or embedding")
                t = _tensor(out.projection, who, "projection", 2, batch)
            elif name in ("embedding", "tokens"):
                if tokens is None:
                    raise OutputError(err)
                if name == "embedding":
                    t = tokens.mean(dim=1)
                else:
                    t = tokens
                    if out.prefix is not None:
                        prefix = _tensor(out.prefix, who, "prefix", 3, batch)
                        _check(
                            prefix.shape[-1] == tokens.shape[-1],
                            who,
                            f"prefix width {prefix.shape[-1]} differs from final width {tokens.shape[-1]}",
                        )
                        t = torch.cat([prefix.to(tokens.dtype), tokens], dim=1)
            else:  # stages
                maps = []
                for i in p.stages:
                    _check(i in out.stages, who, f"stage {i} was asked for and not returned")
                    m = _tensor(out.stages[i], who, f"stage {i}", 4, batch)
                    want = encoder.stages[i].channels
                    _check(m.shape[1] == want, who, f"stage {i} has {m.shape[1]} channels, declared {want}")
                    maps.append(m)
                target = stage_grid(maps, [encoder.stages[i].stride for i in p.stages])
                t = torch.cat([_cells(_to_grid(m, target)) for m in maps], dim=-1)
                result["@stages_grid"] = torch.tensor(target)
            result[name] = t
        except OutputError as exc:
            errors[name] = str(exc)
    return result, errors, grid


def _loss_size(mask: np.ndarray, grid: tuple[int, int], factor: int) -> np.ndarray:
    """Nearest sampling down to at most ``factor`` times the grid (what a loss reads)."""
    size = (min(mask.shape[0], factor * grid[0]), min(mask.shape[1], factor * grid[1]))
    if size == tuple(mask.shape):
        return mask
    t = torch.as_tensor(mask.astype(np.int64))[None, None].float()
    return F.interpolate(t, size=size, mode="nearest")[0, 0].to(torch.uint8).numpy()


class _Writer:
    """Writes each batch's outputs from a thread, so the device runs the next batch while the
    host copies and writes this one; a bounded queue keeps memory to a few batches."""

    def __init__(self, folder, names: Sequence[str]):
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


@dataclass
class PassResult:
    errors: dict[str, str]  # output -> why it failed (the tasks reading it fail)
    timing: dict[str, Any]


def run_pass(
    encoder: Any,
    dataset: Dataset,
    p: Pass,
    entry: Entry,
    *,
    device: torch.device,
    batch_size: int,
    precision: str,
    limit: int | None,
    workers: int,
    compiled: Callable | None = None,
    who: str = "",
    progress: Any | None = None,
    world: World | None = None,
) -> PassResult:
    """Stream one split through the encoder and write the pass's arrays into ``entry``.

    Under several processes (``world``), each encodes its block of samples; rank 0 joins the
    blocks' files in rank order and commits them, so the entry is the one a single process
    would have written."""
    world = world or World()
    who = who or f"encoder '{encoder.name}'"
    geometry = windows.parse(p.transform)
    if geometry is not None and geometry.encoder_size != encoder.input_size:
        if p.inputs == "crops":
            raise PartbenchError(f"transform '{p.transform}' is for whole images, not part crops")
        # A compiled forward belongs to the encoder at its own size.
        encoder, compiled = encoder.at_input_size(geometry.encoder_size), None
    n = len(dataset.samples(p.split))
    if limit is not None:
        n = min(n, limit)
    failure: str | None = None
    local: dict[str, Any] = {}
    try:
        local = _encode_block(
            encoder, dataset, p, entry, world.block(n),
            device=device, batch_size=batch_size, precision=precision, workers=workers,
            compiled=compiled, who=who, progress=progress,
        )  # fmt: skip
    except Exception as exc:
        if world.size == 1:
            raise
        failure = f"{type(exc).__name__}: {exc}" if not isinstance(exc, PartbenchError) else str(exc)
    blocks = world.gather({**local, "failure": failure})
    if any(b["failure"] for b in blocks):
        for b in blocks:
            for path, *_ in b.get("files", {}).values():
                Path(path).unlink(missing_ok=True)
        raise PartbenchError(next(b["failure"] for b in blocks if b["failure"]))
    errors: dict[str, str] = {}
    for b in blocks:
        for name, msg in b["errors"].items():
            errors.setdefault(name, msg)
    total = sum(b["items"] for b in blocks)
    if total == 0:
        raise DataError(f"{dataset.name}: the {p.split} split gave no {p.inputs} to evaluate")
    for name in p.outputs:
        bad = sum(b["nonfinite"].get(name, 0) for b in blocks)
        if bad and name not in errors:
            errors[name] = (
                f"{who} produced non-finite values (NaN or infinity) in output '{name}' "
                f"for {bad} of {total} items"
            )
    if world.main:
        files = _join_blocks(entry, [b["files"] for b in blocks])
        files = {k: v for k, v in files.items() if _output_of(k) not in errors}
        grid = blocks[0]["grid"]
        entry.commit(files, {"grid": list(grid), "stages_grid": blocks[0]["stages_grid"] or list(grid)})
    world.gather(None)  # rank 0 has committed: every rank may read the entry now
    timing = dict(blocks[0]["timing"])
    if world.size > 1:
        timing["world_size"] = world.size
        timing["images"] = total
    return PassResult(errors=errors, timing=timing)


class _BatchEncoder:
    """The forward of one batch and what becomes of its outputs: the uint8 items go to the
    device, are normalised and encoded under autocast; each output is checked, counted for
    non-finite values, converted to its kept dtype and queued for the writer thread."""

    def __init__(
        self,
        encoder: Any,
        p: Pass,
        entry: Entry,
        *,
        device: torch.device,
        batch_size: int,
        precision: str,
        compiled: Callable | None,
        who: str,
    ):
        self.encoder, self.p, self.device, self.batch_size = encoder, p, device, batch_size
        self.compiled, self.who = compiled, who
        self.mean = torch.tensor(encoder.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(encoder.std, device=device).view(1, 3, 1, 1)
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.forward = compiled or encoder.forward
        self.stages = p.stages if "stages" in p.outputs else ()
        self.keep = {o: (torch.float16 if o in MAPS else torch.float32) for o in p.outputs}
        names = [p.array_name(o) for o in sorted(p.outputs)]
        self.writer = _Writer(
            entry.folder, names + [p.array_name(o) + SCALE for o in sorted(p.outputs) if o in MAPS]
        )
        self.timer = PassTimer(device)
        self.errors: dict[str, str] = {}
        self.nonfinite = {o: torch.zeros((), dtype=torch.long, device=device) for o in p.outputs}
        self.staging: _Staging | None = None
        self.offload: _Offload | None = None
        self.grid: tuple[int, int] = (0, 0)
        self.stages_grid: list[int] = []

    def on_device(self) -> None:
        """Pinned staging buffers and the copy stream, for a CUDA device."""
        size = self.encoder.input_size
        self.staging = _Staging((self.batch_size, size, size, 3))
        self.offload = _Offload(self.device)

    def __call__(self, pieces: list[torch.Tensor], real: int) -> None:
        x = self._inputs(pieces, real)
        out = self.timer.forward(lambda: self._forward(x), real)
        if real < len(x):
            out = _trim(out, real)
        self._store(out, real)

    def _inputs(self, pieces: list[torch.Tensor], real: int) -> torch.Tensor:
        """The batch on the device, normalised, (N, 3, S, S) float32."""
        if self.staging is not None:
            x_u8, slot = self.staging.fill(pieces, real)
            x_dev = x_u8.to(self.device, non_blocking=True)
            self.staging.copied(slot)
        else:
            x_dev = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
        if self.compiled is not None and real < self.batch_size:
            # A compiled graph is specialised to the batch size: pad, then drop the padding.
            # Exact, because every encoder treats the items of a batch independently.
            x_dev = torch.cat([x_dev, x_dev[-1:].expand(self.batch_size - real, *x_dev.shape[1:])])
        x = x_dev.permute(0, 3, 1, 2).float().div_(255)
        return (x - self.mean) / self.std

    def _forward(self, x: torch.Tensor) -> Any:
        dtype = self.dtype
        with (
            torch.inference_mode(),
            torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            return self.forward(x, stages=self.stages)

    def _store(self, out: Any, real: int) -> None:
        """Check the forward's outputs and queue those that did not fail for the writer."""
        p, errors = self.p, self.errors
        arrays, errs, g = encoder_outputs(out, self.encoder, p, real, self.who)
        self.grid = g or self.grid
        if "@stages_grid" in arrays:
            self.stages_grid[:] = arrays.pop("@stages_grid").tolist()
        for name, msg in errs.items():
            errors.setdefault(name, msg)
        batch_out = {}
        for name, t in arrays.items():
            if name in errors:
                continue
            self.nonfinite[name] += (~torch.isfinite(t)).flatten(1).any(1).sum()
            if self.keep[name] == torch.float16:
                t, batch_out[p.array_name(name) + SCALE] = fit_float16(t)
            batch_out[p.array_name(name)] = t.to(self.keep[name])
        if self.offload is not None:
            self.writer.put(*self.offload(batch_out))
        else:
            self.writer.put(batch_out)


class _Labels:
    """The labels and sample indices of a block's items, kept in memory, and its label maps,
    streamed to their files as they arrive (only their shapes stay in memory)."""

    def __init__(self, entry: Entry, p: Pass):
        self.entry, self.p = entry, p
        self.labels: list[np.ndarray] = []
        self.sample_index: list[np.ndarray] = []
        self.mask_files = {source: ArrayWriter(entry.folder, p.mask_name(source, r)) for source, r in p.masks}
        self.mask_shapes: dict[str, list[tuple[int, int]]] = {source: [] for source, _ in p.masks}

    def add(self, load: _Load) -> None:
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


def _cut(pending: list[torch.Tensor], size: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The first ``size`` items of the pieces ``pending`` (views, not copies), and the rest."""
    take, rest, need = [], [], size
    for piece in pending:
        if need >= len(piece):
            take.append(piece)
            need -= len(piece)
        elif need > 0:
            take.append(piece[:need])
            rest.append(piece[need:])
            need = 0
        else:
            rest.append(piece)
    return take, rest


def _encode_block(
    encoder: Any,
    dataset: Dataset,
    p: Pass,
    entry: Entry,
    indices: range,
    *,
    device: torch.device,
    batch_size: int,
    precision: str,
    workers: int,
    compiled: Callable | None,
    who: str,
    progress: Any | None,
) -> dict[str, Any]:
    """Encode the samples ``indices`` of the pass's split into temporary files of ``entry``."""
    cuda = device.type == "cuda"
    items = _Items(dataset, p, encoder.input_size, indices, expected_grid(encoder, p))
    per_sample = 4 if p.inputs == "crops" else 1  # a rough guess: loads stay near one batch
    loader = _loader(items, max(1, batch_size // per_sample), workers if len(indices) > 1 else 0, pin=cuda)
    batches = _BatchEncoder(
        encoder,
        p,
        entry,
        device=device,
        batch_size=batch_size,
        precision=precision,
        compiled=compiled,
        who=who,
    )
    labels = _Labels(entry, p)
    if cuda:
        batches.on_device()
    task_id = (
        progress.add_task(f"{encoder.name} · {p.split} {p.inputs}", total=len(indices)) if progress else None
    )
    try:
        written, timing = _stream(loader, batches, labels, p, batch_size, progress, task_id)
    except BaseException:
        batches.writer.discard()
        labels.discard()
        raise
    finally:
        if progress:
            progress.remove_task(task_id)
    return _block_result(batches, labels, items, p, written, timing)


def _stream(
    loader: Any,
    batches: _BatchEncoder,
    labels: _Labels,
    p: Pass,
    batch_size: int,
    progress: Any | None,
    task_id: Any,
) -> tuple[dict[str, tuple], dict[str, Any]]:
    """Run every load of the block through the encoder: the writer's files and the timing.

    Batches are cut from the loads as they come: every forward but the last has exactly
    batch_size items, whatever the number of crops per sample."""
    pending: list[torch.Tensor] = []
    buffered = 0
    loader_wait = 0.0  # the main thread waiting for decoded samples
    errors = batches.errors
    batches.timer.start()
    loads = iter(loader)
    while True:
        t0 = time.perf_counter()
        load = next(loads, None)
        loader_wait += time.perf_counter() - t0
        if load is None:
            break
        if isinstance(load, _Failure):
            raise DataError(load.message)
        labels.add(load)
        if len(load.images):
            pending.append(load.images)
            buffered += len(load.images)
        while buffered >= batch_size:
            take, rest = _cut(pending, batch_size)
            batches(take, batch_size)
            pending, buffered = rest, buffered - batch_size
        if progress:
            progress.advance(task_id, load.samples)
        if p.outputs and set(errors) >= set(p.outputs):
            break  # every output failed: no use reading on
    if buffered:
        batches(pending, buffered)
    written = batches.writer.finish()
    timing = batches.timer.summary() | batches.writer.figures() | {"loader_wait_seconds": loader_wait}
    if batches.staging is not None:
        timing["device_wait_seconds"] = batches.staging.wait_seconds
    return written, timing


def _block_result(
    batches: _BatchEncoder,
    labels: _Labels,
    items: _Items,
    p: Pass,
    written: dict[str, tuple],
    timing: dict[str, Any],
) -> dict[str, Any]:
    """What a block gives run_pass: its files (paths, dtypes, shapes, digests), errors,
    non-finite counts, item count, grids and timing."""
    all_labels = np.concatenate(labels.labels) if labels.labels else np.zeros(0, dtype=np.int64)
    files = dict(written)
    files |= labels.files(all_labels)
    stages_grid = batches.stages_grid
    if stages_grid and tuple(stages_grid) != items.grid and p.masks:
        # The maps a loss reads were sampled against the grid the stages declared; say so
        # when the encoder's real grid differs (a padded CNN border, say).
        timing["loss_grid"] = list(items.grid)
    return {
        "files": {
            k: (str(path), np.dtype(dt).str, tuple(shape), blocks)
            for k, (path, dt, shape, blocks) in files.items()
        },
        "errors": batches.errors,
        "nonfinite": {k: int(v) for k, v in batches.nonfinite.items()},
        "items": len(all_labels),
        "grid": batches.grid,
        "stages_grid": stages_grid,
        "timing": timing,
    }


def _join_blocks(entry: Entry, blocks: list[dict[str, tuple]]) -> dict[str, tuple]:
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


def _output_of(array_name: str) -> str:
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


def _trim(out: Any, n: int) -> Any:
    """The first n items of every tensor in an EncoderOutput (after a padded batch)."""
    import dataclasses

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v[:n]
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        return v

    if not dataclasses.is_dataclass(out):
        return out
    return dataclasses.replace(out, **{f.name: cut(getattr(out, f.name)) for f in dataclasses.fields(out)})


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
