"""Any timm backbone behind the encoder interface: CNNs, hierarchical and register ViTs.

Each model is a small configuration of a real timm architecture, randomly initialised, saved as a
state dict (classifier included, as a released file has it) and loaded through ``--weights`` the
way ``timm:<model>`` loads it. Nothing downloads. References are computed from timm's own
``forward_features`` with forward hooks on the modules the stages name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from partbench.encoders.timm_adapter import TimmEncoder, check_forward, load_timm
from partbench.errors import CheckpointError, PartbenchError
from partbench.specs import EncoderRequest

timm = pytest.importorskip("timm")


@dataclass(frozen=True)
class Case:
    kwargs: dict[str, Any]
    size: int
    pooled_kind: str
    prefix: int  # class token + registers (+ a distillation token)
    registers: int = 0
    stages: list[tuple[str, int, int]] = field(default_factory=list)  # when worth spelling out
    input_size: int | None = None  # what partbench feeds it, when not ``size`` (CNNs: timm's 224)


CASES: dict[str, Case] = {
    "resnet18": Case(
        {},
        64,
        "avgpool",
        0,
        stages=[
            ("act1", 64, 2),
            ("layer1", 64, 4),
            ("layer2", 128, 8),
            ("layer3", 256, 16),
            ("layer4", 512, 32),
        ],
        input_size=224,
    ),
    "convnext_atto": Case(
        {},
        64,
        "avgpool",
        0,
        stages=[("stages.0", 40, 4), ("stages.1", 80, 8), ("stages.2", 160, 16), ("stages.3", 320, 32)],
        input_size=224,
    ),
    "swin_tiny_patch4_window7_224": Case(
        dict(img_size=64, window_size=4, embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
        64,
        "avgpool",
        0,
        stages=[("layers.0", 32, 4), ("layers.1", 64, 8), ("layers.2", 128, 16), ("layers.3", 256, 32)],
    ),
    "vit_small_patch14_reg4_dinov2": Case(
        dict(img_size=56, depth=2, embed_dim=64, num_heads=2), 56, "cls", 5, registers=4
    ),
    "eva02_tiny_patch14_224": Case(dict(img_size=56, depth=2), 56, "cls", 1),
    "deit_tiny_distilled_patch16_224": Case(dict(img_size=64, depth=2), 64, "cls", 2),
    "vit_tiny_patch16_224": Case(dict(img_size=64, depth=2), 64, "cls", 1),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models gain nothing from a second thread, and on shared cores lose a lot.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclass
class Built:
    encoder: TimmEncoder
    reference: nn.Module  # the model as built, classifier included, loaded from the same file
    path: Path
    case: Case


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Callable[[str], Built]:
    cache: dict[str, Built] = {}

    def get(name: str) -> Built:
        if name not in cache:
            case = CASES[name]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = timm.create_model(name, pretrained=False, **case.kwargs).eval()
            path = tmp_path_factory.mktemp(name) / f"{name}.pth"
            torch.save(model.state_dict(), path)
            request = EncoderRequest(name=f"timm:{name}", variant=name, weights=path)
            cache[name] = Built(load_timm(request, model_kwargs=case.kwargs), model, path, case)
        return cache[name]

    return get


def images(size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def as_map(x: torch.Tensor, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """A module's raw output as (B, C, H, W): tokens lose their prefix, channels-last turns."""
    if x.dim() == 3:
        patches = x[:, x.shape[1] - grid[0] * grid[1] :]
        return patches.transpose(1, 2).reshape(x.shape[0], channels, *grid)
    return x if x.shape[1] == channels else x.permute(0, 3, 1, 2)


