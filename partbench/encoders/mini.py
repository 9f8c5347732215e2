"""The mini encoders: the mini ViT pretrained on SynParts with each family the study compares.

Weights ship inside the package (partbench/weights, written by ``partbench.pretrain.ship``);
``--weights PATH`` replaces them. This module imports no torch, so that listing encoders
stays fast; the loaders import it when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from partbench.specs import EncoderRequest, EncoderSpec

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
HEAD_PREFIX = "head."


@dataclass(frozen=True)
class Mini:
    method: str
    family: str
    head_kind: str | None  # how partbench.pretrain.heads rebuilds the projection head
    description: str


MINI: dict[str, Mini] = {
    "mini-supervised": Mini(
        "supervised",
        "supervised",
        None,
        "mini ViT, object-class cross-entropy on SynParts (DeiT role)",
    ),
    "mini-mocov3": Mini(
        "mocov3",
        "contrastive",
        "mocov3",
        "mini ViT, MoCo v3 on SynParts; projection: 256-d projector",
    ),
    "mini-dino": Mini(
        "dino", "contrastive", "dino", "mini ViT, DINO teacher on SynParts; projection: DINO head"
    ),
    "mini-mae": Mini("mae", "masked-image-modeling", None, "mini ViT, MAE encoder on SynParts"),
    "mini-ibot": Mini("ibot", "both", "dino", "mini ViT, iBOT teacher on SynParts; projection: iBOT head"),
}


def shipped_weights(method: str) -> Path:
    return WEIGHTS_DIR / f"mini-{method}.safetensors"


def load_mini(request: EncoderRequest, mini: Mini):
    """The mini ViT with the shipped (or ``--weights``) backbone and, where the file has
    ``head.*`` keys, the projection head rebuilt from them."""
    from partbench.encoders.base import TimmEncoder
    from partbench.encoders.checkpoints import load_strict, read_checkpoint, sha256_file
    from partbench.encoders.vit import build_mini_vit
    from partbench.errors import CheckpointError

    path = Path(request.weights) if request.weights is not None else shipped_weights(mini.method)
    if request.weights is None and not path.is_file():
        raise CheckpointError(
            f"{path}: the shipped weights of '{request.name}' are missing; rebuild them with "
            f"`python -m partbench.pretrain.ship --method {mini.method}`"
        )
    state = read_checkpoint(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    head_state = {k[len(HEAD_PREFIX) :]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
    backbone_state = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    model = build_mini_vit(request.seed)
    load_strict(model, backbone_state, path)
    projection = None
    if head_state:
        from partbench.pretrain.heads import head_from_state

        if mini.head_kind is None:
            raise CheckpointError(
                f"{path}: '{request.name}' has no projection head, but the file has head.* keys"
            )
        try:
            projection = head_from_state(mini.head_kind, head_state).eval()
        except (KeyError, RuntimeError, IndexError) as exc:
            raise CheckpointError(f"{path}: head.* keys do not form a {mini.head_kind} head ({exc})") from exc
    return TimmEncoder(
        model.eval(),
        name=request.name,
        family=mini.family,
        weights_id=f"sha256:{sha256_file(path)}",
        projection=projection,
    )


def _load_random(request: EncoderRequest):
    from partbench.encoders.vit import load_mini_vit

    return load_mini_vit(request.name, "none", weights=request.weights, seed=request.seed)


def mini_encoder_specs() -> list[EncoderSpec]:
    specs = []
    for name, mini in MINI.items():
        path = shipped_weights(mini.method)
        specs.append(
            EncoderSpec(
                name=name,
                load=partial(load_mini, mini=mini),
                family=mini.family,
                description=mini.description,
                weights_source=f"shipped: partbench/weights/{path.name}",
                weights_present=_exists(path),
            )
        )
    specs.append(
        EncoderSpec(
            name="mini-random",
            load=_load_random,
            family="none",
            description="mini ViT, random init from --seed (same architecture): the floor",
            weights_source="random init from --seed",
        )
    )
    return specs


def _exists(path: Path) -> Callable[[], bool]:
    return lambda: path.is_file()
