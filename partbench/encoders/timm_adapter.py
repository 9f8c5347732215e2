"""``timm:<model>``: any timm model, pretrained from the Hugging Face cache or from --weights."""

from __future__ import annotations

from partbench.encoders.base import TimmEncoder
from partbench.encoders.checkpoints import load_strict, read_checkpoint, sha256_file
from partbench.errors import CheckpointError, PartbenchError
from partbench.specs import EncoderRequest

# The training behind a timm pretrained tag, where the tag says it.
_TAG_FAMILIES = (
    ("dinov2", "both"),
    ("ibot", "both"),
    ("dino", "contrastive"),
    ("mocov3", "contrastive"),
    ("mae", "masked-image-modeling"),
    ("beit", "masked-image-modeling"),
    ("in1k", "supervised"),
    ("in21k", "supervised"),
    ("in22k", "supervised"),
    ("augreg", "supervised"),
)


def family_of(model_name: str) -> str:
    tag = model_name.lower()
    for needle, family in _TAG_FAMILIES:
        if needle in tag:
            return family
    return "unknown"


def load_timm(request: EncoderRequest) -> TimmEncoder:
    import timm

    model_name = request.variant or ""
    if not timm.is_model(model_name):
        close = timm.list_models(f"*{model_name.split('.')[0][:12]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise PartbenchError(f"timm has no model '{model_name}'{hint}")
    kwargs = dict(num_classes=0, global_pool="token")
    if request.weights is None:
        try:
            model = timm.create_model(model_name, pretrained=True, **kwargs)
        except Exception as exc:  # offline and not cached, or no pretrained weights at all
            raise PartbenchError(
                f"timm:{model_name}: pretrained weights unavailable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); put them in the Hugging Face "
                "cache or pass --weights FILE"
            ) from exc
        cfg = model.pretrained_cfg
        source = cfg.get("hf_hub_id") or cfg.get("url") or model_name
        weights_id = f"timm:{source}"
    else:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
        state = read_checkpoint(request.weights)
        if isinstance(state, dict):
            for key in ("model", "state_dict"):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
        if not isinstance(state, dict):
            raise CheckpointError(f"{request.weights}: expected a state dict")
        # The classifier is not part of the encoder.
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        load_strict(model, state, request.weights)
        weights_id = f"sha256:{sha256_file(request.weights)}"
        cfg = model.pretrained_cfg
    return TimmEncoder(
        model.eval(),
        name=request.name,
        family=family_of(model_name),
        weights_id=weights_id,
        mean=cfg.get("mean", (0.485, 0.456, 0.406)),
        std=cfg.get("std", (0.229, 0.224, 0.225)),
    )
