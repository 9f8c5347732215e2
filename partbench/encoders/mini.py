"""The mini encoders: the mini ViT pretrained on SynParts with each family the study compares.

Weights ship inside the package (partbench/weights, written by ``partbench.pretrain.ship``);
``--weights PATH`` replaces them. This module imports no torch, so that listing encoders
stays fast; the loaders import it when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from partbench.specs import EncoderRequest, EncoderSpec

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
HEAD_PREFIX = "head."


@dataclass(frozen=True)
class Mini:
    method: str
    family: str
    head_kind: str | None  # the heads.HEAD_KINDS entry its projection head is, if it has one
    description: str
    arch: str = "vit"  # "vit" (build_mini_vit) or "cnn" (build_mini_cnn, the reference)

    @property
    def serves(self) -> str:
        """The level the study expects the method to serve, where it must beat the floor:
        supervised training reads object labels; contrastive and MIM objectives read parts of
        images (crops, masked patches)."""
        return "object" if self.family == "supervised" else "part"

    def build(self, seed: int, *, init: bool = True):
        """The untrained network of this mini's architecture (``init=False``: parameters left
        unset, for a caller that loads them all)."""
        from partbench.encoders.vit import build_mini_cnn, build_mini_vit

        if self.arch == "cnn":
            return build_mini_cnn(seed)
        return build_mini_vit(seed, init=init)


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
        "moco-projector",
        "mini ViT, MoCo v3 on SynParts; projection: 256-d projector",
    ),
    "mini-dino": Mini(
        "dino", "contrastive", "dino-head", "mini ViT, DINO teacher on SynParts; projection: DINO head"
    ),
    "mini-mae": Mini("mae", "masked-image-modeling", None, "mini ViT, MAE encoder on SynParts"),
    "mini-ibot": Mini(
        "ibot", "both", "dino-head", "mini ViT, iBOT teacher on SynParts; projection: iBOT head"
    ),
    "mini-cnn": Mini(
        "supervised-cnn",
        "supervised",
        None,
        "reference: small ResNet, object-class cross-entropy on SynParts (what learned looks like)",
        arch="cnn",
    ),
}
RANDOM_DESCRIPTION = "mini ViT (64 px, patch 8, width 128, 6 blocks), random init from --seed: the floor"


def by_method(method: str) -> Mini:
    return next(m for m in MINI.values() if m.method == method)


def shipped_weights(method: str) -> Path:
    return WEIGHTS_DIR / f"mini-{method}.safetensors"


def _head_keys_of_first_ship(state: dict) -> dict:
    """Head keys as the first shipped files name them, in the official layouts heads.py reads:
    MoCo v3's ``layers.N.*`` are ``N.*``; DINO's ``last.weight`` is the direction of a last layer
    whose norms are fixed at 1 (``last_layer.weight_v``, ``weight_g`` = 1)."""
    import torch

    out = {k[len("layers.") :] if k.startswith("layers.") else k: v for k, v in state.items()}
    if "last.weight" in out:
        v = out.pop("last.weight")
        out["last_layer.weight_v"] = v
        out["last_layer.weight_g"] = torch.ones(v.shape[0], 1, dtype=v.dtype)
    return out


def load_mini(request: EncoderRequest, mini: Mini):
    """The mini ViT with the shipped (or ``--weights``) backbone and, where the file has
    ``head.*`` keys, the projection head rebuilt from them."""
    from partbench.encoders.checkpoints import load_strict, read_checkpoint, sha256_file
    from partbench.encoders.heads import build_head
    from partbench.encoders.timm_adapter import TimmEncoder
    from partbench.encoders.vit import MINI_SIZE
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
    model = mini.build(request.seed, init=False)  # load_strict sets every parameter
    load_strict(model, backbone_state, path)
    projection = None
    if head_state:
        if mini.head_kind is None:
            raise CheckpointError(
                f"{path}: '{request.name}' has no projection head, but the file has head.* keys"
            )
        projection = build_head(mini.head_kind, _head_keys_of_first_ship(head_state), model.embed_dim, path)
    return TimmEncoder(
        model.eval(),
        name=request.name,
        family=mini.family,
        weights_id=f"sha256:{sha256_file(path)}",
        projection=projection,
        input_size=MINI_SIZE,
    )


def load_random(request: EncoderRequest):
    """``mini-random`` (and its alias ``random-vit``): the mini ViT from --seed, or --weights."""
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
            load=load_random,
            family="none",
            description=RANDOM_DESCRIPTION,
            weights_source="random init from --seed",
        )
    )
    return specs


def random_vit_alias(mini_random: EncoderSpec) -> EncoderSpec:
    """``random-vit``: ``mini-random`` under the name the quick start uses (one loader)."""
    return replace(mini_random, name="random-vit", description="alias of mini-random: " + RANDOM_DESCRIPTION)


def _exists(path: Path) -> Callable[[], bool]:
    return lambda: path.is_file()
