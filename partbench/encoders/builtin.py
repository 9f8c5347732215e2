"""The built-in encoders, registered through the same hook as any plugin's."""

from __future__ import annotations

from collections.abc import Callable

from partbench.hookspecs import hookimpl
from partbench.specs import EncoderRequest, EncoderSpec


def _timm(request: EncoderRequest):
    from partbench.encoders.timm_adapter import load_timm

    return load_timm(request)


@hookimpl
def register_encoders(register: Callable[[EncoderSpec], None]) -> None:
    register(
        EncoderSpec(
            name="timm:",
            load=_timm,
            family="unknown",
            description="any timm model with stage maps (ViT, ResNet, ConvNeXt, Swin, ...): timm:<model>",
            weights_source="Hugging Face cache, or --weights",
        )
    )
    # The study's encoders from their official files; the table imports neither torch nor timm.
    from partbench.encoders.official import official_specs

    for spec in official_specs():
        register(spec)
    # The mini encoders pretrained on SynParts, shipped in partbench/weights, and the untrained
    # floor (mini-random, alias random-vit); no torch here either.
    from partbench.encoders.mini import mini_encoder_specs, random_vit_alias

    for spec in mini_encoder_specs():
        register(spec)
        if spec.name == "mini-random":
            register(random_vit_alias(spec))
