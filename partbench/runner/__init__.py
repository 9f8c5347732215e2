"""The runner: plan, execute, record. ``run`` drives ``partbench run``.

plan     names -> specs, options typed and checked, nothing loaded (plan.py)
execute  per encoder: jobs claimed, features from the cache or one pass per split, tasks
         scored on the run's device (execute.py)
record   each run's lifecycle in the store (record.py)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from partbench.distributed import World
from partbench.plugins import Registry
from partbench.runner.plan import (
    Plan,
    RunConfig,
    RunOptions,
    describe_device,
    library_versions,
    make_plan,
    resolve_device,
    resolve_precision,
    select_tasks,
    task_options,
)
from partbench.runner.record import Outcome, Recorder
from partbench.store import Store

__all__ = [
    "Outcome",
    "Plan",
    "RunConfig",
    "RunOptions",
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

    from partbench.cache import FeatureCache, cache_root, check_root
    from partbench.runner.execute import EncoderRun, load_dataset

    world = World.from_env()
    plan = make_plan(registry, encoders, tasks, opts)
    if world.main:
        store.check_writable()  # before any encoder is loaded: a result that cannot be stored is lost
    if opts.cache:
        check_root(cache_root())  # likewise: a pass that cannot be kept fails after its encoder loaded
    plan.device = resolve_device(opts.device, world.local_rank if world.size > 1 else None)
    world.start(plan.device.type)
    plan.precision = resolve_precision(opts.precision, plan.device)
    plan.device_text = describe_device(plan.device)
    plan.versions = library_versions()
    if plan.device.type == "cuda" and plan.precision == "fp32":
        # TF32 matmuls: fp32 storage at tensor-core speed; recorded with the precision.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(opts.seed)
    dataset = load_dataset(plan)
    cache = FeatureCache(cache_root() if opts.cache or not world.main else None)
    if not opts.cache:
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
