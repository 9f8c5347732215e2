"""The runner: plan, execute, record. ``run`` drives ``partbench run``.

plan     names -> specs, options typed, checked and resolved for the machine, nothing
         loaded (plan.py)
config   what one (encoder, task) run is: declared by the plan, completed by loading; its
         digest, store columns and feature-cache keys (config.py)
execute  per encoder: jobs claimed, features served (passes.py: the cache, a larger split's
         pass, or one pass per split), tasks scored on the run's device (execute.py)
record   each run's lifecycle in the store (record.py)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from partbench.distributed import World
from partbench.plugins import Registry
from partbench.runner.config import RunConfig, declared_config
from partbench.runner.plan import Machine, Plan, RunOptions, RunRequest, make_plan, select_tasks, task_options
from partbench.runner.record import Outcome, Recorder
from partbench.store import Store

__all__ = [
    "Machine",
    "Outcome",
    "Plan",
    "RunConfig",
    "RunOptions",
    "RunRequest",
    "declared_config",
    "make_plan",
    "run",
    "select_tasks",
    "task_options",
]


def run(
    registry: Registry,
    store: Store,
    encoders: Sequence[str],
    tasks: Sequence[str],
    opts: RunOptions,
    progress: Any | None = None,
    say: Callable[[str], None] = print,
) -> list[Outcome]:
    """Evaluate every encoder on every selected task; one outcome per (encoder, task)."""
    import torch

    from partbench.cache import FeatureCache, cache_root
    from partbench.runner.execute import EncoderRun, load_dataset

    world = World.from_env()
    local_rank = world.local_rank if world.size > 1 else None
    plan = make_plan(registry, encoders, tasks, opts, lambda: Machine.here(opts.device, local_rank))
    if world.main:
        store.check_writable()  # before any encoder is loaded: a result that cannot be stored is lost
    world.start(plan.machine.device_type)
    if plan.machine.device_type == "cuda" and plan.opts.precision == "fp32":
        # TF32 matmuls: fp32 storage at tensor-core speed; recorded with the precision.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(plan.opts.seed)
    dataset = load_dataset(plan)
    cache = FeatureCache(cache_root() if plan.opts.cache or not world.main else None)
    if not plan.opts.cache:
        # One temporary folder for every rank: rank 0's.
        cache.root = Path(world.share(str(cache.root)))
    outcomes: list[Outcome] = []
    try:
        with store.keep_alive() as live:
            recorder = Recorder(store, say, live, active=world.main)
            for name, spec in plan.encoders:
                outcomes += EncoderRun(plan, dataset, name, spec, cache, recorder, progress, say, world)()
    finally:
        cache.close()
    return outcomes
