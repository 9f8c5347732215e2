"""Any timm model behind the encoder interface, through timm's own ``feature_info`` and
``forward_intermediates``; and ``timm:<model>``, pretrained from the Hugging Face cache or from
``--weights``.

The stages are the model's ``feature_info`` entries (ViT: the blocks at the patch stride; ResNet:
the stem and layer1-4; ConvNeXt and Swin: their four stages). ``forward_intermediates`` gives the
stage maps (before any final norm) and the final features in one pass:

* token models (ViT, DeiT, EVA, BEiT, ...): the final tokens after the final norm; the tokens
  beyond the last stage's grid are the prefix (class token, registers, a distillation token),
  the rest is the final map. A model that pools with ``fc_norm`` and has an identity ``norm``
  (EVA-02, average-pooled ViTs) gets ``fc_norm`` applied per token instead.
* map models (CNNs, Swin): the final map, NHWC turned NCHW, after the model's final norm where it
  has one (Swin's ``norm``; ConvNeXt's head norm applied per cell).

``pooled`` is the class token where the model has one, else the mean of the final map.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from partbench.encoders.base import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderOutput, Stage
from partbench.encoders.checkpoints import load_strict, read_checkpoint, sha256_file
from partbench.errors import CheckpointError, PartbenchError

if TYPE_CHECKING:
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


class _Bundle(nn.Module):
    def __init__(self, backbone: nn.Module, head: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.head = head


def _is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _stages_of(model: nn.Module, name: str) -> tuple[Stage, ...]:
    """The model's feature_info as stages; a PartbenchError when it cannot give stage maps."""
    what = type(model).__name__
    fwi = getattr(model, "forward_intermediates", None)
    info = getattr(model, "feature_info", None)
    if fwi is None or not info:
        missing = "forward_intermediates" if fwi is None else "feature_info"
        raise PartbenchError(
            f"{name}: timm's {what} has no {missing}, so partbench cannot read its stage maps; "
            "choose another model or wrap it in a plugin encoder"
        )
    params = inspect.signature(fwi).parameters
    if not {"indices", "output_fmt"} <= set(params):
        raise PartbenchError(f"{name}: {what}.forward_intermediates takes no indices / output_fmt")
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    return tuple(
        Stage(index=i, name=str(f["module"]), channels=int(f["num_chs"]), stride=int(f["reduction"]))
        for i, f in enumerate(entries)
    )


def _input_size(model: nn.Module) -> int:
    patch_embed = getattr(model, "patch_embed", None)
    img = getattr(patch_embed, "img_size", None)
    if img is not None:
        return int(img[0] if isinstance(img, (tuple, list)) else img)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("input_size")
    return int(size[-1]) if size else 224


