"""The study's encoders, loaded from the files their authors released.

Each entry of :data:`OFFICIAL` says which timm architecture the encoder is, which files it
accepts (the cache preference order), where in each file its tensors sit (formats.Layout), and
which projection head the file may carry. Loading is always: read with weights-only unpickling,
pick the right network, convert keys, strict load into the timm model, strict load of the head.

Choices worth knowing (see also checkpoints.md and paper-protocol.md in the reference folder):

* Every encoder is normalised with ImageNet mean/std, as the study does, whatever timm's
  pretrained tag would say.
* DINO and iBOT use the teacher; MoCo v3 the base encoder (not the momentum encoder). The other
  networks stay reachable through ``role=`` in :func:`build_encoder`.
* DINO: the full checkpoint is preferred (its teacher head gives the 65,536-d projection the
  study's fourth claim needs); the backbone-only release (also the teacher) is accepted and has
  no projection. The download fetches the full checkpoint, as the study's retrieval code did.
* iBOT: the download fetches the teacher backbone the study links (no head); the full checkpoint,
  when in the cache or given with --weights, adds the 8,192-d projection. The teacher head's
  ``last_layer2`` is the patch-token head, not the class-token projection, and is left out.
* BEiT and CAE load into timm's Beit, which stores the split q/v biases and ``gamma_1/2`` layer
  scales under the official names, so neither needs key conversion. CAE keeps only ``encoder.*``
  (its alignment teacher, regressor and decoder are dropped); LayerNorm eps is 1e-6, as in the
  official model.
* DINOv2 keeps its stored 518 px (37 x 37) position embedding unchanged and runs with
  ``dynamic_img_size``: at partbench's 224 px input (a 16 x 16 grid) timm resamples it bicubically
  (antialiased), which differs slightly from DINOv2's own interpolation.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from partbench.encoders.formats import Layout, dinov2_registers_to_timm, extract
from partbench.errors import PartbenchError
from partbench.paths import weights_cache
from partbench.specs import EncoderRequest, EncoderSpec

if TYPE_CHECKING:
    from torch import nn

    from partbench.encoders.timm_adapter import TimmEncoder

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CAE_DRIVE = "https://drive.google.com/drive/folders/1wwhg7nj2GQuU9uthVuQLkEEXEjx90G7g"


@dataclass(frozen=True)
class WeightsFile:
    filename: str  # its name in the weights cache (the official name where that is unambiguous)
    url: str | None  # None: no stable URL
    holds: str  # what is in it, in words


@dataclass(frozen=True)
class OfficialEncoder:
    name: str
    family: str
    description: str
    arch: str  # timm model name, always built with pretrained=False
    files: tuple[WeightsFile, ...]  # cache preference order; the first with a URL is downloaded
    roles: Mapping[str, tuple[Layout, ...]]  # role -> layouts tried in order
    default_role: str
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    head: str | None = None  # heads.HEAD_KINDS entry, when the file may carry a projection head
    head_drop: tuple[str, ...] = ()
    needs_namespace: bool = False  # full DINO/iBOT checkpoints pickle argparse.Namespace
    manual: str = ""  # where to get the file when it has no stable URL
    input_size: int = 224
    mean: tuple[float, float, float] = IMAGENET[0]
    std: tuple[float, float, float] = IMAGENET[1]

    @property
    def download_file(self) -> WeightsFile | None:
        return next((f for f in self.files if f.url), None)

    @property
    def weights_source(self) -> str:
        target = self.download_file
        if target is not None:
            return target.url or ""
        return f"{self.manual} (save as <weights cache>/{self.files[0].filename})"

    def weights_present(self) -> bool:
        cache = weights_cache()
        return any((cache / f.filename).is_file() for f in self.files)


_FB = "https://dl.fbaipublicfiles.com"
_IBOT = "https://lf3-nlp-opensource.bytetos.com/obj/nlp-opensource/archive/2022/ibot/vitb_16_rand_mask"
_BEIT_ARGS = {
    "use_abs_pos_emb": False,
    "use_rel_pos_bias": False,
    "use_shared_rel_pos_bias": True,
    "init_values": 0.1,
}
_CAE_ARGS = {
    "use_abs_pos_emb": True,
    "use_rel_pos_bias": False,
    "use_shared_rel_pos_bias": False,
    "init_values": 0.1,
}

_DINO_FULL = {
    "teacher": (Layout("teacher", "teacher", "backbone.", head_prefix="head."),),
    "student": (Layout("student", "student", "module.backbone.", head_prefix="module.head."),),
}


def _with_flat(layouts: Mapping[str, tuple[Layout, ...]], flat: Layout) -> dict:
    # A backbone-only release holds the default network as the whole file (or one entry).
    out = dict(layouts)
    out[flat.role] = (*out.get(flat.role, ()), flat)
    return out


_ENTRIES = (
    OfficialEncoder(
        name="deit",
        family="supervised",
        description="DeiT-B/16, supervised on ImageNet-1k (the DeiT file, not timm's vit_base)",
        arch="vit_base_patch16_224",
        files=(
            WeightsFile(
                "deit_base_patch16_224-b5f2ef4d.pth",
                f"{_FB}/deit/deit_base_patch16_224-b5f2ef4d.pth",
                "{'model': state dict} with the classifier",
            ),
        ),
        roles={"model": (Layout("model", "model"),)},
        default_role="model",
    ),
    OfficialEncoder(
        name="mocov3",
        family="contrastive",
        description="MoCo v3 ViT-B/16, 300 epochs; base encoder, 256-d projector",
        arch="vit_base_patch16_224",
        files=(
            WeightsFile(
                "vit-b-300ep.pth.tar",
                f"{_FB}/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar",
                "training checkpoint: base and momentum encoders, predictor, optimizer",
            ),
        ),
        roles={
            "base": (Layout("base encoder", "state_dict", "module.base_encoder."),),
            "momentum": (Layout("momentum encoder", "state_dict", "module.momentum_encoder."),),
        },
        default_role="base",
        head="moco-projector",
    ),
    OfficialEncoder(
        name="dino",
        family="contrastive",
        description="DINO ViT-B/16 teacher; 65,536-d head from the full checkpoint",
        arch="vit_base_patch16_224",
        files=(
            WeightsFile(
                "dino_vitbase16_pretrain_full_checkpoint.pth",
                f"{_FB}/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain_full_checkpoint.pth",
                "full checkpoint: student, teacher (with heads), optimizer, args",
            ),
            WeightsFile(
                "dino_vitbase16_pretrain.pth",
                f"{_FB}/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                "teacher backbone only (no projection)",
            ),
        ),
        roles=_with_flat(_DINO_FULL, Layout("teacher", None)),
        default_role="teacher",
        head="dino-head",
        needs_namespace=True,
    ),
    OfficialEncoder(
        name="ibot",
        family="both",
        description="iBOT ViT-B/16 (random mask) teacher; 8,192-d head from the full checkpoint",
        arch="vit_base_patch16_224",
        files=(
            WeightsFile(
                "ibot_vitb16_rand_mask_checkpoint.pth",
                f"{_IBOT}/checkpoint.pth",
                "full checkpoint: student, teacher (with heads), optimizer, args",
            ),
            WeightsFile(
                "ibot_vitb16_rand_mask_checkpoint_teacher.pth",
                f"{_IBOT}/checkpoint_teacher.pth",
                "{'state_dict': teacher backbone} (no projection)",
            ),
        ),
        roles={
            "teacher": (
                Layout("teacher", "teacher", "backbone.", head_prefix="head.", drop=("masked_embed",)),
                Layout("teacher", "state_dict", "", drop=("masked_embed",)),
            ),
            "student": (
                Layout(
                    "student",
                    "student",
                    "module.backbone.",
                    head_prefix="module.head.",
                    drop=("masked_embed",),
                ),
            ),
        },
        default_role="teacher",
        head="dino-head",
        head_drop=("last_layer2.",),
        needs_namespace=True,
    ),
    OfficialEncoder(
        name="mae",
        family="masked-image-modeling",
        description="MAE ViT-B/16 encoder, 1600 epochs, run without masking",
        arch="vit_base_patch16_224",
        files=(
            WeightsFile(
                "mae_pretrain_vit_base.pth",
                f"{_FB}/mae/pretrain/mae_pretrain_vit_base.pth",
                "{'model': encoder state dict} (the _full variant adds the decoder)",
            ),
        ),
        roles={"encoder": (Layout("encoder", "model", drop=("mask_token", "decoder_*")),)},
        default_role="encoder",
    ),
    OfficialEncoder(
        name="beit",
        family="masked-image-modeling",
        description="BEiT-B/16 pretrained on ImageNet-1k, 800 epochs (not fine-tuned)",
        arch="beit_base_patch16_224",
        arch_kwargs=_BEIT_ARGS,
        files=(WeightsFile("beit_base_patch16_224_pt1k_800ep.pth", None, "{'model': state dict}"),),
        roles={
            "model": (
                Layout(
                    "model",
                    "model",
                    drop=("mask_token", "lm_head.*", "*relative_position_index", "cls_pt_layers.*"),
                ),
            )
        },
        default_role="model",
        manual=(
            "no stable URL: the study's ImageNet-1k pretrain-only file comes from the BEiT or the "
            "study's authors (the ImageNet-22k file beit_base_patch16_224_pt22k.pth from the "
            "microsoft/unilm BEiT release loads the same way via --weights)"
        ),
    ),
    OfficialEncoder(
        name="cae",
        family="masked-image-modeling",
        description="CAE-B/16, 1600 epochs: MIM plus a latent alignment term",
        arch="beit_base_patch16_224",
        arch_kwargs=_CAE_ARGS,
        files=(WeightsFile("cae_base_1600ep.pth", None, "{'model': encoder.* and decoder keys}"),),
        roles={"encoder": (Layout("encoder", "model", "encoder.", drop=("mask_token",)),)},
        default_role="encoder",
        manual=f"the authors' Google Drive, {CAE_DRIVE}",
    ),
    OfficialEncoder(
        name="dinov2",
        family="both",
        description="DINOv2 ViT-B/14 (LVD-142M), run at 224 px (16 x 16 patches)",
        arch="vit_base_patch14_dinov2",
        arch_kwargs={"dynamic_img_size": True},
        files=(
            WeightsFile(
                "dinov2_vitb14_pretrain.pth",
                f"{_FB}/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
                "flat state dict (no head released)",
            ),
        ),
        roles={"model": (Layout("model", None, drop=("mask_token",)),)},
        default_role="model",
    ),
    OfficialEncoder(
        name="dinov2-reg4",
        family="both",
        description="DINOv2 ViT-B/14 with 4 registers, run at 224 px",
        arch="vit_base_patch14_reg4_dinov2",
        arch_kwargs={"dynamic_img_size": True},
        files=(
            WeightsFile(
                "dinov2_vitb14_reg4_pretrain.pth",
                f"{_FB}/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
                "flat state dict with register_tokens",
            ),
        ),
        roles={"model": (Layout("model", None, drop=("mask_token",), rename=dinov2_registers_to_timm),)},
        default_role="model",
    ),
)

OFFICIAL: dict[str, OfficialEncoder] = {e.name: e for e in _ENTRIES}


# --- weights resolution ------------------------------------------------------------------


def _hash_in_name(filename: str) -> str | None:
    # torch.hub convention, used by the DeiT file: "<name>-<first hex digits of sha256>.<ext>".
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z.]+$", filename)
    return m.group(1) if m else None


def download(url: str, dest: Path, validate: Callable[[Path], Any] | None = None) -> str:
    """Fetch ``url`` to ``dest`` through partbench's one verified download
    (:func:`partbench.encoders.checkpoints.download_weights`); return its sha256.

    The file takes its name only when it is complete, its sha256 matches the hash in its name
    where it has one (torch.hub's convention, as the DeiT file does) and ``validate(path)``
    (building the encoder from it) passes; the sha256 is recorded beside it (``<name>.sha256``).
    """
    from partbench.encoders.checkpoints import download_weights

    return download_weights(
        url,
        dest,
        validate or (lambda path: None),
        sha256_prefix=_hash_in_name(Path(dest).name),
        progress=sys.stderr.isatty(),
    )


def resolve_weights(
    entry: OfficialEncoder,
    explicit: Path | None = None,
    *,
    validate: Callable[[Path], Any] | None = None,
) -> Path:
    """--weights, else the weights cache, else a download into the cache, else a clear error.

    A cached file that was downloaded is checked against the sha256 recorded then; ``validate``
    checks a download before it takes its place in the cache.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise PartbenchError(f"{entry.name}: --weights {path}: no such file")
        return path
    cache = weights_cache()
    for candidate in entry.files:
        if (cache / candidate.filename).is_file():
            from partbench.encoders.checkpoints import cached_weights

            cached_weights(cache / candidate.filename)
            return cache / candidate.filename
    target = entry.download_file
    if target is None:
        dest = cache / entry.files[0].filename
        raise PartbenchError(
            f"{entry.name}: weights not found at {dest}; the file has no stable download URL: "
            f"get it from {entry.manual}, save it as {dest}, or pass --weights FILE"
        )
    dest = cache / target.filename
    print(f"partbench: downloading {entry.name} weights from {target.url} to {dest}", file=sys.stderr)
    try:
        download(target.url or "", dest, validate)
    except PartbenchError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PartbenchError(
            f"{entry.name}: weights not found at {dest}, and downloading {target.url} failed "
            f"({reason}); download it yourself and save it as {dest}, or pass --weights FILE"
        ) from exc
    return dest


# --- building ----------------------------------------------------------------------------


def create_backbone(entry: OfficialEncoder, geometry: Mapping[str, int] | None = None) -> nn.Module:
    """The timm model for ``entry``, never pretrained; ``geometry`` overrides width/depth/heads."""
    import timm

    kwargs: dict[str, Any] = {**entry.arch_kwargs, **(geometry or {})}
    return timm.create_model(entry.arch, pretrained=False, num_classes=0, global_pool="token", **kwargs)


def build_encoder(
    entry: OfficialEncoder,
    path: Path,
    *,
    role: str | None = None,
    geometry: Mapping[str, int] | None = None,
    name: str | None = None,
) -> TimmEncoder:
    """Load ``path`` (an official-format file) into ``entry``'s architecture, strictly.

    ``role`` picks another network of a multi-network file (e.g. "student", "momentum");
    ``geometry`` is for tests that use the same key layout at a small width.
    """
    from partbench.encoders.checkpoints import load_strict, read_checkpoint, sha256_file
    from partbench.encoders.heads import build_head
    from partbench.encoders.timm_adapter import TimmEncoder

    role = role or entry.default_role
    if role not in entry.roles:
        raise PartbenchError(f"{entry.name}: no role '{role}'; known: {', '.join(entry.roles)}")
    path = Path(path)
    obj = read_checkpoint(path, allow_namespace=entry.needs_namespace)
    found = extract(obj, entry.roles[role], path)
    model = create_backbone(entry, geometry)
    load_strict(model, found.backbone, f"{path} [{found.layout.describe()}]")
    head = None
    if entry.head is not None and found.head:
        head = build_head(entry.head, found.head, int(model.embed_dim), path, drop=entry.head_drop)
    # DINOv2's model is built at its stored 518 px; partbench feeds the study's 224 px crops.
    return TimmEncoder(
        model.eval(),
        name=name or entry.name,
        family=entry.family,
        weights_id=f"sha256:{sha256_file(path)}",
        mean=entry.mean,
        std=entry.std,
        projection=head,
        input_size=entry.input_size,
    )


def load_official(
    entry: OfficialEncoder,
    request: EncoderRequest,
    *,
    geometry: Mapping[str, int] | None = None,
) -> TimmEncoder:
    """What ``partbench run --encoder <name>`` calls: resolve the weights, then build."""
    built: list[TimmEncoder] = []

    def validate(path: Path) -> None:
        # A download is kept only if the encoder builds from it; that encoder is the one returned
        # (its weights_id is the content's sha256, wherever the file lies).
        built.append(build_encoder(entry, path, geometry=geometry, name=request.name))

    path = resolve_weights(entry, request.weights, validate=validate)
    return built[-1] if built else build_encoder(entry, path, geometry=geometry, name=request.name)


# The opt-in variant that runs MAE as the study's retrieval and classification code does.
STUDY_SHUFFLE = "mae-study-shuffle"


def study_patch_shuffle(encoder: TimmEncoder, seed: int) -> TimmEncoder:
    """``encoder`` with its patch embeddings shuffled before the position embeddings are added,
    as the study's MAE does (its ``MaskedAutoencoderViT.forward_encoder`` in
    retrieval-classification/vits.py calls ``random_masking(x, 0.)`` on the patch embeddings and
    adds ``interpolate_pos_encoding`` afterwards; MAE's own ``forward_encoder`` adds them first).
    Each patch's content thus carries another patch's position. The study draws the order from
    an unseeded ``torch.rand``; here it is seeded, so a run repeats: the k-th image of every
    batch gets the k-th permutation drawn from ``seed``.
    """
    import torch

    def shuffle(module: Any, args: Any, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.dim() != 3:
            raise PartbenchError(f"{encoder.name}: patch shuffling needs (B, N, D) patch tokens")
        noise = torch.rand(tokens.shape[:2], generator=torch.Generator().manual_seed(seed))
        order = noise.argsort(dim=1).to(tokens.device)
        return tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))

    encoder.model.patch_embed.register_forward_hook(shuffle)
    # The features depend on the seed: it enters the description, hence the cache key and hash.
    encoder.version = f"{encoder.version}+study-patch-shuffle:seed={seed}"
    return encoder


def load_study_shuffle(request: EncoderRequest, *, geometry: Mapping[str, int] | None = None) -> TimmEncoder:
    """``mae`` as the study ran it (``--seed`` draws the patch orders)."""
    encoder = load_official(OFFICIAL["mae"], request, geometry=geometry)
    return study_patch_shuffle(encoder, request.seed)


def official_specs() -> list[EncoderSpec]:
    """One EncoderSpec per official encoder, for the built-in plugin to register, and the study's
    patch-shuffled MAE beside ``mae``."""
    mae = OFFICIAL["mae"]
    return [
        *(
            EncoderSpec(
                name=entry.name,
                load=functools.partial(load_official, entry),
                family=entry.family,
                description=entry.description,
                weights_source=entry.weights_source,
                weights_present=entry.weights_present,
            )
            for entry in OFFICIAL.values()
        ),
        EncoderSpec(
            name=STUDY_SHUFFLE,
            load=load_study_shuffle,
            family=mae.family,
            description="MAE as the study's code runs it: patches shuffled (seeded by --seed) before "
            "their position embeddings; to compare with the paper's MAE numbers",
            weights_source=mae.weights_source,
            weights_present=mae.weights_present,
        ),
    ]
