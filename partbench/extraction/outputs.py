"""What an encoder's forward gives a pass: each output asked for, checked against the encoder's
interface (a bad one names the encoder and the output), and stage maps brought to one grid."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from partbench.errors import PartbenchError
from partbench.extraction.merge import Pass


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


def trim(out: Any, n: int) -> Any:
    """The first n items of every tensor in an EncoderOutput (after a padded batch)."""

    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v[:n]
        if isinstance(v, dict):
            return {k: cut(x) for k, x in v.items()}
        return v

    if not dataclasses.is_dataclass(out):
        return out
    return dataclasses.replace(out, **{f.name: cut(getattr(out, f.name)) for f in dataclasses.fields(out)})
