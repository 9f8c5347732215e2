"""The built-in encoders, registered through the same hook as any plugin's."""

from __future__ import annotations

from collections.abc import Callable

from partbench.hookspecs import hookimpl
from partbench.specs import EncoderRequest, EncoderSpec


def _random_vit(request: EncoderRequest):
    from partbench.encoders.vit import load_mini_vit

    return load_mini_vit(request.name, "none", weights=request.weights, seed=request.seed)


def _timm(request: EncoderRequest):
    from partbench.encoders.timm_adapter import load_timm

    return load_timm(request)


@hookimpl
def register_encoders(register: Callable[[EncoderSpec], None]) -> None:
    register(
        EncoderSpec(
            name="random-vit",
            load=_random_vit,
            family="none",
            description="tiny ViT (64 px, patch 8, width 128, 6 blocks), random init: the floor",
            weights_source="random init from --seed",
        )
    )
    register(
        EncoderSpec(
            name="timm:",
            load=_timm,
            family="unknown",
            description="any timm model: timm:<model name>[.<pretrained tag>]",
            weights_source="Hugging Face cache, or --weights",
        )
    )
    # The study's encoders from their official files; the table imports neither torch nor timm.
    from partbench.encoders.official import official_specs

    for spec in official_specs():
        register(spec)
    # The mini encoders pretrained on SynParts, shipped in partbench/weights; no torch here either.
    from partbench.encoders.mini import mini_encoder_specs

    for spec in mini_encoder_specs():
        register(spec)
