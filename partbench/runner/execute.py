"""Execute: per encoder, the features every job needs (runner/passes.py), then each task
scored on the run's device.

Any exception fails exactly the runs it touches: an encoder that does not load fails its
runs, a pass that breaks fails the runs reading it, a bad output fails the runs reading that
output, a task that raises fails its own run. Everything else goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from partbench.cache import FeatureCache
from partbench.distributed import World
from partbench.errors import PartbenchError
from partbench.runner.config import RunConfig, claim_fields, declared_config, run_config
from partbench.runner.passes import Passes, Supply
from partbench.runner.plan import Plan
from partbench.runner.record import Outcome, Recorder, describe_error
from partbench.specs import EncoderRequest, EncoderSpec, TaskSpec


@dataclass
class Job:
    spec: TaskSpec
    task: Any
    views: dict[str, Any]
    config: RunConfig
    run_id: int


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


def encoder_request(plan: Plan, name: str, spec: EncoderSpec) -> EncoderRequest:
    """What the encoder's loader is told in this plan."""
    return EncoderRequest(
        name=name,
        variant=name[len(spec.name) :] if spec.is_prefix else None,
        weights=plan.opts.weights,
        seed=plan.opts.seed,
    )


def prepares_data(plan: Plan, world: World) -> bool:
    """Whether a run with jobs draws its generated data before the first pass and keeps it
    (EncoderRun._prepare_data): not for a --limit run, --no-cache or several processes."""
    opts = plan.opts
    return plan.dataset.builtin_data and opts.cache and opts.limit is None and world.size == 1


def prepare_data(dataset: Any, name: str, workers: int, progress: Any, say: Callable[[str], None]) -> None:
    """``dataset.prepare(workers)`` with a progress line while it works (the first time,
    SynParts' 2,600 images take 15 s on 2 cores). Data that cannot be kept is drawn as it is
    read, with a line saying why: keeping it saves time, nothing needs it."""
    task_id = progress.add_task(f"{name} data", total=None) if progress else None
    try:
        dataset.prepare(workers=workers)
    except OSError as exc:
        say(f"{name}: its data is not kept ({describe_error(exc)}); drawn as read")
    finally:
        if task_id is not None:
            progress.remove_task(task_id)


