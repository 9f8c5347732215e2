"""Projection heads of the contrastive encoders, built to the shapes of the checkpoint's tensors.

The sizes come from the file (MoCo v3 768->4096->4096->256; DINO 768->2048->2048->256->65536;
iBOT the same to 8192), so a head is never invented: it exists only when the file holds one,
and every one of its tensors is loaded strictly.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from partbench.encoders.checkpoints import load_strict
from partbench.errors import CheckpointError

HEAD_KINDS = ("moco-projector", "dino-head")


class WeightNormLinear(nn.Module):
    """A bias-free linear layer stored as direction ``weight_v`` and per-row scale ``weight_g``.

    Equivalent to ``nn.utils.weight_norm(nn.Linear(i, o, bias=False))`` with the same key names,
    written out so that the weight is W = g * v / ||v|| row by row, in plain sight.
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DinoHead(nn.Module):
    """DINO / iBOT class-token head: MLP, L2-normalised bottleneck, weight-normalised last layer."""

    def __init__(self, dims: list[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Linear(a, b))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormLinear(dims[-1], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))


def _linear_indices(state: Mapping[str, torch.Tensor], prefix: str = "") -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)\.weight$")
    found = sorted(
        int(m.group(1)) for k, v in state.items() if (m := pattern.match(k)) is not None and v.dim() == 2
    )
    return found


def _moco_projector(state: Mapping[str, torch.Tensor], in_dim: int, source: str) -> nn.Module:
    # Layout: Linear at 0, 3, 6; BatchNorm at 1, 4, 7 (the last one without affine); ReLU at 2, 5.
    linears = _linear_indices(state)
    if not linears or linears != list(range(0, 3 * len(linears), 3)):
        raise CheckpointError(
            f"{source}: MoCo v3 projector layout not recognised (linear layers at {linears}, "
            "expected head.0, head.3, head.6)"
        )
    layers: list[nn.Module] = []
    dim = in_dim
    for n, i in enumerate(linears):
        out = state[f"{i}.weight"].shape[0]
        layers.append(nn.Linear(dim, out, bias=f"{i}.bias" in state))
        layers.append(nn.BatchNorm1d(out, affine=f"{i + 1}.weight" in state))
        if n < len(linears) - 1:
            layers.append(nn.ReLU())
        dim = out
    return nn.Sequential(*layers)


def _dino_head(state: dict[str, torch.Tensor], in_dim: int, source: str) -> nn.Module:
    linears = _linear_indices(state, "mlp.")
    if not linears or linears != list(range(0, 2 * len(linears), 2)):
        raise CheckpointError(
            f"{source}: DINO head layout not recognised (linear layers at mlp.{linears}, "
            "expected mlp.0, mlp.2, mlp.4 with GELU between)"
        )
    if "last_layer.weight_v" not in state:
        raise CheckpointError(f"{source}: DINO head has no last_layer.weight_v")
    dims = [in_dim] + [state[f"mlp.{i}.weight"].shape[0] for i in linears]
    return DinoHead(dims, state["last_layer.weight_v"].shape[0])


def _parametrized_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Checkpoints saved with torch.nn.utils.parametrizations.weight_norm name g and v this way.
    renames = {
        "last_layer.parametrizations.weight.original0": "last_layer.weight_g",
        "last_layer.parametrizations.weight.original1": "last_layer.weight_v",
    }
    return {renames.get(k, k): v for k, v in state.items()}


def build_head(
    kind: str,
    state: Mapping[str, torch.Tensor],
    in_dim: int,
    source: Path | str,
    drop: tuple[str, ...] = (),
) -> nn.Module:
    """The projection head ``kind`` shaped like ``state``, loaded from it strictly, in eval mode."""
    state = {k: v for k, v in state.items() if not any(k.startswith(p) for p in drop)}
    label = f"{source} (projection head)"
    if kind == "moco-projector":
        head = _moco_projector(state, in_dim, label)
    elif kind == "dino-head":
        state = _parametrized_weight_norm(state)
        head = _dino_head(state, in_dim, label)
    else:
        raise ValueError(f"unknown head kind {kind!r}; known: {HEAD_KINDS}")
    load_strict(head, state, label)
    return head.eval()
