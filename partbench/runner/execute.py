"""Execute: per encoder, the features every job needs (served by the cache where it holds them,
one streaming pass per split for the rest), then each task scored on the run's device.

Any exception fails exactly the runs it touches: an encoder that does not load fails its
runs, a pass that breaks fails the runs reading it, a bad output fails the runs reading that
output, a task that raises fails its own run. Everything else goes on.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from partbench.cache import Entry, FeatureCache, cache_key
from partbench.distributed import World
from partbench.errors import PartbenchError
from partbench.runner.plan import Plan, RunConfig
from partbench.runner.record import Outcome, Recorder, describe_error, non_finite
from partbench.specs import EncoderRequest, EncoderSpec, TaskSpec
from partbench.subsets import cut


@dataclass
class Job:
    spec: TaskSpec
    task: Any
    views: dict[str, Any]
    config: RunConfig
    run_id: int


# The pooled outputs: one vector an item each, cheap beside the encoder's forward pass.
POOLED = frozenset({"cls", "embedding", "projection"})


def load_dataset(plan: Plan) -> Any:
    """The dataset from its resolved folder; a missing folder or file is one line, not a trace."""
    spec = plan.dataset
    try:
        return spec.load(plan.data_root, **plan.dataset_options)
    except PartbenchError:
        raise
    except FileNotFoundError as exc:
        where = exc.filename or plan.data_root
        raise PartbenchError(
            f"dataset '{spec.name}': {where} does not exist"
            + (f" (get the data from {spec.source})" if spec.source else "")
        ) from None
    except Exception as exc:
        raise PartbenchError(f"dataset '{spec.name}' failed to load: {describe_error(exc)}") from exc


def _config(
    plan: Plan,
    dataset: Any,
    encoder: dict[str, Any],
    spec: TaskSpec,
    views: dict[str, Any],
) -> RunConfig:
    opts = plan.opts
    options = plan.options[spec.name]
    return RunConfig(
        encoder=encoder,
        task={
            "name": spec.name,
            "version": spec.version,
            "plugin": spec.plugin,
            "plugin_version": plan.plugin_version(spec),
            "options": spec.hashed_options(options),
            # The leaderboard ranks the protocol's defaults; variants stay in `runs`.
            "default_options": options == spec.defaults(),
        },
        dataset={
            "name": plan.dataset.name,
            "version": plan.dataset.version,
            "plugin": plan.dataset.plugin,
            "plugin_version": plan.plugin_version(plan.dataset),
            "fingerprint": dataset.fingerprint() if dataset is not None else None,
            "root": str(plan.data_root) if plan.data_root else None,
            "options": plan.dataset_options,
        },
        views={
            role: {
                "source": v.source,
                "inputs": v.inputs,
                "split": dataset.split_for(v.role),
                "transform": v.transform,
                "outputs": sorted(v.outputs),
                "stages": list(v.stages),
                "masks": v.masks,
            }
            for role, v in views.items()
        },
        seed=opts.seed,
        limit=opts.limit,
        precision=plan.precision,
        repeats=opts.repeats,
        compile=opts.compile,
        batch_size=opts.batch_size,
        device=plan.device_text,
        workers=_workers(plan),
    )


def _workers(plan: Plan) -> int:
    from partbench.extraction import default_workers

    return default_workers(plan.device.type) if plan.opts.workers is None else plan.opts.workers


class EncoderRun:
    """One encoder over the plan's tasks."""

    def __init__(
        self,
        plan: Plan,
        dataset: Any,
        name: str,
        spec: EncoderSpec,
        cache: FeatureCache,
        recorder: Recorder,
        progress: Any,
        say: Callable[[str], None],
        world: World | None = None,
    ):
        self.plan, self.dataset, self.name, self.spec = plan, dataset, name, spec
        self.world = world or World()
        self.cache, self.recorder, self.progress, self.say = cache, recorder, progress, say
        self.who = f"encoder '{name}'" + (f" (plugin '{spec.plugin}')" if spec.plugin else "")
        self.outcomes: list[Outcome] = []

    # --- record helpers ---------------------------------------------------------------

    def _fields(self, spec: TaskSpec, config: RunConfig, encoder: Any | None) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "encoder_plugin": self.spec.plugin,
            "family": getattr(encoder, "family", self.spec.family),
            "weights_id": getattr(encoder, "weights_id", "unknown"),
            "task": spec.name,
            "task_plugin": spec.plugin,
            "level": spec.level,
            "dataset": self.plan.dataset.name,
            "dataset_fingerprint": config.dataset.get("fingerprint") or "",
            "config": config.as_dict(),
            "headline_metric": spec.metric,
            "device": self.plan.device_text,
            "versions": self.plan.versions,
            "seed": self.plan.opts.seed,
        }

    def _failed(self, spec: TaskSpec, run_id: int | None, exc: BaseException | str) -> None:
        message = self.recorder.fail(run_id, exc) if run_id is not None else describe_error(exc)  # type: ignore[arg-type]
        self.outcomes.append(
            Outcome(self.name, spec.name, "failed", run_id, error=message, dataset=self.plan.dataset.name)
        )
        self.say(f"{self.name} · {spec.name}: {message}")

    def _fail_unstarted(self, spec: TaskSpec, exc: BaseException, encoder: Any | None = None) -> None:
        """A run that failed before it had a full configuration still gets a row, with the error."""
        partial = {"name": self.name, "plugin": self.spec.plugin, "failed_before_configuration": True}
        config = _config(self.plan, self.dataset, partial, spec, {})
        run_id = self.recorder.claim(config.digest, True, **self._fields(spec, config, encoder))
        self._failed(spec, run_id, exc)

    # --- the work ---------------------------------------------------------------------

    def __call__(self) -> list[Outcome]:
        import torch

        plan = self.plan
        request = EncoderRequest(
            name=self.name,
            variant=self.name[len(self.spec.name) :] if self.spec.is_prefix else None,
            weights=plan.opts.weights,
            seed=plan.opts.seed,
        )
        try:
            encoder = self.spec.load(request)
            encoder.to(plan.device).eval()
            described = {
                **encoder.describe(),
                "spec_version": self.spec.version,
                "plugin": self.spec.plugin,
                "plugin_version": plan.plugin_version(self.spec),
            }
        except Exception as exc:
            for spec in plan.tasks:
                self._fail_unstarted(spec, exc)
            return self.outcomes

        jobs = self._claim(encoder, described)
        if not jobs:
            return self.outcomes
        try:
            compiled = torch.compile(encoder.forward, dynamic=False) if plan.opts.compile else None
            self._execute(encoder, described, jobs, compiled)
        except BaseException as exc:
            # Ctrl-C, SIGTERM or a bug: no run is left 'running' behind the user's back.
            self.recorder.interrupt([j.run_id for j in jobs], exc)
            raise
        return self.outcomes

    def _claim(self, encoder: Any, described: dict[str, Any]) -> list[Job]:
        candidates = []
        for spec in self.plan.tasks:
            try:
                task = spec.create(self.plan.options[spec.name])
                views = task.views(self.dataset, encoder)
            except Exception as exc:
                self._fail_unstarted(spec, exc, encoder)
                continue
            candidates.append((spec, task, views, _config(self.plan, self.dataset, described, spec, views)))
        # Rank 0 claims; every rank then encodes for exactly the jobs it claimed.
        run_ids = self.world.share(
            [
                self.recorder.claim(c.digest, self.plan.opts.force, **self._fields(spec, c, encoder))
                for spec, _, _, c in candidates
            ]
        )
        jobs = []
        for (spec, task, views, config), run_id in zip(candidates, run_ids, strict=True):
            if run_id is not None:
                jobs.append(Job(spec, task, views, config, run_id))
                continue
            done = self.recorder.store.find_done(config.digest) if self.world.main else None
            self.outcomes.append(
                Outcome(
                    self.name,
                    spec.name,
                    "skipped",
                    done.id if done is not None else None,
                    spec.metric,
                    _metric_value(done.headline if done is not None else None),
                    error=None if done is not None else "claimed by another process",
                    dataset=self.plan.dataset.name,
                )
            )
        return jobs

    def _info(self, described: dict[str, Any], p: Any) -> dict[str, Any]:
        """What `partbench cache info` shows of an entry."""
        plan = self.plan
        return {
            "encoder": self.name,
            "weights_id": described.get("weights_id"),
            "dataset": plan.dataset.name,
            "split": p.split,
            "inputs": p.inputs,
            "transform": p.transform,
            "precision": plan.precision,
            "limit": plan.opts.limit,
        }

    def _cuts(
        self, described: dict[str, Any], passes: dict[tuple, Any], todos: dict[tuple, Any]
    ) -> dict[tuple, tuple[tuple | None, Entry, list[int]]]:
        """The passes to cut out of a larger one instead of encoding: pass key -> (the larger
        pass's key when this run encodes it, else None; its entry; where the smaller split's
        samples sit in it). A larger pass that this run encodes takes on the smaller one's
        outputs, so those images are encoded once; one that is only cached must already hold
        every array the smaller pass lacks."""
        plan, data = self.plan, self.dataset
        limit = plan.opts.limit
        fold_maps = folds_maps(plan.device)
        cuts = {}
        for key, todo in todos.items():
            p = passes[key]
            for split in sorted(set(data.splits.values()) - {p.split}):
                positions = data.positions(p.split, split)
                if positions is None:
                    continue
                positions = list(positions[: limit if limit is not None else len(positions)])
                bound = len(data.samples(split))
                bound = bound if limit is None else min(limit, bound)
                if positions and max(positions) >= bound:
                    continue  # --limit keeps fewer of the larger split than this needs
                parent_key = (p.inputs, split, p.transform)
                if parent_key in cuts:
                    continue
                parent = self._entry_for(described, dataclasses.replace(p, split=split))
                will = set(parent.arrays())
                runs = parent_key in todos
                if runs:
                    if (todo.outputs - todos[parent_key].outputs - POOLED) and not fold_maps:
                        continue
                    big = _fold(todos[parent_key], todo)
                    if big is None:
                        continue
                    todos[parent_key] = big
                    will |= {big.array_name(o) for o in big.outputs} | {"labels", "sample_index"}
                    will |= {big.mask_name(s, r) for s, r in big.masks}
                need = {p.array_name(o) for o in todo.outputs} | {p.mask_name(s, r) for s, r in todo.masks}
                if need <= will and {"labels", "sample_index"} <= will:
                    cuts[key] = (parent_key if runs else None, parent, positions)
                    break
        # A pass cut from another is not encoded, so nothing can be cut from it in turn.
        return {k: c for k, c in cuts.items() if c[0] not in cuts}

    def _entry_for(self, described: dict[str, Any], p: Any) -> Entry:
        from partbench.extraction import EXTRACTION_VERSION

        plan = self.plan
        key = cache_key(
            {
                "encoder": described,
                "dataset": plan.dataset.name,
                "dataset_version": plan.dataset.version,
                "fingerprint": self.dataset.fingerprint(),
                "dataset_options": plan.dataset_options,
                "split": p.split,
                "inputs": p.inputs,
                "transform": p.transform,
                "precision": plan.precision,
                "limit": plan.opts.limit,
                "compile": plan.opts.compile,
                "extraction": EXTRACTION_VERSION,
            }
        )
        return self.cache.entry(key)

    def _execute(self, encoder: Any, described: dict[str, Any], jobs: list[Job], compiled: Any) -> None:
        from partbench.extraction import features_from, merge_views, run_pass
        from partbench.timing import merge as merge_timings

        plan = self.plan
        passes = merge_views([v for j in jobs for v in j.views.values()], self.dataset)
        entries = {key: self._entry_for(described, p) for key, p in passes.items()}
        served: dict[tuple, tuple[Entry, Any, dict[str, Any]]] = {}
        broken: dict[tuple, str] = {}  # pass key -> why it failed
        bad_outputs: dict[tuple, dict[str, str]] = {}
        todos: dict[tuple, Any] = {}
        for key, p in passes.items():
            todo = _missing(p, set(entries[key].arrays()))
            if todo is None:
                served[key] = (entries[key], p, {"encoder_passes": 0, "cached": True})
            else:
                todos[key] = todo
        cuts = self._cuts(described, passes, todos)
        for key, todo in todos.items():
            if key in cuts:
                continue
            p = passes[key]
            if todo.outputs & POOLED:
                # A pass that computes one pooled vector computes them all for a few more
                # floats an item: a later run that picks another (-o feature=...) then runs
                # no encoder.
                have = set(entries[key].arrays())
                pooled = POOLED if described.get("has_projection") else POOLED - {"projection"}
                extra = frozenset(o for o in pooled if p.array_name(o) not in have)
                todo = dataclasses.replace(todo, outputs=todo.outputs | extra)
            entry = entries[key]
            try:
                result = run_pass(
                    encoder,
                    self.dataset,
                    todo,
                    entry,
                    device=plan.device,
                    batch_size=plan.opts.batch_size,
                    precision=plan.precision,
                    limit=plan.opts.limit,
                    workers=_workers(plan),
                    compiled=compiled,
                    who=self.who,
                    progress=self.progress,
                    world=self.world,
                )
            except Exception as exc:
                broken[key] = describe_error(exc)
                continue
            entry.commit({}, self._info(described, p))
            if plan.opts.compile and result.timing.get("warmup_seconds") is not None:
                # The first call builds the graph: its time is the compile time, kept apart.
                result.timing["compile_seconds"] = result.timing["warmup_seconds"]
            # Names the pass, so that runs sharing it can be told apart from runs that repeat it.
            result.timing["pass"] = f"{entry.folder.name}:{','.join(sorted(todo.outputs))}"
            bad_outputs[key] = result.errors
            served[key] = (entry, p, result.timing)
        if not self.world.main:
            return  # cutting, scoring and storing are rank 0's
        for key, (parent_key, parent, positions) in cuts.items():
            why = broken.get(parent_key) if parent_key is not None else None
            if why is not None:
                broken[key] = why  # the same images failed in the larger pass
                continue
            p, todo = passes[key], todos[key]
            if todo.outputs & POOLED:
                # As for an encoded pass: every pooled output there is comes along.
                held, have = set(parent.arrays()), set(entries[key].arrays())
                extra = frozenset(o for o in POOLED if o in held and o not in have)
                todo = dataclasses.replace(todo, outputs=todo.outputs | extra)
            # An output the larger pass could not give fails here too; the rest are cut.
            errors = {o: e for o, e in bad_outputs.get(parent_key, {}).items() if o in todo.outputs}
            try:
                timing = cut(
                    parent,
                    entries[key],
                    [p.array_name(o) for o in sorted(todo.outputs) if o not in errors],
                    [p.mask_name(s, r) for s, r in todo.masks],
                    positions,
                    self._info(described, p),
                    f"{self.dataset.name}: the {p.split} split gave no {p.inputs} to evaluate",
                )
            except Exception as exc:
                broken[key] = describe_error(exc)
                continue
            bad_outputs[key] = errors
            served[key] = (entries[key], p, timing)

        for job in jobs:
            why = None
            for v in job.views.values():
                key = v.merge_key(self.dataset)
                why = why or broken.get(key)
                errs = bad_outputs.get(key, {})
                why = why or next((errs[o] for o in sorted(v.outputs) if o in errs), None)
            if why is not None:
                self._failed(job.spec, job.run_id, why)
                continue
            try:
                feats = {}
                for role, v in job.views.items():
                    entry, p, pass_timing = served[v.merge_key(self.dataset)]
                    feats[role] = features_from(entry, p, v, pass_timing)
                started = time.perf_counter()
                result = job.task.evaluate(
                    feats, self.dataset, device=plan.device, seed=plan.opts.seed, repeats=plan.opts.repeats
                )
                scoring = time.perf_counter() - started
                peak_gpu = _gpu_peak_mb(plan.device)
            except Exception as exc:
                self._failed(job.spec, job.run_id, exc)
                continue
            problem = non_finite(result)
            if problem is not None:
                self._failed(job.spec, job.run_id, f"{job.spec.name}: {problem}")
                continue
            timing = {**merge_timings([f.timing for f in feats.values()]), "scoring_seconds": scoring}
            if peak_gpu is not None:
                # Since the last pass began: extraction and this task's scoring.
                timing["peak_memory_mb"] = max(timing.get("peak_memory_mb") or 0, peak_gpu)
            try:
                self.recorder.finish(job.run_id, result, timing)
            except PartbenchError as exc:
                self._failed(job.spec, job.run_id, exc)
                continue
            self.outcomes.append(
                Outcome(
                    self.name,
                    job.spec.name,
                    "done",
                    job.run_id,
                    job.spec.metric,
                    result.metrics[job.spec.metric],
                    timing=timing,
                    dataset=plan.dataset.name,
                )
            )


