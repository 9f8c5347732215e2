"""What a run would do and cost, told before it runs (``partbench run --dry-run``).

The forecast plans exactly as ``runner.run`` does (the same plan, the same run
configurations and digests, the same pass schedule: runner/passes.py ``Passes.schedule``)
and then stops. It writes nothing: not the store, not the cache (a damaged cache entry is
reported, not set aside).

What it loads, and why:

- the dataset (its index and its fingerprint), because every cache key holds the
  dataset's fingerprint;
- each encoder, on the CPU, because its description (weights identity, stages) enters the
  cache key and the run's digest; its module then moves to PyTorch's meta device and one
  forward runs there, which computes the shape of every output and no value;
- up to ``SAMPLED`` samples of each split a pass encodes, to count part crops and label-map
  sizes (exact up to that many samples; beyond it, the mean of an evenly spaced sample,
  marked as estimated).

Estimates (documented in docs/performance.md):

- bytes: items x each output's shape x its stored dtype (float32 vectors; float16 token and
  stage maps with one float32 scale an item), plus labels and sample indices (int64) and
  label maps (uint8, with their int64 shapes) - what the extraction writes, array by array;
  and, once, the generated data a run draws before its first pass and keeps
  (``Dataset.prepare_bytes``);
- device memory (the forward's device): the weights in float32, two float32 copies of a
  batch of inputs, the batch's outputs, and a ViT-style block's transient (the MLP's hidden
  layer, 4x the width, and the attention scores, width/64 heads x tokens^2) in the compute
  dtype, for the widest stage;
- host memory: this process as measured after loading, plus the decoded images in flight
  (DataLoader prefetch and, on CUDA, the pinned staging buffers), the writer's queue of
  batches, and the largest task's features read whole in float32 (an upper bound:
  segmentation streams its features in chunks);
- time: where the store holds a done run of the same encoder at the same precision on a
  device described the same way, reading the same kind of input (crops or images) at the
  same input size, whose timing counted an encoder pass: items / that run's end-to-end rate
  (its items over its passes' wall time: decoding, cropping, forward and writing). Failing
  that, a run on this CPU with another thread count, named beside the figure.

A segmentation pass at a window of its own (``-o protocol=study``) counts its items as the
windows each resized image gives, and its shapes and memory as the encoder at the window's
size, a copy resized before the meta device's forward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from partbench import windows
from partbench.errors import PartbenchError
from partbench.runner.config import covers, declared_config, run_config
from partbench.runner.plan import Machine, Plan, RunOptions, make_plan

SAMPLED = 512  # samples read per split to count crops and label-map sizes
LOADS_IN_FLIGHT = 2  # the DataLoader's prefetch factor, per worker
STAGING_DEPTH = 3  # pinned staging buffers on CUDA (extraction.stream._Staging)
WRITER_DEPTH = 4  # batches the writer holds: its queue of 3 and the one it writes
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}


def forecast(
    registry: Any,
    store: Any,
    encoders: Sequence[str],
    tasks: Sequence[str],
    opts: RunOptions,
    loaded: dict[tuple[str, str, str], Any] | None = None,
) -> dict:
    """The forecast of ``partbench run`` with these arguments, as plain JSON values.
    ``loaded`` keeps the datasets loaded so far, for a caller forecasting several runs on the
    same data (the study): the samples read to count crops are not drawn again for each."""
    from partbench.cache import FeatureCache, cache_root
    from partbench.distributed import World
    from partbench.runner.execute import load_dataset, prepares_data

    plan = make_plan(registry, encoders, tasks, opts, lambda: Machine.here(opts.device))
    key = (plan.dataset.name, str(plan.data_root), repr(sorted(plan.dataset_options.items())))
    if loaded is None:
        loaded = {}
    if key not in loaded:
        loaded[key] = load_dataset(plan)
    dataset = loaded[key]
    cache = FeatureCache(cache_root()) if plan.opts.cache else None
    forecasts = [_encoder(plan, dataset, name, spec, cache, store) for name, spec in plan.encoders]
    runs = any(r["will_run"] for f in forecasts for r in f["runs"])
    return {
        "dataset": plan.dataset.name,
        "device": plan.machine.text,
        "precision": plan.opts.precision,
        "batch_size": plan.opts.batch_size,
        "limit": plan.opts.limit,
        "cache": str(cache.root) if cache is not None else None,
        # Generated data the run draws before its first pass and keeps beside the features.
        "data_bytes": dataset.prepare_bytes() if runs and prepares_data(plan, World()) else 0,
        "encoders": forecasts,
    }


def _encoder(plan: Plan, dataset: Any, name: str, spec: Any, cache: Any, store: Any) -> dict:
    from partbench.cache import FeatureCache, Problem, cache_root
    from partbench.distributed import World
    from partbench.runner.execute import encoder_request
    from partbench.runner.passes import Passes
    from partbench.runner.record import describe_error
    from partbench.timing import peak_rss_mb

    def load() -> Any:
        try:
            return spec.load(encoder_request(plan, name, spec))
        except PartbenchError:
            raise
        except Exception as exc:
            raise PartbenchError(f"encoder '{name}' failed to load: {describe_error(exc)}") from exc

    encoder = load()
    described = encoder.describe()
    runs, views, configs = _runs(plan, dataset, name, spec, encoder, described, store)
    out: dict[str, Any] = {
        "encoder": name,
        "weights_id": described.get("weights_id"),
        "parameters": described.get("parameters"),
        "loaded": "on the CPU for its description; shapes from one forward on the meta device (no values)",
        "runs": runs,
        "passes": [],
    }
    if not views:
        return out
    problems: dict[str, str] = {}

    def peek(entry: Any) -> set[str]:
        if cache is None:
            return set()
        try:
            return set(entry.check())
        except Problem as problem:
            problems[entry.folder.name] = str(problem)
            return set()

    # Keys only: a FeatureCache touches no file until an entry is read or written.
    passes = Passes(
        plan, dataset, name, configs[0], [v for vs in views for v in vs],
        cache or FeatureCache(cache_root()), World(), name,
    )  # fmt: skip
    passes.have = peek
    cached, todos, cuts = passes.schedule()
    est = _Estimates(plan, dataset, encoder, described, peak_rss_mb(), _rates(store, name, plan))
    # Shapes: one forward on the meta device, of every stage any pass asks for, at each input
    # size a pass runs the encoder at (a segmentation window resamples its position
    # embeddings): the resized copies first, while the encoder's weights are still real.
    stages = sorted({s for p in passes.passes.values() if "stages" in p.outputs for s in p.stages})
    sizes = {windows.encoder_size(p.transform, encoder.input_size) for p in passes.passes.values()}
    for size in sorted(sizes - {encoder.input_size}):
        sized = encoder.at_input_size(size)
        est.sized[size] = (sized, _shapes(sized, stages, lambda size=size: load().at_input_size(size)))
    est.shapes = _shapes(encoder, stages, load)
    for key, p in sorted(passes.passes.items()):
        entry = passes.entries[key]
        row: dict[str, Any] = {
            "split": p.split,
            "inputs": p.inputs,
            "transform": p.transform,
            "entry": entry.folder.name if cache is not None else None,
        }
        if key in cached:
            row |= {"action": "cached", "outputs": sorted(p.outputs), "bytes": 0}
        elif key in cuts:
            parent_key, parent, _ = cuts[key]
            held = peek(parent)
            if parent_key is not None:
                held |= {p.array_name(o) for o in passes.encoded(parent_key, todos[parent_key]).outputs}
            source = parent_key[1] if parent_key else "cached"
            row |= {"action": f"cut from the {source} {p.inputs} pass"}
            row |= est.pass_row(passes.cut_outputs(key, todos[key], held), encoded=False)
        else:
            row |= {"action": "encode"} | est.pass_row(passes.encoded(key, todos[key]), encoded=True)
        if entry.folder.name in problems:
            row["damaged_entry"] = problems[entry.folder.name]
        out["passes"].append(row)
    out["scoring_host_mb"] = max(est.scoring_mb(vs) for vs in views)
    return add_totals(out)


def add_totals(encoder: dict) -> dict:
    """An encoder's forecast with its passes' bytes summed, and their encoding time where every
    encoded pass was timed."""
    encoder["bytes"] = sum(r["bytes"] for r in encoder["passes"])
    timed = [r["seconds"] for r in encoder["passes"] if "seconds" in r]
    encoded = sum(r["action"] == "encode" for r in encoder["passes"])
    encoder["seconds"] = sum(timed) if timed and len(timed) == encoded else None
    return encoder


def _runs(
    plan: Plan, dataset: Any, name: str, spec: Any, encoder: Any, described: Mapping[str, Any], store: Any
) -> tuple[list[dict], list[list[Any]], list[Any]]:
    """What the store answers of each task's run; the views and configurations of those the
    run would run (every one with --force)."""
    runs, views, configs = [], [], []
    done_here = [r for r in store.runs(status="done", dataset=plan.dataset.name) if r.encoder == name]
    for task_spec in plan.tasks:
        task = task_spec.create(plan.options[task_spec.name])
        task_views = task.views(dataset, encoder)
        declared = declared_config(plan, name, spec, task_spec)
        config = run_config(plan, declared, dataset, described, task_views)
        done = store.find_done(config.digest)
        will_run = done is None or plan.opts.force
        runs.append(
            {
                "task": task_spec.name,
                "config_hash": config.digest,
                "stored_run": done.id if done is not None else None,
                "declared_covered_by": [
                    r.id for r in done_here if r.task == task_spec.name and covers(r.config, declared)
                ],
                "will_run": will_run,
                "views": {role: sorted(v.outputs) for role, v in task_views.items()},
            }
        )
        if will_run:
            views.append(list(task_views.values()))
            configs.append(config)
    return runs, views, configs


class _Estimates:
    """Counts, bytes, memory and time of the passes of one encoder."""

    def __init__(
        self,
        plan: Plan,
        dataset: Any,
        encoder: Any,
        described: Mapping[str, Any],
        base_rss: float,
        rates: Mapping[str, Mapping[str, Any]],
    ):
        self.plan, self.dataset, self.encoder, self.described = plan, dataset, encoder, described
        self.base_rss, self.rates = base_rss, rates
        self.shapes: dict[str, tuple[tuple[int, ...], str]] = {}
        # Input size -> (the encoder at that size, its outputs' shapes), for windowed passes.
        self.sized: dict[int, tuple[Any, dict[str, tuple[tuple[int, ...], str]]]] = {}
        self.memo: dict = {}

    def at(self, p: Any) -> tuple[Any, dict[str, tuple[tuple[int, ...], str]]]:
        """The encoder as pass ``p`` runs it, and its outputs' shapes there."""
        size = windows.encoder_size(p.transform, self.encoder.input_size)
        return (self.encoder, self.shapes) if size == self.encoder.input_size else self.sized[size]

    def counts(self, p: Any) -> dict[str, Any]:
        return _counts(self.dataset, p, self.plan.opts.limit, self.at(p)[0], self.memo)

    def pass_row(self, todo: Any, encoded: bool) -> dict[str, Any]:
        encoder, shapes = self.at(todo)
        counts = self.counts(todo)
        sizes = _bytes(todo, shapes, counts)
        row: dict[str, Any] = {
            "outputs": sorted(todo.outputs),
            "masks": [todo.mask_name(s, r) for s, r in todo.masks],
            "samples": counts["samples"],
            "items": counts["items"],
            "counted": counts["counted"],
            "bytes": sum(sizes.values()),
            "arrays": sizes,
        }
        if encoded:
            row["memory"] = _memory(self.plan, self.described, encoder, todo, shapes, self.base_rss)
            rate = self.rates.get((todo.inputs, encoder.input_size))
            if rate is not None:
                row["seconds"] = counts["items"] / rate["items_per_second"]
                row["timed_by_run"] = rate["run"]
                if rate["device"] != self.plan.machine.text:
                    row["timed_on"] = rate["device"]
        return row

    def scoring_mb(self, views: Sequence[Any]) -> float:
        """A task's features read whole as float32, in MiB: the scoring's working set, bounded
        above."""
        from partbench.extraction import Pass

        total = 0
        for v in views:
            split = self.dataset.split_for(v.role)
            p = Pass(v.inputs, split, v.transform, frozenset(v.outputs), v.stages, ())
            items, shapes = self.counts(p)["items"], self.at(p)[1]
            total += sum(items * math.prod(shapes[o][0]) * 4 for o in v.outputs)
        return total / 2**20


