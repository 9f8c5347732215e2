"""Features for an encoder's jobs: the passes their views merge into, served whole by the
cache where it holds them, cut out of a larger split's pass where one holds them, and encoded
(one streaming pass per split) for the rest.

A pass that breaks, or an output it could not give, is reported by its key: the runs reading
it fail, the rest go on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from partbench.cache import Entry, FeatureCache
from partbench.distributed import World
from partbench.runner.config import RunConfig
from partbench.runner.plan import Plan
from partbench.runner.record import describe_error
from partbench.subsets import cut

# A pass cut from a larger one: (the larger pass's key when this run encodes it, else None;
# its entry; where the smaller split's samples sit in it).
Cut = tuple[tuple | None, Entry, list[int]]

# The pooled outputs: one vector an item each, cheap beside the encoder's forward pass.
POOLED = frozenset({"cls", "embedding", "projection"})


@dataclass
class Supply:
    """What the passes gave: pass key -> (entry, pass, timing) for each served pass; the
    passes that broke (key -> why) and the outputs a pass could not give (key -> output -> why)."""

    served: dict[tuple, tuple[Entry, Any, dict[str, Any]]] = field(default_factory=dict)
    broken: dict[tuple, str] = field(default_factory=dict)
    bad_outputs: dict[tuple, dict[str, str]] = field(default_factory=dict)

    def why_not(self, views: Sequence[Any], dataset: Any) -> str | None:
        """Why a job reading ``views`` cannot be scored, or None."""
        why = None
        for v in views:
            key = v.merge_key(dataset)
            why = why or self.broken.get(key)
            errs = self.bad_outputs.get(key, {})
            why = why or next((errs[o] for o in sorted(v.outputs) if o in errs), None)
        return why


class Passes:
    """The passes of one encoder's jobs. ``config`` is any of its jobs' configurations: what a
    feature depends on is common to them all."""

    def __init__(
        self,
        plan: Plan,
        dataset: Any,
        encoder: str,
        config: RunConfig,
        views: Sequence[Any],
        cache: FeatureCache,
        world: World,
        who: str,
        progress: Any = None,
    ):
        from partbench.extraction import merge_views

        self.plan, self.dataset, self.name, self.config, self.cache = plan, dataset, encoder, config, cache
        self.world, self.who, self.progress = world, who, progress
        self.passes = merge_views(list(views), dataset)
        self.entries = {key: self.entry_for(p) for key, p in self.passes.items()}
        # What an entry serves: checked, a bad entry set aside (a forecast looks without moving it).
        self.have: Callable[[Entry], set[str]] = lambda entry: set(entry.arrays())

    def entry_for(self, p: Any) -> Entry:
        return self.cache.entry(self.config.feature_key(p.split, p.inputs, p.transform))

    def _info(self, p: Any) -> dict[str, Any]:
        """What `partbench cache info` shows of an entry."""
        return {
            "encoder": self.name,
            "weights_id": self.config.encoder.get("weights_id"),
            "dataset": self.plan.dataset.name,
            "split": p.split,
            "inputs": p.inputs,
            "transform": p.transform,
            "precision": self.plan.opts.precision,
            "limit": self.plan.opts.limit,
        }

    def schedule(self) -> tuple[list[tuple], dict[tuple, Any], dict[tuple, Cut]]:
        """What ``supply`` does, decided before anything runs: the passes the cache serves
        whole, what each other pass lacks (key -> the pass's missing part, a larger pass
        folding in a smaller one's outputs), and the passes cut from a larger one."""
        cached: list[tuple] = []
        todos: dict[tuple, Any] = {}
        for key, p in self.passes.items():
            todo = _missing(p, self.have(self.entries[key]))
            if todo is None:
                cached.append(key)
            else:
                todos[key] = todo
        return cached, todos, self._cuts(todos)

    def encoded(self, key: tuple, todo: Any) -> Any:
        """The pass as it is encoded: a pass that computes one pooled vector computes them all
        for a few more floats an item, so a later run that picks another (-o feature=...) runs
        no encoder."""
        if not todo.outputs & POOLED:
            return todo
        p, have = self.passes[key], self.have(self.entries[key])
        pooled = POOLED if self.config.encoder.get("has_projection") else POOLED - {"projection"}
        extra = frozenset(o for o in pooled if p.array_name(o) not in have)
        return dataclasses.replace(todo, outputs=todo.outputs | extra)

    def cut_outputs(self, key: tuple, todo: Any, held: set[str]) -> Any:
        """The part of a pass cut from a larger one that holds ``held``: as for an encoded
        pass, every pooled output there is comes along."""
        if not todo.outputs & POOLED:
            return todo
        have = self.have(self.entries[key])
        extra = frozenset(o for o in POOLED if o in held and o not in have)
        return dataclasses.replace(todo, outputs=todo.outputs | extra)

    def supply(self, encoder: Any, compiled: Any) -> Supply:
        """Serve every pass: from the cache, by encoding, or (rank 0) cut from a larger one."""
        out = Supply()
        cached, todos, cuts = self.schedule()
        for key in cached:
            out.served[key] = (self.entries[key], self.passes[key], {"encoder_passes": 0, "cached": True})
        for key, todo in todos.items():
            if key not in cuts:
                self._encode(key, todo, encoder, compiled, out)
        if self.world.main:  # cutting, scoring and storing are rank 0's
            for key, how in cuts.items():
                self._cut(key, todos[key], how, out)
        return out

    def _encode(self, key: tuple, todo: Any, encoder: Any, compiled: Any, out: Supply) -> None:
        from partbench.extraction import run_pass

        p, entry, opts = self.passes[key], self.entries[key], self.plan.opts
        todo = self.encoded(key, todo)
        try:
            result = run_pass(
                encoder,
                self.dataset,
                todo,
                entry,
                device=self.plan.machine.device,
                batch_size=opts.batch_size,
                precision=opts.precision,
                limit=opts.limit,
                workers=opts.workers,
                compiled=compiled,
                who=self.who,
                progress=self.progress,
                world=self.world,
            )
        except Exception as exc:
            out.broken[key] = describe_error(exc)
            return
        entry.commit({}, self._info(p))
        if opts.compile and result.timing.get("warmup_seconds") is not None:
            # The first call builds the graph: its time is the compile time, kept apart.
            result.timing["compile_seconds"] = result.timing["warmup_seconds"]
        # Names the pass, so that runs sharing it can be told apart from runs that repeat it.
        result.timing["pass"] = f"{entry.folder.name}:{','.join(sorted(todo.outputs))}"
        out.bad_outputs[key] = result.errors
        out.served[key] = (entry, p, result.timing)

    def _cut(self, key: tuple, todo: Any, how: Cut, out: Supply) -> None:
        parent_key, parent, positions = how
        why = out.broken.get(parent_key) if parent_key is not None else None
        if why is not None:
            out.broken[key] = why  # the same images failed in the larger pass
            return
        p, entry = self.passes[key], self.entries[key]
        todo = self.cut_outputs(key, todo, self.have(parent))
        # An output the larger pass could not give fails here too; the rest are cut.
        errors = {o: e for o, e in out.bad_outputs.get(parent_key, {}).items() if o in todo.outputs}
        try:
            timing = cut(
                parent,
                entry,
                [p.array_name(o) for o in sorted(todo.outputs) if o not in errors],
                [p.mask_name(s, r) for s, r in todo.masks],
                positions,
                self._info(p),
                f"{self.dataset.name}: the {p.split} split gave no {p.inputs} to evaluate",
            )
        except Exception as exc:
            out.broken[key] = describe_error(exc)
            return
        out.bad_outputs[key] = errors
        out.served[key] = (entry, p, timing)

    def _cuts(self, todos: dict[tuple, Any]) -> dict[tuple, Cut]:
        """The passes to cut out of a larger one instead of encoding: pass key -> (the larger
        pass's key when this run encodes it, else None; its entry; where the smaller split's
        samples sit in it). A larger pass that this run encodes takes on the smaller one's
        outputs, so those images are encoded once; one that is only cached must already hold
        every array the smaller pass lacks."""
        data, limit = self.dataset, self.plan.opts.limit
        fold_maps = folds_maps(self.plan.machine.device)
        cuts = {}
        for key, todo in todos.items():
            p = self.passes[key]
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
                parent = self.entry_for(dataclasses.replace(p, split=split))
                will = self.have(parent)
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
