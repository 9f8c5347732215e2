"""What one (encoder, task) run is, built in one place from the plan.

``declared_config`` is the run's configuration as planning knows it (nothing loaded); a
sweep compares it with stored runs, and the runner completes it with what loading tells
(the dataset's fingerprint, the encoder's description, the views the task asks of the
encoder) into a RunConfig. The RunConfig's digest decides whether the store already holds a
run; the claim fields and the feature cache's keys are derived from it too, so a setting
that enters one enters all three.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from partbench.cache import cache_key
from partbench.runner.plan import Plan
from partbench.specs import EncoderSpec, TaskSpec


@dataclass(frozen=True)
class RunConfig:
    """Everything that makes one run what it is. ``digest`` leaves out what changes timings
    but not scores (device, batch size, workers), so a run is not repeated on another machine."""

    encoder: Mapping[str, Any]
    task: Mapping[str, Any]
    dataset: Mapping[str, Any]
    views: Mapping[str, Any]
    seed: int
    limit: int | None
    precision: str
    repeats: int
    compile: bool
    batch_size: int
    device: str
    workers: int

    RECORDED_ONLY = ("batch_size", "device", "workers")

    def as_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))

    @property
    def digest(self) -> str:
        keep = {k: v for k, v in self.as_dict().items() if k not in self.RECORDED_ONLY}
        return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()

    def feature_key(self, split: str, inputs: str, transform: str) -> str:
        """The feature cache's key for one pass of this run's encoder over one split: what
        changes a feature (not the task, its options, the seed or the repeats), so the runs of
        every task and seed share it."""
        from partbench.datasets.views import CROP_VERSION
        from partbench.extraction import EXTRACTION_VERSION

        # The crop rule enters the key of crop passes only: whole-image entries stay valid.
        crops = {"crop_rule": CROP_VERSION} if inputs == "crops" else {}
        return cache_key(
            {
                "encoder": self.encoder,
                "dataset": self.dataset["name"],
                "dataset_version": self.dataset["version"],
                "fingerprint": self.dataset["fingerprint"],
                "dataset_options": self.dataset["options"],
                "split": split,
                "inputs": inputs,
                "transform": transform,
                "precision": self.precision,
                "limit": self.limit,
                "compile": self.compile,
                "extraction": EXTRACTION_VERSION,
                **crops,
            }
        )


def declared_config(
    plan: Plan,
    encoder: str,
    encoder_spec: EncoderSpec,
    task: TaskSpec,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One (encoder, task) run's configuration as far as the plan knows it, before the dataset
    or the encoder loads: every key of it is a key of the stored configuration with the same
    value (``covers``). Not known yet: the dataset's fingerprint, the encoder's own
    description (weights, stages), the views. ``options``: the task's options for one stage
    of a layer curve (Plan.stage_options), the plan's options for the task otherwise."""
    opts = plan.opts
    options = dict(plan.options[task.name] if options is None else options)
    return {
        "encoder": {
            "name": encoder,
            "spec_version": encoder_spec.version,
            "plugin": encoder_spec.plugin,
            "plugin_version": plan.plugin_version(encoder_spec),
        },
        "task": {
            "name": task.name,
            "version": task.version,
            "plugin": task.plugin,
            "plugin_version": plan.plugin_version(task),
            # Options added to a task later stay out of the hash at their defaults, so runs
            # stored before them keep answering.
            "options": task.hashed_options(options),
            # The leaderboard ranks the protocol's defaults; variants stay in `runs`.
            "default_options": options == task.defaults(),
        },
        "dataset": {
            "name": plan.dataset.name,
            "version": plan.dataset.version,
            "plugin": plan.dataset.plugin,
            "plugin_version": plan.plugin_version(plan.dataset),
            "root": str(plan.data_root) if plan.data_root else None,
            "options": plan.dataset_options,
        },
        "seed": opts.seed,
        "limit": opts.limit,
        "precision": opts.precision,
        "repeats": opts.repeats,
        "compile": opts.compile,
    }


def run_config(
    plan: Plan,
    declared: Mapping[str, Any],
    dataset: Any,
    described: Mapping[str, Any] | None,
    views: Mapping[str, Any],
) -> RunConfig:
    """``declared`` completed with what loading told: the dataset's fingerprint, the loaded
    encoder's ``describe()`` (None when it did not load) and the task's views of it."""
    enc = declared["encoder"]
    if described is None:
        encoder = {"name": enc["name"], "plugin": enc["plugin"], "failed_before_configuration": True}
    else:
        # The encoder names itself: a name the registry matched by prefix keeps its full form.
        encoder = {**described, **{k: v for k, v in enc.items() if k != "name"}}
    ds = declared["dataset"]
    return RunConfig(
        encoder=encoder,
        task=declared["task"],
        dataset={
            **{k: ds[k] for k in ("name", "version", "plugin", "plugin_version")},
            "fingerprint": dataset.fingerprint() if dataset is not None else None,
            **{k: ds[k] for k in ("root", "options")},
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
        # seed, limit, precision, repeats, compile: whatever else the plan declares
        **{k: v for k, v in declared.items() if k not in ("encoder", "task", "dataset")},
        batch_size=plan.opts.batch_size,
        device=plan.machine.text,
        workers=plan.opts.workers,  # type: ignore[arg-type]  # resolved in a plan for this machine
    )


def claim_fields(
    plan: Plan, encoder: str, encoder_spec: EncoderSpec, task: TaskSpec, config: RunConfig, loaded: Any | None
) -> dict[str, Any]:
    """The store's columns of one run, from its configuration (and the loaded encoder, when a
    run failed before its configuration held the encoder's description)."""
    return {
        "encoder": encoder,
        "encoder_plugin": encoder_spec.plugin,
        "family": getattr(loaded, "family", encoder_spec.family),
        "weights_id": getattr(loaded, "weights_id", "unknown"),
        "task": task.name,
        "task_plugin": task.plugin,
        "level": task.level,
        "dataset": config.dataset["name"],
        "dataset_fingerprint": config.dataset.get("fingerprint") or "",
        "config": config.as_dict(),
        "headline_metric": task.metric,
        "device": config.device,
        "versions": dict(plan.machine.versions),
        "seed": config.seed,
    }


def covers(config: Any, declared: Mapping[str, Any]) -> bool:
    """Whether a stored configuration holds every declared value (compared as stored: JSON)."""
    return _covers(config, json.loads(json.dumps(declared, default=str, sort_keys=True)))


def _covers(config: Any, declared: Mapping[str, Any]) -> bool:
    for key, want in declared.items():
        have = config.get(key) if isinstance(config, Mapping) else None
        if isinstance(want, dict):
            if not isinstance(have, Mapping) or not _covers(have, want):
                return False
        elif have != want:
            return False
    return True