def _shapes(
    encoder: Any, stages: Sequence[int], reload: Callable[[], Any]
) -> dict[str, tuple[tuple[int, ...], str]]:
    """Each output's per-item shape and stored dtype, from a forward on the meta device
    (``reload``: the encoder loaded again, for one whose forward the meta device cannot run)."""
    import dataclasses

    import torch

    from partbench.extraction import MAPS, Pass, encoder_outputs

    size = encoder.input_size
    try:
        encoder.module.to("meta")
        with torch.inference_mode():
            out = encoder.forward(torch.empty(1, 3, size, size, device="meta"), stages=tuple(stages))
    except Exception:
        # An encoder that computes outside torch's operators cannot run on the meta device:
        # one zero image through a fresh copy on the CPU gives the same shapes.
        encoder = reload()
        with torch.inference_mode():
            out = encoder.forward(torch.zeros(1, 3, size, size), stages=tuple(stages))
    every = Pass("images", "", "", frozenset({"cls", "embedding", "tokens", "stages"}), tuple(stages), ())
    if encoder.has_projection:
        every = dataclasses.replace(every, outputs=every.outputs | {"projection"})
    if not stages:
        every = dataclasses.replace(every, outputs=every.outputs - {"stages"})
    arrays, _, _ = encoder_outputs(out, encoder, every, 1, encoder.name)
    return {
        name: (tuple(t.shape[1:]), "float16" if name in MAPS else "float32")
        for name, t in arrays.items()
        if not name.startswith("@")
    }


