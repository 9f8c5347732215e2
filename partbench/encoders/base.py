"""The encoder interface: a batch of normalised images in; a pooled vector, the final feature map,
the prefix tokens (class token, registers) where there are any, an optional projection and the
feature maps of the stages asked for out.

An encoder declares what it really has: its stages (channels and stride of each, in the spirit
of timm's ``feature_info``), what its pooled vector is, how many registers it has, whether it
has a projection head. Nothing here is ViT-only, and this module imports no torch (only for type
checking), so that ``partbench.api`` and plugins stay light at import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOLED_KINDS = ("cls", "avgpool")


@dataclass(frozen=True)
class Stage:
    """One feature stage: where its map is read from, its width and its stride."""

    index: int  # 0-based position among the encoder's stages, shallow to deep
    name: str  # the module it is read from: "blocks.3", "stages.2", "layer4"
    channels: int
    stride: int  # input pixels per cell of this stage's map


@dataclass(init=False)
class EncoderOutput:
    pooled: torch.Tensor  # (B, D): class token after the final norm where there is one, else final's mean
    final: torch.Tensor  # (B, D, H, W): the final feature map after the final norm (ViT: patch tokens)
    prefix: torch.Tensor | None = None  # (B, P, D): class token and registers after the final norm
    projection: torch.Tensor | None = None  # (B, P'): the projection head on the pooled vector
    stages: dict[int, torch.Tensor] = field(default_factory=dict)  # stage index -> (B, C, h, w), pre-norm

    def __init__(
        self,
        pooled: torch.Tensor | None = None,
        final: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
        projection: torch.Tensor | None = None,
        stages: dict[int, torch.Tensor] | None = None,
        **api1: Any,
    ) -> None:
        # Plugin API 1's keywords (cls, patch_tokens, grid, blocks: token lists and 1-based
        # blocks) are what an encoder written for it builds; they become the maps of API 2,
        # block b being stage b - 1 (partbench.api_versions derives those stages).
        if api1:
            unknown = set(api1) - {"cls", "patch_tokens", "grid", "blocks"}
            if unknown or pooled is not None or final is not None or stages is not None:
                raise TypeError(
                    f"EncoderOutput takes pooled, final, prefix, projection, stages; got {sorted(api1)}"
                )
            h, w = api1["grid"]
            pooled = api1["cls"]
            final = _token_map(api1["patch_tokens"], h, w)
            stages = {b - 1: _token_map(t, h, w) for b, t in (api1.get("blocks") or {}).items()}
        if pooled is None or final is None:
            raise TypeError("EncoderOutput needs pooled and final")
        self.pooled, self.final, self.prefix, self.projection = pooled, final, prefix, projection
        self.stages = {} if stages is None else stages

    @property
    def embedding(self) -> torch.Tensor:
        """The study's 'embedding' feature: the mean of the final map over its cells."""
        return self.final.mean(dim=(-2, -1))

    @property
    def grid(self) -> tuple[int, int]:
        return (int(self.final.shape[-2]), int(self.final.shape[-1]))


def _token_map(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(B, h * w, D) tokens as a (B, D, h, w) map."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


class Encoder:
    """What every encoder declares and does. Subclasses set the attributes and implement ``forward``."""

    name: str
    family: str
    weights_id: str  # "sha256:<hex>" of the weights file, "random-init:seed=<n>", or what says where from
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: int
    stages: tuple[Stage, ...]  # shallow to deep; the last is where ``final`` comes from
    pooled_kind: str  # "cls" or "avgpool": what ``pooled`` is
    num_registers: int = 0
    module: nn.Module  # everything with parameters, so that .to() and .eval() reach it
    version: str = "1"  # bump when the wrapper changes its features; enters the configuration hash

    @property
    def has_projection(self) -> bool:
        return False

    def forward(self, images: torch.Tensor, stages: Sequence[int] = ()) -> EncoderOutput:
        raise NotImplementedError

    def stage_at(self, fraction: float) -> int:
        """The stage at ``fraction`` of the depth: the study's blocks 4, 6, 8, 12 of 12 are
        fractions 1/3, 1/2, 2/3, 1, giving stages 3, 5, 7, 11 of a 12-block ViT."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"a stage fraction is between 0 and 1, not {fraction}")
        return max(0, round(fraction * len(self.stages)) - 1)

    def check_stages(self, stages: Sequence[int]) -> None:
        """A ValueError naming the valid range when ``stages`` asks for one the encoder lacks."""
        bad = [s for s in stages if not 0 <= s < len(self.stages)]
        if bad:
            raise ValueError(f"{self.name} has stages 0..{len(self.stages) - 1}; asked for {bad}")

    def at_input_size(self, size: int) -> Encoder:
        """A copy of this encoder that runs at ``size`` x ``size`` pixels (its position
        embeddings resampled), for segmentation at another resolution. This one has no way to."""
        if size == self.input_size:
            return self
        raise ValueError(f"{self.name} cannot run at {size} px: it has no way to change its input size")

    def to(self, device: torch.device | str) -> Encoder:
        self.module.to(device)
        return self

    def eval(self) -> Encoder:
        self.module.eval()
        return self

    def describe(self) -> dict[str, Any]:
        """Everything about the encoder that changes a feature, for the run record."""
        return {
            "name": self.name,
            "family": self.family,
            "weights_id": self.weights_id,
            "mean": list(self.mean),
            "std": list(self.std),
            "input_size": self.input_size,
            "stages": [[s.name, s.channels, s.stride] for s in self.stages],
            "pooled_kind": self.pooled_kind,
            "num_registers": self.num_registers,
            "has_projection": self.has_projection,
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "version": self.version,
        }
