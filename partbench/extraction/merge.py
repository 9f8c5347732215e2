"""Views merged into passes: one encoder pass over one split and transform serves every view
that reads it, with the union of their outputs, stages and label maps."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from partbench.datasets.base import Dataset
from partbench.errors import PartbenchError
from partbench.features import FULL, MASK_SOURCES, VIEW_OUTPUTS, View


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
