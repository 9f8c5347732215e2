"""Projection heads of the contrastive recipes, rebuildable from their saved weights alone
(so that the encoder registry can attach them without knowing training settings)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


class MoCoMLP(nn.Module):
    """MoCo v3's MLP: bias-free Linear layers, each but the last followed by BatchNorm and
    ReLU; the last followed by BatchNorm without affine parameters."""

    def __init__(self, dims: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b, bias=False))
            if i < len(dims) - 2:
                layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
            else:
                layers.append(nn.BatchNorm1d(b, affine=False))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> MoCoMLP:
        linears = sorted(
            (int(k.split(".")[1]), v)
            for k, v in state.items()
            if k.startswith("layers.") and k.endswith(".weight") and v.ndim == 2
        )
        dims = [linears[0][1].shape[1]] + [w.shape[0] for _, w in linears]
        head = cls(dims)
        head.load_state_dict(dict(state), strict=True)
        return head


class DINOHead(nn.Module):
    """DINO's head: a 3-layer GELU MLP to a bottleneck, L2 normalisation, then a linear layer
    onto ``out_dim`` prototypes whose weight is normalised per prototype with the norm fixed
    at 1 (DINO's ``norm_last_layer``). iBOT adds a second prototype layer for patch tokens."""

    def __init__(self, in_dim: int, hidden: int, bottleneck: int, out_dim: int, patch_out: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        self.last = nn.Linear(bottleneck, out_dim, bias=False)
        self.last_patch = nn.Linear(bottleneck, patch_out, bias=False) if patch_out else None
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def _project(self, x: torch.Tensor, last: nn.Linear) -> torch.Tensor:
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(last.weight, dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._project(x, self.last)

    def forward_patches(self, x: torch.Tensor) -> torch.Tensor:
        assert self.last_patch is not None
        return self._project(x, self.last_patch)

    def class_token_state(self) -> dict[str, torch.Tensor]:
        """What is shipped: the path applied to the class token (the MLP and ``last``)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("last_patch.")}

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor]) -> DINOHead:
        head = cls(
            in_dim=state["mlp.0.weight"].shape[1],
            hidden=state["mlp.0.weight"].shape[0],
            bottleneck=state["mlp.4.weight"].shape[0],
            out_dim=state["last.weight"].shape[0],
            patch_out=state["last_patch.weight"].shape[0] if "last_patch.weight" in state else 0,
        )
        head.load_state_dict(dict(state), strict=True)
        return head


def head_from_state(kind: str, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """Rebuild a shipped head; ``kind`` is 'mocov3' or 'dino' (iBOT's has DINO's shape)."""
    if kind == "mocov3":
        return MoCoMLP.from_state(state)
    if kind == "dino":
        return DINOHead.from_state(state)
    raise ValueError(f"unknown head kind '{kind}'")
