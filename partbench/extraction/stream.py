"""A pass streamed through the encoder: loads cut into batches of exactly the batch size, each
batch's forward under autocast on the run's device (pinned staging buffers and a copy stream
of their own on a GPU), its outputs queued for the writer thread while the next batch runs;
under several processes each encodes its block and rank 0 joins the blocks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from partbench import windows
from partbench.cache import SCALE, Entry
from partbench.datasets.base import Dataset
from partbench.distributed import World
from partbench.errors import DataError, PartbenchError
from partbench.extraction.files import MAPS, Labels, Writer, fit_float16, join_blocks, output_of
from partbench.extraction.inputs import Failure, Items, data_loader
from partbench.extraction.merge import Pass
from partbench.extraction.outputs import encoder_outputs, expected_grid, trim
from partbench.timing import PassTimer


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
        files = join_blocks(entry, [b["files"] for b in blocks])
        files = {k: v for k, v in files.items() if output_of(k) not in errors}
        grid = blocks[0]["grid"]
        entry.commit(files, {"grid": list(grid), "stages_grid": blocks[0]["stages_grid"] or list(grid)})
    world.gather(None)  # rank 0 has committed: every rank may read the entry now
    timing = dict(blocks[0]["timing"])
    if world.size > 1:
        timing["world_size"] = world.size
        timing["images"] = total
    return PassResult(errors=errors, timing=timing)


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
        self.writer = Writer(
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
            out = trim(out, real)
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
    items = Items(dataset, p, encoder.input_size, indices, expected_grid(encoder, p))
    per_sample = 4 if p.inputs == "crops" else 1  # a rough guess: loads stay near one batch
    loads = data_loader(items, max(1, batch_size // per_sample), workers if len(indices) > 1 else 0, pin=cuda)
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
    labels = Labels(entry, p)
    if cuda:
        batches.on_device()
    task_id = (
        progress.add_task(f"{encoder.name} · {p.split} {p.inputs}", total=len(indices)) if progress else None
    )
    try:
        written, timing = _stream(loads, batches, labels, p, batch_size, progress, task_id)
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
    labels: Labels,
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
        if isinstance(load, Failure):
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
    labels: Labels,
    items: Items,
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