def folds_maps(device: Any) -> bool:
    """Whether a larger pass takes on a smaller one's token and stage maps. On a CPU the
    forward dominates: writing maps for every image of the larger split costs far less than
    encoding the smaller one again (CUB part tasks, 120 images: 335 s -> 250 s). On a GPU the
    one full-size measurement suspected the disk, and taking them on would double the maps
    written, so there only pooled outputs are taken on."""
    return device.type != "cuda"


def _fold(big: Any, small: Any) -> Any | None:
    """``big`` writing ``small``'s outputs and label maps too; None when one pass cannot hold
    both (two stage sets, or one label map at two resolutions)."""
    if "stages" in small.outputs and "stages" in big.outputs and big.stages != small.stages:
        return None
    sources = dict(big.masks)
    if any(sources.get(s, r) != r for s, r in small.masks):
        return None
    return dataclasses.replace(
        big,
        outputs=big.outputs | small.outputs,
        stages=big.stages if "stages" in big.outputs else small.stages,
        masks=tuple(sorted(set(big.masks) | set(small.masks))),
    )


def _missing(p: Any, have: set[str]) -> Any | None:
    """The part of a pass its cache entry lacks, or None when the entry serves it whole."""
    todo = dataclasses.replace(
        p,
        outputs=frozenset(o for o in p.outputs if p.array_name(o) not in have),
        masks=tuple((s, r) for s, r in p.masks if p.mask_name(s, r) not in have),
    )
    if not todo.outputs and not todo.masks and "labels" in have:
        return None
    return todo


def _gpu_peak_mb(device: Any) -> float | None:
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def _metric_value(head: Any) -> Any:
    from partbench.specs import MetricValue

    return MetricValue(head.value, head.ci_low, head.ci_high) if head is not None else None