def hooked(
    model: nn.Module, names: list[str], x: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """forward_features(x), with the outputs of the named modules."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o))
        for n in names
    ]
    try:
        with torch.no_grad():
            final = model.forward_features(x)
    finally:
        for h in handles:
            h.remove()
    return final, seen


@pytest.mark.parametrize("name", list(CASES))
def test_stages_are_feature_info_and_maps_are_nchw(name: str, built) -> None:
    b = built(name)
    enc, case = b.encoder, b.case
    info = b.reference.feature_info
    assert [(s.index, s.name, s.channels, s.stride) for s in enc.stages] == [
        (i, f["module"], f["num_chs"], f["reduction"]) for i, f in enumerate(info)
    ]
    if case.stages:
        assert [(s.name, s.channels, s.stride) for s in enc.stages] == case.stages
    x = images(case.size)
    every = tuple(range(len(enc.stages)))
    with torch.no_grad():
        out = enc.forward(x, stages=every)
    _, seen = hooked(b.reference, [s.name for s in enc.stages], x)
    for s in enc.stages:
        m = out.stages[s.index]
        side = case.size // s.stride
        assert m.shape == (2, s.channels, side, side), s  # NCHW at the declared stride
        # The map is what the module the stage names gives, in a separate timm forward.
        want = as_map(seen[s.name], s.channels, (side, side))
        torch.testing.assert_close(m, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        assert enc.forward(x, stages=(1,)).stages.keys() == {1}
        assert enc.forward(x).stages == {}
    with pytest.raises(ValueError, match=rf"stages 0\.\.{len(enc.stages) - 1}"):
        enc.forward(x, stages=(len(enc.stages),))


def reference_final(name: str, model: nn.Module, x: torch.Tensor, case: Case) -> dict[str, torch.Tensor]:
    """final (B, D, H, W), pooled and prefix computed from timm's forward_features by hand."""
    with torch.no_grad():
        feats = model.forward_features(x)
        last = model.feature_info[-1]
        side = case.size // last["reduction"]
        if feats.dim() == 3:  # tokens, after timm's final norm (EVA-02: fc_norm, applied per token)
            if isinstance(model.norm, nn.Identity):
                feats = model.fc_norm(feats)
            final = as_map(feats, feats.shape[-1], (side, side))
            return {"final": final, "pooled": feats[:, 0], "prefix": feats[:, : case.prefix]}
        if name.startswith("swin"):  # NHWC, after Swin's final norm
            final = feats.permute(0, 3, 1, 2)
        elif name.startswith("convnext"):  # the head's LayerNorm, per cell
            norm = model.head.norm
            final = F.layer_norm(
                feats.permute(0, 2, 3, 1), norm.normalized_shape, norm.weight, norm.bias, norm.eps
            )
            final = final.permute(0, 3, 1, 2)
        else:  # ResNet: no final norm
            final = feats
        return {"final": final, "pooled": final.mean(dim=(2, 3))}


@pytest.mark.parametrize("name", list(CASES))
def test_final_map_pooled_vector_and_prefix(name: str, built) -> None:
    b = built(name)
    enc, case = b.encoder, b.case
    x = images(case.size)
    with torch.no_grad():
        out = enc.forward(x)
    ref = reference_final(name, b.reference, x, case)
    side = case.size // enc.stages[-1].stride
    assert out.final.shape == (2, enc.embed_dim, side, side) and out.grid == (side, side)
    torch.testing.assert_close(out.final, ref["final"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooled, ref["pooled"], rtol=1e-5, atol=1e-5)
    assert enc.pooled_kind == case.pooled_kind and enc.num_registers == case.registers
    if case.prefix:
        assert out.prefix is not None and out.prefix.shape == (2, case.prefix, enc.embed_dim)
        torch.testing.assert_close(out.prefix, ref["prefix"], rtol=1e-5, atol=1e-5)
        assert torch.equal(out.pooled, out.prefix[:, 0])  # the class token comes first
    else:
        assert out.prefix is None
        torch.testing.assert_close(out.pooled, out.embedding, rtol=1e-6, atol=1e-6)
    assert out.projection is None and not enc.has_projection


@pytest.mark.parametrize("name", list(CASES))
def test_describe_declares_only_what_the_model_has(name: str, built) -> None:
    b = built(name)
    enc = b.encoder
    described = json.loads(json.dumps(enc.describe()))  # stored as JSON, so it must survive it
    assert described["stages"] == [[s.name, s.channels, s.stride] for s in enc.stages]
    assert described["pooled_kind"] == b.case.pooled_kind
    assert described["num_registers"] == b.case.registers
    assert described["input_size"] == (b.case.input_size or b.case.size)
    assert described["has_projection"] is False
    assert described["weights_id"].startswith("sha256:") and described["version"] == enc.version
    assert described["parameters"] == sum(p.numel() for p in enc.module.parameters())
    assert not {"patch_size", "depth", "num_heads"} & set(described)
    n = len(enc.stages)
    assert enc.stage_at(1.0) == n - 1 and enc.stage_at(0.0) == 0
    assert enc.stage_at(0.5) == max(0, round(n / 2) - 1)


@pytest.mark.parametrize("name", ["resnet18", "convnext_atto", "deit_tiny_distilled_patch16_224"])
def test_weights_file_loads_strictly_without_the_classifier(name: str, built) -> None:
    b = built(name)
    own = b.encoder.model.state_dict()
    saved = torch.load(b.path, weights_only=True)
    classifier = {k for k in saved if k not in own}
    assert classifier and all(k.startswith(("fc.", "head.fc.", "head.", "head_dist.")) for k in classifier)
    for k, v in own.items():
        assert torch.equal(v, saved[k]), k
    if name == "convnext_atto":
        assert "head.norm.weight" in own  # the head's norm is part of the encoder
    damaged = {k: v for k, v in saved.items() if k != next(iter(own))}
    bad = b.path.with_name("damaged.pth")
    torch.save(damaged, bad)
    request = EncoderRequest(name=f"timm:{name}", variant=name, weights=bad)
    with pytest.raises(CheckpointError, match=rf"missing keys: {next(iter(own))}"):
        load_timm(request, model_kwargs=b.case.kwargs)


def test_timm_prefix_through_the_registered_loader(tmp_path: Path) -> None:
    from partbench.encoders import builtin

    specs: dict = {}
    builtin.register_encoders(register=lambda s: specs.setdefault(s.name, s))
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    enc = specs["timm:"].load(EncoderRequest(name="timm:resnet18", variant="resnet18", weights=path))
    assert enc.input_size == 224 and enc.pooled_kind == "avgpool" and len(enc.stages) == 5
    assert enc.family == "unknown" and enc.weights_id.startswith("sha256:")


def test_a_model_without_stage_maps_is_a_clear_error() -> None:
    with pytest.raises(PartbenchError, match=r"timm:mlp: timm's Sequential has no forward_intermediates"):
        TimmEncoder(nn.Sequential(nn.Linear(2, 2)), name="timm:mlp", family="unknown", weights_id="x")
    # CrossViT's forward_intermediates gives a list per branch, not a map: refused with its name.
    with torch.random.fork_rng(devices=[]):
        model = timm.create_model("crossvit_tiny_240", pretrained=False, num_classes=0).eval()
    encoder = TimmEncoder(model, name="timm:crossvit_tiny_240", family="unknown", weights_id="x")
    with pytest.raises(PartbenchError, match=r"timm:crossvit_tiny_240: timm's CrossVit"):
        check_forward(encoder)


def test_unknown_timm_model_suggests_names() -> None:
    with pytest.raises(PartbenchError, match=r"timm has no model 'resnet1888'.*resnet18"):
        load_timm(EncoderRequest(name="timm:resnet1888", variant="resnet1888"))


def test_registers_and_stride_follow_the_input(built) -> None:
    """A register ViT at another input size: the grid is the input over the stride; the four
    registers sit after the class token and never in the final map."""
    b = built("vit_small_patch14_reg4_dinov2")
    enc = b.encoder
    with torch.no_grad():
        out = enc.forward(images(56, 1), stages=(0,))
        tokens = b.reference.forward_features(images(56, 1))
    assert out.final.shape[-2:] == (4, 4) and math.prod(out.grid) == tokens.shape[1] - 5
    torch.testing.assert_close(out.prefix[:, 1:], tokens[:, 1:5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", timm.list_models("test_*"))
def test_every_timm_test_architecture_gives_nchw_stages_and_a_final_map(name: str) -> None:
    """timm's own tiny test models, one per family (ByobNet, CoAtNet, ConvNeXt, EfficientNet,
    MambaOut, MaxViT, NFNet, ResNet, ViTs with and without class token, registers, MAP pooling)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    enc = TimmEncoder(model, name=f"timm:{name}", family="unknown", weights_id="x")
    check_forward(enc)
    size = enc.input_size
    with torch.no_grad():
        out = enc.forward(images(size, 1), stages=range(len(enc.stages)))
    for s in enc.stages:
        assert out.stages[s.index].shape == (
            1,
            s.channels,
            math.ceil(size / s.stride),
            math.ceil(size / s.stride),
        )
    assert out.final.dim() == 4 and out.final.shape[:2] == (1, model.num_features)
    assert out.pooled.shape == (1, model.num_features)
    has_cls = getattr(model, "cls_token", None) is not None
    assert enc.pooled_kind == ("cls" if has_cls else "avgpool")
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    assert (out.prefix is None) == (prefix == 0)
    if prefix:
        assert out.prefix.shape == (1, prefix, model.num_features)


def test_a_resnet_runs_every_builtin_task_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`partbench run --encoder timm:<cnn> --weights FILE --task all`: a CNN through extraction,
    stages resampled for segmentation, and every built-in task, stored with its stages."""
    from click.testing import CliRunner

    from partbench.cli import cli
    from partbench.plugins import reset_registry

    path = tmp_path / "test_resnet.pth"
    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)
    monkeypatch.delenv("PARTBENCH_LOAD_PLUGINS")  # as a user runs it: every installed plugin
    reset_registry()
    db = f"sqlite:///{tmp_path / 'runs.db'}"

    def partbench(*args: str):
        return CliRunner().invoke(cli, [*args, "--db", db])

    quick = ("--limit", "8", "-o", "epochs=3", "-o", "iterations=10")
    ran = partbench("run", "-e", "timm:test_resnet", "--weights", str(path), "-t", "all", *quick)
    assert ran.exit_code == 0, ran.output
    runs = json.loads(partbench("runs", "--format", "json").stdout)
    tasks = {"part-retrieval", "part-linear", "part-attentive", "part-seg"}
    tasks |= {"object-retrieval", "object-linear", "object-seg"}
    tasks |= {"part-correspondence", "part-seg-nn", "object-seg-nn", "part-discovery"}
    assert {r["task"] for r in runs if r["status"] == "done"} == tasks
    described = runs[0]["config"]["encoder"]
    assert described["pooled_kind"] == "avgpool" and [s[2] for s in described["stages"]] == [2, 4, 8, 16, 32]


def test_random_vit_is_mini_random_under_another_name() -> None:
    from partbench.encoders import builtin

    specs: dict = {}
    builtin.register_encoders(register=lambda s: specs.setdefault(s.name, s))
    alias, original = specs["random-vit"], specs["mini-random"]
    assert alias.load is original.load and alias.family == original.family == "none"
    a = alias.load(EncoderRequest(name="random-vit", seed=3))
    b = original.load(EncoderRequest(name="mini-random", seed=3))
    assert a.weights_id == b.weights_id == "random-init:seed=3"
    assert {k: v for k, v in a.describe().items() if k != "name"} == {
        k: v for k, v in b.describe().items() if k != "name"
    }
    with torch.no_grad():
        x = images(64, 1)
        assert torch.equal(a.forward(x).pooled, b.forward(x).pooled)


def test_nothing_but_the_pretrain_command_imports_pretrain() -> None:
    """partbench.pretrain is the mini recipes' package; the encoders (heads included) never
    import it: only the `partbench pretrain` command does."""
    import ast

    import partbench

    root = Path(partbench.__file__).parent
    importers = set()
    for path in root.rglob("*.py"):
        if path.is_relative_to(root / "pretrain"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any(n == "partbench.pretrain" or n.startswith("partbench.pretrain.") for n in names):
                importers.add(path.relative_to(root).as_posix())
    assert importers <= {"cli.py"}