def _samples(dataset: Any, split: str, limit: int | None) -> tuple[int, list[int]]:
    n = len(dataset.samples(split))
    n = n if limit is None else min(n, limit)
    if n <= SAMPLED:
        return n, list(range(n))
    return n, sorted({round(k * (n - 1) / (SAMPLED - 1)) for k in range(SAMPLED)})


def _counts(dataset: Any, p: Any, limit: int | None, encoder: Any, memo: dict) -> dict[str, Any]:
    """Samples, items (crops or images) and label-map bytes of a pass over its split: read
    from the samples themselves, all of them up to SAMPLED, else an even sample scaled up.
    ``memo`` keeps what one split's samples told, so each is read once."""
    key = (p.inputs, p.split, p.transform, p.masks)
    if key not in memo:
        memo[key] = _count(dataset, p, limit, encoder)
    return memo[key]


def _count(dataset: Any, p: Any, limit: int | None, encoder: Any) -> dict[str, Any]:
    from partbench.datasets.views import crop_rule
    from partbench.extraction import expected_grid
    from partbench.features import FULL

    n, read = _samples(dataset, p.split, limit)
    geometry = windows.parse(p.transform)
    sliding = geometry is not None and geometry.kind == "slide"
    if not (p.inputs == "crops" or p.masks or sliding):
        return {"samples": n, "items": n, "mask_cells": {}, "counted": "exact"}
    samples = dataset.samples(p.split)
    grid = expected_grid(encoder, p) if p.masks else (0, 0)
    items = 0
    cells = {s: 0 for s, _ in p.masks}
    for i in read:
        sample = samples[i]
        if p.inputs == "crops":
            items += len(crop_rule(sample.keypoints, dataset.crop_bounds))
        elif sliding:  # every window of the resized image (extraction.inputs.sample_inputs)
            height, width = windows.scaled_size(*sample.image.shape[:2], geometry.size)
            items += len(windows.windows(height, width, geometry.window, geometry.stride))
        else:
            items += 1
        for source, resolution in p.masks:
            mask = sample.part_mask if source == "part-masks" else sample.object_mask
            if mask is None:
                continue  # the pass fails on it, naming the sample
            h, w = mask.shape[:2]
            if geometry is not None and geometry.kind == "crop":  # the window's own labels
                h = w = geometry.window
            if resolution != FULL:
                h, w = min(h, resolution * grid[0]), min(w, resolution * grid[1])
            cells[source] += h * w
    scale = n / len(read) if read else 0
    exact = len(read) == n
    return {
        "samples": n,
        "items": items if exact else round(items * scale),
        "mask_cells": {s: c if exact else round(c * scale) for s, c in cells.items()},
        "counted": "exact" if exact else f"estimated from {len(read)} of {n} samples",
    }