class EncoderRun:
    """One encoder over the plan's tasks: load it, claim the runs, get their features
    (Passes), score each task."""

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

    def _config(
        self,
        task: TaskSpec,
        described: dict[str, Any] | None,
        views: dict[str, Any],
        options: dict[str, Any] | None = None,
    ) -> RunConfig:
        declared = declared_config(self.plan, self.name, self.spec, task, options)
        return run_config(self.plan, declared, self.dataset, described, views)

    def _claim_one(self, task: TaskSpec, config: RunConfig, encoder: Any | None, force: bool) -> int | None:
        fields = claim_fields(self.plan, self.name, self.spec, task, config, encoder)
        return self.recorder.claim(config.digest, force, **fields)

    def _failed(self, spec: TaskSpec, run_id: int | None, exc: BaseException | str) -> None:
        message = self.recorder.fail(run_id, exc) if run_id is not None else describe_error(exc)  # type: ignore[arg-type]
        self.outcomes.append(
            Outcome(self.name, spec.name, "failed", run_id, error=message, dataset=self.plan.dataset.name)
        )
        self.say(f"{self.name} · {spec.name}: {message}")

    def _fail_unstarted(self, spec: TaskSpec, exc: BaseException, encoder: Any | None = None) -> None:
        """A run that failed before it had a full configuration still gets a row, with the error."""
        self._failed(spec, self._claim_one(spec, self._config(spec, None, {}), encoder, True), exc)

    # --- the work ---------------------------------------------------------------------

    def __call__(self) -> list[Outcome]:
        import torch

        plan = self.plan
        try:
            encoder = self.spec.load(encoder_request(plan, self.name, self.spec))
            encoder.to(plan.machine.device).eval()
            described = encoder.describe()
        except Exception as exc:
            for spec in plan.tasks:
                self._fail_unstarted(spec, exc)
            return self.outcomes

        jobs = self._claim(encoder, described)
        if not jobs:
            return self.outcomes
        try:
            self._prepare_data()
            compiled = torch.compile(encoder.forward, dynamic=False) if plan.opts.compile else None
            passes = Passes(
                plan,
                self.dataset,
                self.name,
                jobs[0].config,
                [v for j in jobs for v in j.views.values()],
                self.cache,
                self.world,
                self.who,
                self.progress,
            )
            supply = passes.supply(encoder, compiled)
            if self.world.main:  # scoring and storing are rank 0's
                for job in jobs:
                    self._score(job, supply)
        except BaseException as exc:
            # Ctrl-C, SIGTERM or a bug: no run is left 'running' behind the user's back.
            self.recorder.interrupt([j.run_id for j in jobs], exc)
            raise
        return self.outcomes

    def _prepare_data(self) -> None:
        """Generated data is drawn on every core and kept beside the features before the first
        pass reads it, as the study does for its lanes. Drawn sample by sample inside the pass,
        SynParts held a first run up on one core (35 s of 112 s for every task on 2 cores) and
        was drawn again by the next command. Not for a --limit run (it reads a few samples),
        --no-cache (it keeps nothing) or several processes (each would draw it). SynParts
        spawns its drawing processes: a script calling ``runner.run`` itself needs the
        ``if __name__ == "__main__":`` guard any multiprocessing script needs."""
        from partbench.extraction import available_cores

        if prepares_data(self.plan, self.world):
            prepare_data(self.dataset, self.plan.dataset.name, available_cores(), self.progress, self.say)

    def _claim(self, encoder: Any, described: dict[str, Any]) -> list[Job]:
        candidates = []
        for spec in self.plan.tasks:
            # One run per stage where the task draws a layer curve (-o stage=all or a list).
            for options in self.plan.stage_options(spec, len(encoder.stages)):
                try:
                    task = spec.create(options)
                    views = task.views(self.dataset, encoder)
                except Exception as exc:
                    self._fail_unstarted(spec, exc, encoder)
                    continue
                candidates.append((spec, task, views, self._config(spec, described, views, options)))
        # Rank 0 claims; every rank then encodes for exactly the jobs it claimed.
        run_ids = self.world.share(
            [self._claim_one(spec, c, encoder, self.plan.opts.force) for spec, _, _, c in candidates]
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

    def _score(self, job: Job, supply: Supply) -> None:
        """Evaluate one job's task on its features and store the result."""
        from partbench.extraction import features_from
        from partbench.timing import merge as merge_timings

        plan = self.plan
        why = supply.why_not(list(job.views.values()), self.dataset)
        if why is not None:
            self._failed(job.spec, job.run_id, why)
            return
        try:
            feats = {}
            for role, v in job.views.items():
                entry, p, pass_timing = supply.served[v.merge_key(self.dataset)]
                widths = [s[1] for s in job.config.encoder.get("stages", [])]
                feats[role] = features_from(entry, p, v, pass_timing, widths)
            started = time.perf_counter()
            opts, device = plan.opts, plan.machine.device
            data = self.dataset
            result = job.task.evaluate(feats, data, device=device, seed=opts.seed, repeats=opts.repeats)
            scoring = time.perf_counter() - started
            peak_gpu = _gpu_peak_mb(device)
        except Exception as exc:
            self._failed(job.spec, job.run_id, exc)
            return
        timing = {**merge_timings([f.timing for f in feats.values()]), "scoring_seconds": scoring}
        if peak_gpu is not None:
            # Since the last pass began: extraction and this task's scoring.
            timing["peak_memory_mb"] = max(timing.get("peak_memory_mb") or 0, peak_gpu)
        try:  # the store checks the result (partbench.store.validate) before anything is written
            self.recorder.finish(job.run_id, result, timing)
        except PartbenchError as exc:
            self._failed(job.spec, job.run_id, exc)
            return
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


def _gpu_peak_mb(device: Any) -> float | None:
    if device.type != "cuda":
        return None
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def _metric_value(head: Any) -> Any:
    from partbench.specs import MetricValue

    return MetricValue(head.value, head.ci_low, head.ci_high) if head is not None else None