class TimmEncoder(Encoder):
    """A timm model (any with ``feature_info`` and ``forward_intermediates``) with an optional
    projection head on its pooled vector."""

    version = "2"  # 1: ViT-only wrapper (blocks, patch tokens); 2: stages, final map, prefix

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str,
        family: str,
        weights_id: str,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        projection: nn.Module | None = None,
        input_size: int | None = None,
    ):
        self.stages = _stages_of(model, name)
        self.module = _Bundle(model, projection)
        self.name, self.family, self.weights_id = name, family, weights_id
        self.mean, self.std = tuple(mean), tuple(std)  # type: ignore[assignment]
        self.input_size = int(input_size) if input_size else _input_size(model)
        self.has_cls = getattr(model, "cls_token", None) is not None
        self.pooled_kind = "cls" if self.has_cls else "avgpool"
        reg = getattr(model, "reg_token", None)  # ViT and EVA keep registers here, after the class token
        self.num_registers = int(reg.shape[1]) if reg is not None else 0
        self.channels_last = getattr(model, "output_fmt", "NCHW") == "NHWC"
        # The final norm timm's forward_intermediates leaves out (see the module docstring).
        plain_norm = _is_identity(getattr(model, "norm", None))
        self._token_norm = getattr(model, "fc_norm", None) if plain_norm else None
        head_norm = getattr(getattr(model, "head", None), "norm", None)
        self._map_norm = None if _is_identity(head_norm) else head_norm

    @property
    def model(self) -> nn.Module:
        return self.module.backbone

    @property
    def has_projection(self) -> bool:
        return self.module.head is not None

    @property
    def embed_dim(self) -> int:
        """The width of the final map (and of ``pooled``)."""
        return int(getattr(self.model, "num_features", self.stages[-1].channels))

    def at_input_size(self, size: int) -> TimmEncoder:
        """A copy at ``size`` px through timm's own ``set_input_size``, which resamples absolute
        position embeddings bicubically (a ViT-B/16 at 512 reads a 32 x 32 grid); a model
        built with ``dynamic_img_size`` resamples them on every forward and needs only the
        recorded size changed. The copy leaves this encoder's weights untouched."""
        if size == self.input_size:
            return self
        clone = copy.copy(self)
        clone.module = copy.deepcopy(self.module)
        model = clone.model
        if not getattr(model, "dynamic_img_size", False):
            resize = getattr(model, "set_input_size", None)
            if resize is None:
                raise PartbenchError(
                    f"{self.name}: timm's {type(model).__name__} has no set_input_size; "
                    f"it cannot run at {size} px"
                )
            try:
                resize(img_size=(size, size))
            except Exception as exc:  # whatever timm raises for an input size the model cannot take
                raise PartbenchError(
                    f"{self.name}: timm could not set the input size to {size} px "
                    f"({type(exc).__name__}: {exc})"
                ) from exc
        clone.input_size = size
        return clone

    def _fail(self, what: str) -> PartbenchError:
        return PartbenchError(
            f"{self.name}: timm's {type(self.model).__name__}.forward_intermediates {what}; "
            "partbench cannot read its stage maps"
        )

    def _as_nchw(self, x: Any, stage: Stage) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            kind = type(x).__name__ if not isinstance(x, torch.Tensor) else f"a {x.dim()}-d tensor"
            raise self._fail(f"gave {kind} for stage {stage.name}, not a B x C x H x W map")
        if x.shape[1] == stage.channels:
            return x
        if x.shape[-1] == stage.channels:  # channels-last
            return x.permute(0, 3, 1, 2)
        raise self._fail(f"gave {tuple(x.shape)} for stage {stage.name} of {stage.channels} channels")

    def _norm_map(self, x: torch.Tensor) -> torch.Tensor:
        norm = self._map_norm
        if norm is None:
            return x
        if isinstance(norm, nn.LayerNorm) and not type(norm).__name__.endswith("2d"):
            return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)  # a channels-last LayerNorm
        return norm(x)

    def forward(self, images: torch.Tensor, stages: Sequence[int] = ()) -> EncoderOutput:
        self.check_stages(stages)
        last = len(self.stages) - 1
        # The last stage always comes along: its grid says where a token model's prefix ends.
        wanted = sorted({*stages, last})
        out = self.model.forward_intermediates(images, indices=wanted, norm=False, output_fmt="NCHW")
        if not (isinstance(out, tuple) and len(out) == 2):
            raise self._fail("did not return (final, intermediates)")
        final, inter = out
        if not isinstance(inter, (list, tuple)) or len(inter) != len(wanted):
            got = len(inter) if isinstance(inter, (list, tuple)) else type(inter).__name__
            raise self._fail(f"gave {got} maps for stages {wanted}")
        maps = {i: self._as_nchw(x, self.stages[i]) for i, x in zip(wanted, inter, strict=True)}
        h, w = maps[last].shape[-2:]
        if not isinstance(final, torch.Tensor) or final.dim() not in (3, 4):
            raise self._fail("gave final features that are not a token sequence or a map")
        prefix = None
        if final.dim() == 3:  # tokens: B x (prefix + h*w) x D, after the final norm
            if not _is_identity(self._token_norm):
                final = self._token_norm(final)
            n_prefix = final.shape[1] - h * w
            if n_prefix < 0:
                raise self._fail(f"gave {final.shape[1]} final tokens for a {h} x {w} grid")
            patches = final[:, n_prefix:]
            if n_prefix:
                prefix = final[:, :n_prefix]
            fmap = patches.transpose(1, 2).reshape(final.shape[0], final.shape[2], h, w)
        else:
            fmap = final.permute(0, 3, 1, 2) if self.channels_last else final
            fmap = self._norm_map(fmap)
        if self.pooled_kind == "cls":
            if prefix is None:
                raise self._fail("gave no class token")
            pooled = prefix[:, 0]
        else:
            pooled = fmap.mean(dim=(-2, -1))
        head = self.module.head
        return EncoderOutput(
            pooled=pooled,
            final=fmap,
            prefix=prefix,
            projection=head(pooled) if head is not None else None,
            stages={i: maps[i] for i in stages},
        )


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    names = cfg.get("classifier") or "head"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def load_timm(request: EncoderRequest, *, model_kwargs: dict[str, Any] | None = None) -> TimmEncoder:
    """``timm:<model>``; ``model_kwargs`` are for tests that build a small configuration."""
    import timm

    model_name = request.variant or ""
    if not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name.split(".")[0], timm.list_models(), n=5, cutoff=0.6)
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise PartbenchError(f"timm has no model '{model_name}'{hint}")
    kwargs: dict[str, Any] = {"num_classes": 0, **(model_kwargs or {})}
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
        _stages_of(model, request.name)  # refuse a model without stage maps before reading a file
        state = read_checkpoint(request.weights)
        if isinstance(state, dict):
            for key in ("model", "state_dict"):
                if isinstance(state.get(key), dict):
                    state = state[key]
                    break
        if not isinstance(state, dict):
            raise CheckpointError(f"{request.weights}: expected a state dict")
        # The classifier is not part of the encoder (a ConvNeXt's head norm is, and stays).
        own = set(model.state_dict())
        drop = _classifier_prefixes(model)
        state = {k: v for k, v in state.items() if k in own or not k.startswith(drop)}
        load_strict(model, state, request.weights)
        weights_id = f"sha256:{sha256_file(request.weights)}"
        cfg = model.pretrained_cfg
    encoder = TimmEncoder(
        model.eval(),
        name=request.name,
        family=family_of(model_name),
        weights_id=weights_id,
        mean=cfg.get("mean", IMAGENET_MEAN),
        std=cfg.get("std", IMAGENET_STD),
    )
    check_forward(encoder)
    return encoder


def check_forward(encoder: TimmEncoder) -> None:
    """One forward of a blank image with every stage, so that a model whose outputs partbench
    cannot read fails here, with its name, before any run starts."""
    size = encoder.input_size
    try:
        with torch.inference_mode():
            encoder.forward(torch.zeros(1, 3, size, size), stages=range(len(encoder.stages)))
    except PartbenchError:
        raise
    except Exception as exc:  # whatever timm raises: the model cannot run as partbench runs it
        reason = str(exc).splitlines()[0] if str(exc) else ""
        raise PartbenchError(
            f"{encoder.name}: a test forward at {size} px failed ({type(exc).__name__}: {reason})"
        ) from exc