def _bytes(
    p: Any, shapes: Mapping[str, tuple[tuple[int, ...], str]], counts: Mapping[str, Any]
) -> dict[str, int]:
    """Bytes of each array the pass writes, as the extraction (or a cut) lays them out."""
    from partbench.cache import SCALE

    items, out = counts["items"], {}
    for o in sorted(p.outputs):
        tail, dtype = shapes[o]
        size = 2 if dtype == "float16" else 4
        out[p.array_name(o)] = items * math.prod(tail) * size
        if dtype == "float16":
            out[p.array_name(o) + SCALE] = items * 4
    out["labels"] = out["sample_index"] = items * 8
    for source, resolution in p.masks:
        name = p.mask_name(source, resolution)
        out[name] = counts["mask_cells"][source]
        out[name + ":shapes"] = counts["samples"] * 2 * 8
    return out


def _memory(
    plan: Plan,
    described: Mapping[str, Any],
    encoder: Any,
    p: Any,
    shapes: Mapping[str, tuple[tuple[int, ...], str]],
    base_rss: float,
) -> dict[str, float]:
    """Predicted peaks of one encoded pass in MiB (see the module's docstring)."""
    from partbench.extraction import default_workers

    b, s = plan.opts.batch_size, encoder.input_size
    import dataclasses

    # One item's outputs (label maps aside: they leave the workers sampled down, per sample).
    per_item_out = sum(_bytes(dataclasses.replace(p, masks=()), shapes, {"items": 1, "samples": 0}).values())
    weights = 4 * int(described.get("parameters") or 0)
    inputs = 2 * b * 3 * s * s * 4
    a = ITEMSIZE[plan.opts.precision]
    widest = max(encoder.stages, key=lambda st: st.channels)
    cells = -((-s // widest.stride) ** 2) + 1 + encoder.num_registers
    block = b * (4 * cells * widest.channels * a + max(1, widest.channels // 64) * cells * cells * a)
    forward = weights + inputs + b * per_item_out + block
    workers = (
        plan.opts.workers if plan.opts.workers is not None else default_workers(plan.machine.device_type)
    )
    decoded = (max(1, workers) * LOADS_IN_FLIGHT + 1) * b * s * s * 3
    host = decoded + WRITER_DEPTH * b * per_item_out
    cuda = plan.machine.device_type == "cuda"
    if cuda:
        host += STAGING_DEPTH * b * s * s * 3
    else:
        host += forward
    mib = 2**20
    result = {"host_mb": base_rss + host / mib}
    if cuda:
        result["device_mb"] = forward / mib
    return result


def _rates(store: Any, encoder: str, plan: Plan) -> dict[tuple[str, int], dict[str, Any]]:
    """Per kind of input (crops, images) and input size: the end-to-end items per second of
    the latest done run of this encoder reading only that kind at that size, at this
    precision, on a device described as this one is (else on this CPU at another thread
    count; each rate names its run and device), whose timing counted an encoder pass.
    Crops and images are told apart because cutting crops costs time of its own (SynParts,
    mini-mae, 2 CPU cores: 35 to 45 crops/s against 61 to 85 images/s); sizes, because a
    512 px window is five times a 224 px image's tokens."""
    rates: dict[tuple[str, int], dict[str, Any]] = {}
    # A run on this CPU with another thread count (a study's one-thread lanes) stands in where
    # none matches exactly, and says so.
    others: dict[tuple[str, int], dict[str, Any]] = {}
    here = _without_threads(plan.machine.text)
    for run in reversed(store.runs(status="done")):
        timing, config = run.timing or {}, run.config or {}
        exact = run.device == plan.machine.text
        if run.encoder != encoder or not timing.get("encoder_passes"):
            continue
        if not exact and (here is None or _without_threads(run.device) != here):
            continue
        views = config.get("views") or {}
        own = (config.get("encoder") or {}).get("input_size")
        try:
            kinds = {
                (v.get("inputs"), windows.encoder_size(v.get("transform") or "test", own))
                for v in views.values()
                if isinstance(v, dict)
            }
        except ValueError:  # a transform this version does not know
            continue
        if config.get("precision") != plan.opts.precision or len(kinds) != 1:
            continue
        (kind,) = kinds
        images, wall = timing.get("images"), timing.get("wall_seconds")
        found = rates if exact else others
        if kind not in found and images and wall:
            found[kind] = {"items_per_second": images / wall, "run": run.id, "device": run.device}
    return others | rates


def _without_threads(device: str) -> str | None:
    """A CPU's description without its thread count; None for another device."""
    head, sep, _ = device.rpartition(", ")
    return head if device.startswith("cpu (") and sep and device.endswith(" threads)") else None


class NoStore:
    """A results database that does not exist yet: it holds no run."""

    def find_done(self, config_hash: str) -> None:
        return None

    def runs(self, *, status: str | None = None, dataset: str | None = None) -> list:
        return []
