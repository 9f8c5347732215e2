"""Projection heads: the one module for both the official checkpoints' heads and the mini
recipes' heads (``partbench.pretrain`` trains these same classes).

Loaded from a file, a head is built to the shapes of the file's tensors (MoCo v3
768->4096->4096->256; DINO 768->2048->2048->256->65536; iBOT the same to 8192), so a head is never
invented: it exists only when the file holds one, and every one of its tensors is loaded strictly.
Key names are the official ones: MoCo v3's ``0.weight``, ``1.running_mean``, ...; DINO's
``mlp.0.weight``, ..., ``last_layer.weight_g`` / ``last_layer.weight_v``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
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
    written out so that the weight is W = g * v / ||v|| row by row, in plain sight. DINO's
    ``norm_last_layer`` is ``fixed_norm``: g stays at 1, a buffer that neither the optimiser nor
    an EMA teacher update touches.
    """

    weight_g: torch.Tensor

    def __init__(self, in_features: int, out_features: int, *, fixed_norm: bool = False):
        super().__init__()
        if fixed_norm:
            self.register_buffer("weight_g", torch.ones(out_features, 1))
        else:
            self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        # As nn.Linear initialises its weight (and drawing the same random numbers, so that a
        # recipe seeded before and after heads were unified builds the same head).
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DinoHead(nn.Module):
    """DINO / iBOT class-token head: a GELU MLP to a bottleneck, L2 normalisation, then a
    weight-normalised layer onto the prototypes. iBOT's patch-token prototypes are a second such
    layer, ``last_layer2`` (trained by the iBOT recipe, never a projection)."""

    def __init__(self, dims: Sequence[int], out_dim: int, *, patch_out: int = 0, fixed_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(dims)):
            if i:
                layers.append(nn.GELU())
            layers.append(nn.Linear(a, b))
        self.mlp = nn.Sequential(*layers)
        self.last_layer = WeightNormLinear(dims[-1], out_dim, fixed_norm=fixed_norm)
        self.last_layer2 = WeightNormLinear(dims[-1], patch_out, fixed_norm=fixed_norm) if patch_out else None

    @classmethod
    def for_training(
        cls, in_dim: int, hidden: int, bottleneck: int, out_dim: int, patch_out: int = 0
    ) -> DinoHead:
        """DINO's head as its recipe builds it: 3 layers, truncated-normal init (std 0.02), zero
        biases, prototype norms fixed at 1 (``norm_last_layer``)."""
        head = cls([in_dim, hidden, hidden, bottleneck], out_dim, patch_out=patch_out, fixed_norm=True)
        head.apply(_trunc_normal_init)
        return head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1, p=2))

    def forward_patches(self, x: torch.Tensor) -> torch.Tensor:
        if self.last_layer2 is None:
            raise ValueError("this head has no patch-token prototypes (patch_out=0)")
        return self.last_layer2(F.normalize(self.mlp(x), dim=-1, p=2))

    def class_token_state(self) -> dict[str, torch.Tensor]:
        """What a projection is: the MLP and ``last_layer``, without the patch-token layer."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("last_layer2.")}


def _trunc_normal_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, WeightNormLinear):
        nn.init.trunc_normal_(m.weight_v, std=0.02)


class MocoMLP(nn.Sequential):
    """MoCo v3's MLP (projector and predictor): Linear layers, each but the last followed by
    BatchNorm and ReLU; the last followed by BatchNorm without affine parameters. Linear layers
    are bias-free, as in MoCo v3, unless ``bias``."""

    def __init__(self, dims: Sequence[int], *, bias: bool = False, last_affine: bool = False):
        layers: list[nn.Module] = []
        pairs = list(itertools.pairwise(dims))
        for i, (a, b) in enumerate(pairs):
            last = i == len(pairs) - 1
            layers.append(nn.Linear(a, b, bias=bias))
            layers.append(nn.BatchNorm1d(b, affine=last_affine if last else True))
            if not last:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


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
    dims = [in_dim] + [state[f"{i}.weight"].shape[0] for i in linears]
    return MocoMLP(dims, bias="0.bias" in state, last_affine=f"{linears[-1] + 1}.weight" in state)


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
