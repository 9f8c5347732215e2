"""The study's encoders load strictly from files in their official formats.

Files are built by ``checkpoint_factory`` with the official nesting and key names, at a small
width (48, 2 blocks, 3 heads) except one full ViT-B smoke test. References are computed without
partbench's loader: a timm model loaded by hand (with hand-written key conversion where the
format differs) and hand-written projection heads.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import checkpoint_factory as cf
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from partbench.encoders import official
from partbench.encoders.official import OFFICIAL, build_encoder, load_official, resolve_weights
from partbench.errors import CheckpointError, PartbenchError
from partbench.specs import EncoderRequest

SMALL = cf.SMALL
EXPECTED = {
    "deit": "supervised",
    "mocov3": "contrastive",
    "dino": "contrastive",
    "ibot": "both",
    "mae": "masked-image-modeling",
    "beit": "masked-image-modeling",
    "cae": "masked-image-modeling",
    "dinov2": "both",
}


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("PARTBENCH_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def save(obj: object, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def strip(sd: dict[str, torch.Tensor], prefix: str, drop: tuple[str, ...] = ()) -> dict:
    return {
        k[len(prefix) :]: v
        for k, v in sd.items()
        if k.startswith(prefix) and not k[len(prefix) :].startswith(drop)
    }


# --- references: timm models loaded by hand ----------------------------------------------


def vit_reference(sd: dict[str, torch.Tensor], **kwargs: object) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(num_classes=0, global_pool="token", **SMALL, **kwargs)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def beit_reference(sd: dict[str, torch.Tensor]) -> nn.Module:
    from timm.models.beit import Beit

    model = Beit(
        num_classes=0,
        global_pool="token",
        use_abs_pos_emb=False,
        use_rel_pos_bias=False,
        use_shared_rel_pos_bias=True,
        init_values=0.1,
        **SMALL,
    )
    model.load_state_dict(sd, strict=True)
    return model.eval()


def cae_reference(obj: dict) -> nn.Module:
    # Written as a plain ViT on purpose: checks that the Beit path partbench uses computes
    # what the q/v-bias and layer-scale conversion to ViT computes.
    sd = strip(obj["model"], "encoder.")
    converted = {}
    for k, v in sd.items():
        if k.endswith("attn.q_bias"):
            base = k[: -len("q_bias")]
            q_bias, v_bias = v, sd[base + "v_bias"]
            converted[base + "qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
        elif k.endswith("attn.v_bias"):
            continue
        else:
            converted[k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")] = v
    return vit_reference(converted, init_values=0.1)


def dinov2_reference(sd: dict[str, torch.Tensor], registers: int = 0) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    model = VisionTransformer(
        img_size=518,
        patch_size=14,
        init_values=1.0,
        dynamic_img_size=True,
        num_classes=0,
        global_pool="token",
        reg_tokens=registers,
        no_embed_class=bool(registers),
        **SMALL,
    )
    # timm's own converter, independent of partbench's, folds the class position embedding.
    model.load_state_dict(checkpoint_filter_fn(dict(sd), model), strict=True)
    return model.eval()


Case = tuple[Callable[[], object], Callable[[object], nn.Module]]
CASES: dict[str, tuple[str, Case]] = {
    "deit": ("deit", (cf.deit_file, lambda o: vit_reference(strip(o["model"], "", ("head.",))))),
    "mocov3": (
        "mocov3",
        (
            cf.mocov3_file,
            lambda o: vit_reference(strip(o["state_dict"], "module.base_encoder.", ("head.",))),
        ),
    ),
    "dino-full": (
        "dino",
        (cf.dino_full_file, lambda o: vit_reference(strip(o["teacher"], "backbone."))),
    ),
    "dino-backbone": ("dino", (cf.dino_backbone_file, lambda o: vit_reference(o))),
    "ibot-full": (
        "ibot",
        (
            functools.partial(cf.dino_full_file, ibot=True),
            lambda o: vit_reference(strip(o["teacher"], "backbone.", ("masked_embed",))),
        ),
    ),
    "ibot-teacher": ("ibot", (cf.ibot_teacher_file, lambda o: vit_reference(o["state_dict"]))),
    "mae": ("mae", (cf.mae_file, lambda o: vit_reference(o["model"]))),
    "mae-full": (
        "mae",
        (
            functools.partial(cf.mae_file, full=True),
            lambda o: vit_reference(strip(o["model"], "", ("mask_token", "decoder_"))),
        ),
    ),
    "beit": (
        "beit",
        (
            cf.beit_file,
            lambda o: beit_reference(
                {
                    k: v
                    for k, v in o["model"].items()
                    if not k.startswith(("mask_token", "lm_head.", "cls_pt_layers."))
                    and not k.endswith("relative_position_index")
                }
            ),
        ),
    ),
    "cae": ("cae", (cf.cae_file, cae_reference)),
    "dinov2": ("dinov2", (cf.dinov2_file, lambda o: dinov2_reference(o))),
    "dinov2-reg4": (
        "dinov2-reg4",
        (functools.partial(cf.dinov2_file, registers=4), lambda o: dinov2_reference(o, 4)),
    ),
}


def tokens_of(out) -> torch.Tensor:
    """The final map's cells as (B, N, D) tokens, in the order of a ViT's patch tokens."""
    return out.final.flatten(2).transpose(1, 2)


def assert_same_tokens(encoder, reference: nn.Module, images: torch.Tensor) -> None:
    with torch.no_grad():
        out = encoder.forward(images)
        ref = reference.forward_features(images)
    prefix = reference.num_prefix_tokens
    torch.testing.assert_close(out.pooled, ref[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens_of(out), ref[:, prefix:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.prefix, ref[:, :prefix], rtol=1e-5, atol=1e-5)


# --- every encoder: strict load, same output as the hand-loaded reference ----------------


@pytest.mark.parametrize("case", list(CASES))
def test_official_format_loads_strictly_and_matches_reference(
    case: str, tmp_path: Path, images: torch.Tensor
) -> None:
    name, (make, reference) = CASES[case]
    obj = make()
    path = save(obj, tmp_path / f"{case}.pth")
    encoder = load_official(OFFICIAL[name], EncoderRequest(name=name, weights=path), geometry=SMALL)

    assert encoder.weights_id == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert encoder.family == OFFICIAL[name].family
    assert (encoder.mean, encoder.std) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert encoder.input_size == 224
    assert_same_tokens(encoder, reference(obj), images)
    patch = 14 if name.startswith("dinov2") else 16
    assert encoder.forward(images[:1]).grid == (224 // patch, 224 // patch)
    assert [(s.name, s.channels, s.stride) for s in encoder.stages] == [
        (f"blocks.{i}", SMALL["embed_dim"], patch) for i in range(SMALL["depth"])
    ]
    assert encoder.pooled_kind == "cls"
    assert encoder.num_registers == (4 if name == "dinov2-reg4" else 0)


def old_wrapper_outputs(model: nn.Module, images: torch.Tensor, blocks: tuple[int, ...]) -> dict:
    """What the ViT-only wrapper computed before stages existed (partbench 0.1's TimmEncoder):
    class token and patch tokens from forward_features, 1-based blocks from
    forward_intermediates(norm=False) as tokens."""
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    if blocks:
        final, inter = model.forward_intermediates(
            images, indices=[b - 1 for b in blocks], norm=False, output_fmt="NLC"
        )
    else:
        final, inter = model.forward_features(images), []
    patches = final[:, prefix:]
    return {"cls": final[:, 0], "patch_tokens": patches, "blocks": dict(zip(blocks, inter, strict=True))}


@pytest.mark.parametrize("case", list(CASES))
def test_new_outputs_equal_the_old_wrappers_exactly(case: str, tmp_path: Path, images: torch.Tensor) -> None:
    """Scores stay unchanged: class token, patch tokens, their mean and the blocks the study reads
    are bit for bit what the ViT-only wrapper gave, the blocks now as stages (block b = stage b-1)."""
    name, (make, _) = CASES[case]
    encoder = build_encoder(OFFICIAL[name], save(make(), tmp_path / f"{case}.pth"), geometry=SMALL)
    x = images[:1]
    with torch.no_grad():
        old = old_wrapper_outputs(encoder.model, x, (1, 2))
        plain = encoder.forward(x)
        staged = encoder.forward(x, stages=(encoder.stage_at(0.5), encoder.stage_at(1.0)))
    for out in (plain, staged):
        assert torch.equal(out.pooled, old["cls"])
        assert torch.equal(tokens_of(out), old["patch_tokens"])
        assert torch.equal(out.embedding, old["patch_tokens"].mean(dim=1))
    assert sorted(staged.stages) == [0, 1] and plain.stages == {}
    for block, tokens in old["blocks"].items():
        assert torch.equal(staged.stages[block - 1].flatten(2).transpose(1, 2), tokens)
    if encoder.has_projection:
        assert torch.equal(staged.projection, encoder.module.head(old["cls"]))


def test_all_eight_are_registered_with_family_and_weights_status(_isolated_home: Path) -> None:
    from partbench.plugins import plugin_manager

    specs: dict = {}
    pm, _ = plugin_manager()
    pm.hook.register_encoders(register=lambda s: specs.setdefault(s.name, s))
    for name, family in EXPECTED.items():
        assert specs[name].family == family
        assert specs[name].weights_source
        assert specs[name].weights_present() is False
    cache = _isolated_home / "weights"
    cache.mkdir(parents=True)
    (cache / "mae_pretrain_vit_base.pth").write_bytes(b"x")
    (cache / "dino_vitbase16_pretrain.pth").write_bytes(b"x")
    assert specs["mae"].weights_present() is True
    assert specs["dino"].weights_present() is True  # the backbone-only release counts too
    assert specs["deit"].weights_present() is False


def test_the_table_imports_neither_timm_nor_the_models() -> None:
    code = "import sys, partbench.encoders.official as o; o.official_specs(); print('timm' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_intermediate_blocks_match_reference(tmp_path: Path, images: torch.Tensor) -> None:
    for name, make, reference in (
        ("beit", cf.beit_file, CASES["beit"][1][1]),
        ("dinov2", cf.dinov2_file, CASES["dinov2"][1][1]),
    ):
        obj = make()
        encoder = build_encoder(OFFICIAL[name], save(obj, tmp_path / f"{name}.pth"), geometry=SMALL)
        ref = reference(obj)
        with torch.no_grad():
            out = encoder.forward(images, stages=(0, 1))
            _, inter = ref.forward_intermediates(images, indices=[0, 1], norm=False, output_fmt="NCHW")
        for got, want in zip((out.stages[0], out.stages[1]), inter, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# --- teacher, student, momentum ----------------------------------------------------------


def _cls(encoder, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return encoder.forward(images).pooled


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_dino_and_ibot_use_the_teacher_not_the_student(
    name: str, tmp_path: Path, images: torch.Tensor
) -> None:
    obj = cf.dino_full_file(ibot=name == "ibot")
    path = save(obj, tmp_path / "full.pth")
    drop = ("masked_embed",)
    teacher_ref = vit_reference(strip(obj["teacher"], "backbone.", drop))
    student_ref = vit_reference(strip(obj["student"], "module.backbone.", drop))

    teacher = build_encoder(OFFICIAL[name], path, geometry=SMALL)
    student = build_encoder(OFFICIAL[name], path, role="student", geometry=SMALL)
    assert_same_tokens(teacher, teacher_ref, images)
    assert_same_tokens(student, student_ref, images)
    assert not torch.allclose(_cls(teacher, images), _cls(student, images), atol=1e-3)
    # The heads differ too: each comes from its own network.
    assert not torch.allclose(
        teacher.module.head.last_layer.weight_v, student.module.head.last_layer.weight_v
    )
    torch.testing.assert_close(
        teacher.module.head.last_layer.weight_v, obj["teacher"]["head.last_layer.weight_v"]
    )


def test_mocov3_uses_the_base_encoder_not_the_momentum_encoder(tmp_path: Path, images: torch.Tensor) -> None:
    obj = cf.mocov3_file()
    path = save(obj, tmp_path / "moco.pth.tar")
    base_ref = vit_reference(strip(obj["state_dict"], "module.base_encoder.", ("head.",)))
    momentum_ref = vit_reference(strip(obj["state_dict"], "module.momentum_encoder.", ("head.",)))

    base = build_encoder(OFFICIAL["mocov3"], path, geometry=SMALL)
    momentum = build_encoder(OFFICIAL["mocov3"], path, role="momentum", geometry=SMALL)
    assert_same_tokens(base, base_ref, images)
    assert_same_tokens(momentum, momentum_ref, images)
    assert not torch.allclose(_cls(base, images), _cls(momentum, images), atol=1e-3)
    torch.testing.assert_close(
        base.module.head[0].weight, obj["state_dict"]["module.base_encoder.head.0.weight"]
    )


# --- projection heads, against hand-written forwards -------------------------------------


def _bn_eval(x: torch.Tensor, sd: dict, prefix: str) -> torch.Tensor:
    y = (x - sd[prefix + "running_mean"]) / torch.sqrt(sd[prefix + "running_var"] + 1e-5)
    if prefix + "weight" in sd:
        y = y * sd[prefix + "weight"] + sd[prefix + "bias"]
    return y


def test_mocov3_projection_is_the_projector_in_eval_mode(tmp_path: Path, images: torch.Tensor) -> None:
    obj = cf.mocov3_file()
    encoder = build_encoder(OFFICIAL["mocov3"], save(obj, tmp_path / "m.pth.tar"), geometry=SMALL)
    sd = strip(obj["state_dict"], "module.base_encoder.head.")
    encoder.eval()
    with torch.no_grad():
        out = encoder.forward(images)
    h = out.pooled
    h = torch.relu(_bn_eval(h @ sd["0.weight"].T, sd, "1."))
    h = torch.relu(_bn_eval(h @ sd["3.weight"].T, sd, "4."))
    h = _bn_eval(h @ sd["6.weight"].T, sd, "7.")
    assert out.projection is not None and out.projection.shape == (2, cf.MOCO_HEAD_SMALL[1])
    torch.testing.assert_close(out.projection, h, rtol=1e-4, atol=1e-5)
    assert encoder.describe()["has_projection"] is True


@pytest.mark.parametrize("name", ["dino", "ibot"])
def test_dino_and_ibot_projection_is_the_teacher_head(
    name: str, tmp_path: Path, images: torch.Tensor
) -> None:
    obj = cf.dino_full_file(ibot=name == "ibot")
    encoder = build_encoder(OFFICIAL[name], save(obj, tmp_path / "full.pth"), geometry=SMALL)
    sd = strip(obj["teacher"], "head.")
    with torch.no_grad():
        out = encoder.forward(images)
    h = F.gelu(out.pooled @ sd["mlp.0.weight"].T + sd["mlp.0.bias"])
    h = F.gelu(h @ sd["mlp.2.weight"].T + sd["mlp.2.bias"])
    h = h @ sd["mlp.4.weight"].T + sd["mlp.4.bias"]
    h = h / h.norm(dim=1, keepdim=True)
    v = sd["last_layer.weight_v"]
    weight = sd["last_layer.weight_g"] * v / v.norm(dim=1, keepdim=True)
    expected = h @ weight.T
    assert out.projection is not None and out.projection.shape == (2, cf.DINO_HEAD_SMALL[2])
    torch.testing.assert_close(out.projection, expected, rtol=1e-4, atol=1e-5)
    if name == "ibot":  # the patch-token head (last_layer2) is not the projection
        v2 = sd["last_layer2.weight_v"]
        other = h @ (sd["last_layer2.weight_g"] * v2 / v2.norm(dim=1, keepdim=True)).T
        assert not torch.allclose(out.projection, other, atol=1e-3)


@pytest.mark.parametrize("case", ["dino-backbone", "ibot-teacher", "deit", "mae", "beit"])
def test_no_projection_without_a_head_in_the_file(case: str, tmp_path: Path) -> None:
    name, (make, _) = CASES[case]
    encoder = build_encoder(OFFICIAL[name], save(make(), tmp_path / "w.pth"), geometry=SMALL)
    assert encoder.has_projection is False
    assert encoder.forward(torch.zeros(1, 3, 224, 224)).projection is None


# --- damaged and wrong files -------------------------------------------------------------


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    good = save(cf.mae_file(), tmp_path / "good.pth")
    bad = tmp_path / "mae_truncated.pth"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint") as err:
        load_official(OFFICIAL["mae"], EncoderRequest(name="mae", weights=bad), geometry=SMALL)
    assert str(bad) in str(err.value)


def test_wrong_format_lists_missing_and_unexpected_keys(tmp_path: Path) -> None:
    path = save(cf.mae_file(), tmp_path / "mae_given_to_beit.pth")
    with pytest.raises(CheckpointError) as err:
        build_encoder(OFFICIAL["beit"], path, geometry=SMALL)
    msg = str(err.value)
    assert str(path) in msg
    # Eight keys are shown per list, then the count.
    assert "missing keys: blocks.0.attn.q_bias" in msg and "(9 in all)" in msg
    assert "unexpected keys" in msg and "pos_embed" in msg and "blocks.0.attn.qkv.bias" in msg


def test_wrong_width_is_reported_as_wrong_shape(tmp_path: Path) -> None:
    path = save(cf.deit_file({"embed_dim": 24, "depth": 2, "num_heads": 3}), tmp_path / "d.pth")
    with pytest.raises(
        CheckpointError,
        match=r"wrong shape keys: blocks\.0\.attn\.proj\.bias \(24,\) \(expected \(48,\)\)",
    ):
        build_encoder(OFFICIAL["deit"], path, geometry=SMALL)


def test_missing_tensor_is_not_loaded_partially(tmp_path: Path) -> None:
    obj = cf.dino_full_file()
    del obj["teacher"]["backbone.blocks.1.mlp.fc2.bias"]
    obj["teacher"]["backbone.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        build_encoder(OFFICIAL["dino"], save(obj, tmp_path / "d.pth"), geometry=SMALL)
    assert "missing keys: blocks.1.mlp.fc2.bias" in str(err.value)
    assert "unexpected keys: extra.weight" in str(err.value)
    assert "teacher" in str(err.value)


def test_damaged_head_is_an_error_not_a_missing_projection(tmp_path: Path) -> None:
    obj = cf.dino_full_file()
    del obj["teacher"]["head.last_layer.weight_g"]
    with pytest.raises(CheckpointError, match=r"projection head.*missing keys: last_layer\.weight_g"):
        build_encoder(OFFICIAL["dino"], save(obj, tmp_path / "d.pth"), geometry=SMALL)


def test_full_checkpoint_without_the_teacher_names_what_it_has(tmp_path: Path) -> None:
    obj = cf.dino_full_file()
    del obj["teacher"]
    with pytest.raises(CheckpointError, match=r"expected a 'teacher' entry.*'student'"):
        build_encoder(OFFICIAL["dino"], save(obj, tmp_path / "d.pth"), geometry=SMALL)


def test_wrong_prefix_says_what_was_looked_for(tmp_path: Path) -> None:
    obj = cf.mocov3_file()
    obj["state_dict"] = strip(obj["state_dict"], "module.")  # saved without DDP's "module."
    with pytest.raises(CheckpointError, match=r"no keys start with 'module\.base_encoder\.'"):
        build_encoder(OFFICIAL["mocov3"], save(obj, tmp_path / "m.pth.tar"), geometry=SMALL)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_needing_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": cf.vit_tensors(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_official(OFFICIAL["mae"], EncoderRequest(name="mae", weights=path), geometry=SMALL)
    assert str(path) in str(err.value)
    # Full DINO files are read with argparse.Namespace allowed; that admits nothing else.
    with pytest.raises(CheckpointError, match="refused"):
        build_encoder(OFFICIAL["dino"], path, geometry=SMALL)
    assert not marker.exists()


def test_dino_full_checkpoint_needs_namespace_allowed(tmp_path: Path) -> None:
    from partbench.encoders.checkpoints import read_checkpoint

    path = save(cf.dino_full_file(), tmp_path / "full.pth")
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(path)
    assert read_checkpoint(path, allow_namespace=True)["args"].arch == "vit_base"


# --- where the weights come from ---------------------------------------------------------


def _cache(home: Path) -> Path:
    (home / "weights").mkdir(parents=True, exist_ok=True)
    return home / "weights"


def _no_download(url: str, dest: Path, *_: object, **__: object) -> str:
    raise AssertionError(f"unexpected download of {url}")


def test_explicit_weights_win_over_the_cache(
    _isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(official, "download", _no_download)
    cached = save(cf.mae_file(seed=1), _cache(_isolated_home) / "mae_pretrain_vit_base.pth")
    explicit = save(cf.mae_file(seed=5), tmp_path / "mine.pth")
    assert resolve_weights(OFFICIAL["mae"], explicit) == explicit
    assert resolve_weights(OFFICIAL["mae"]) == cached
    enc = load_official(OFFICIAL["mae"], EncoderRequest(name="mae"), geometry=SMALL)
    assert enc.weights_id == "sha256:" + hashlib.sha256(cached.read_bytes()).hexdigest()
    with pytest.raises(PartbenchError, match="no such file"):
        resolve_weights(OFFICIAL["mae"], tmp_path / "absent.pth")


def test_cache_prefers_the_file_with_the_head(_isolated_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(official, "download", _no_download)
    cache = _cache(_isolated_home)
    backbone = save(cf.dino_backbone_file(), cache / "dino_vitbase16_pretrain.pth")
    assert resolve_weights(OFFICIAL["dino"]) == backbone
    full = save(cf.dino_full_file(), cache / "dino_vitbase16_pretrain_full_checkpoint.pth")
    assert resolve_weights(OFFICIAL["dino"]) == full
    assert load_official(OFFICIAL["dino"], EncoderRequest(name="dino"), geometry=SMALL).has_projection


@pytest.mark.parametrize(("name", "where"), [("beit", "microsoft/unilm"), ("cae", "1wwhg7nj2G")])
def test_no_stable_url_says_where_to_put_the_file(
    name: str, where: str, _isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(official, "download", _no_download)
    with pytest.raises(PartbenchError) as err:
        load_official(OFFICIAL[name], EncoderRequest(name=name))
    dest = _isolated_home / "weights" / OFFICIAL[name].files[0].filename
    assert str(dest) in str(err.value) and where in str(err.value)
    assert "--weights" in str(err.value)


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """A tiny HTTP server on 127.0.0.1 serving ``root``; ``hits`` records the paths asked for."""
    root, hits = tmp_path / "served", []
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, hits
    finally:
        server.shutdown()
        server.server_close()


def _served_entry(name: str, url: str) -> official.OfficialEncoder:
    entry = OFFICIAL[name]
    files = tuple(dataclasses.replace(f, url=f"{url}/{f.filename}") for f in entry.files)
    return dataclasses.replace(entry, files=files)


def test_download_into_the_cache_once(
    _isolated_home: Path, http_root: tuple[str, Path, list[str]], images: torch.Tensor
) -> None:
    url, root, hits = http_root
    obj = cf.dino_full_file()
    served = save(obj, root / "dino_vitbase16_pretrain_full_checkpoint.pth")
    entry = _served_entry("dino", url)

    encoder = load_official(entry, EncoderRequest(name="dino"), geometry=SMALL)
    cached = _isolated_home / "weights" / "dino_vitbase16_pretrain_full_checkpoint.pth"
    digest = hashlib.sha256(served.read_bytes()).hexdigest()
    assert cached.read_bytes() == served.read_bytes()
    assert (cached.parent / (cached.name + ".sha256")).read_text().split()[0] == digest
    assert encoder.weights_id == f"sha256:{digest}"
    assert encoder.has_projection
    assert_same_tokens(encoder, vit_reference(strip(obj["teacher"], "backbone.")), images)
    assert entry.weights_present()
    load_official(entry, EncoderRequest(name="dino"), geometry=SMALL)
    assert hits == ["/dino_vitbase16_pretrain_full_checkpoint.pth"]  # the second run used the cache
    assert [p.name for p in cached.parent.iterdir() if p.name.endswith(".part")] == []


def test_failed_download_names_the_file_and_the_url(
    _isolated_home: Path, http_root: tuple[str, Path, list[str]]
) -> None:
    url, _, _ = http_root  # nothing served: HTTP 404
    entry = _served_entry("mae", url)
    with pytest.raises(PartbenchError) as err:
        resolve_weights(entry)
    dest = _isolated_home / "weights" / "mae_pretrain_vit_base.pth"
    assert str(dest) in str(err.value) and f"{url}/mae_pretrain_vit_base.pth" in str(err.value)
    assert list(dest.parent.iterdir()) == []


def test_unreachable_host_is_a_clear_error(_isolated_home: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = _served_entry("deit", f"http://127.0.0.1:{port}")
    with pytest.raises(PartbenchError, match=r"downloading http://127\.0\.0\.1.*failed") as err:
        load_official(entry, EncoderRequest(name="deit"))
    assert "deit_base_patch16_224-b5f2ef4d.pth" in str(err.value)
    assert "--weights" in str(err.value)


def test_a_download_that_does_not_build_is_discarded(
    _isolated_home: Path, http_root: tuple[str, Path, list[str]]
) -> None:
    url, root, _ = http_root
    save(cf.mae_file(), root / "dino_vitbase16_pretrain_full_checkpoint.pth")  # not a DINO file
    with pytest.raises(PartbenchError, match=r"dino: weights not found.*discarded.*expected a 'teacher'"):
        load_official(_served_entry("dino", url), EncoderRequest(name="dino"), geometry=SMALL)
    assert list((_isolated_home / "weights").iterdir()) == []


def test_a_downloaded_file_changed_since_is_refused(
    _isolated_home: Path, http_root: tuple[str, Path, list[str]]
) -> None:
    url, root, _ = http_root
    save(cf.mae_file(), root / "mae_pretrain_vit_base.pth")
    entry = _served_entry("mae", url)
    cached = resolve_weights(entry)
    assert load_official(entry, EncoderRequest(name="mae"), geometry=SMALL).weights_id.startswith("sha256:")
    save(cf.mae_file(seed=9), cached)  # replaced after the download was verified
    with pytest.raises(CheckpointError, match=r"differs from the .* recorded when it was downloaded"):
        load_official(entry, EncoderRequest(name="mae"), geometry=SMALL)


def test_download_checks_the_hash_in_the_file_name(
    _isolated_home: Path, http_root: tuple[str, Path, list[str]]
) -> None:
    url, root, _ = http_root
    save(cf.deit_file(), root / "deit_base_patch16_224-b5f2ef4d.pth")  # not the real DeiT file
    with pytest.raises(PartbenchError, match="does not match the b5f2ef4d"):
        resolve_weights(_served_entry("deit", url))
    assert list((_isolated_home / "weights").iterdir()) == []


# --- full ViT-B shape ---------------------------------------------------------------------


def test_full_size_dinov2_through_the_registered_loader(tmp_path: Path) -> None:
    from partbench.plugins import plugin_manager

    specs: dict = {}
    pm, _ = plugin_manager()
    pm.hook.register_encoders(register=lambda s: specs.setdefault(s.name, s))
    obj = cf.dinov2_file(cf.VIT_B)
    assert obj["pos_embed"].shape == (1, 1370, 768)
    path = save(obj, tmp_path / "dinov2_vitb14_pretrain.pth")
    del obj
    encoder = specs["dinov2"].load(EncoderRequest(name="dinov2", weights=path))
    described = encoder.describe()
    assert described["stages"] == [[f"blocks.{i}", 768, 14] for i in range(12)]
    assert (described["input_size"], described["pooled_kind"], described["num_registers"]) == (224, "cls", 0)
    assert described["parameters"] == pytest.approx(86.6e6, rel=0.01)
    assert [encoder.stage_at(f) for f in (1 / 3, 1 / 2, 2 / 3, 1)] == [3, 5, 7, 11]  # blocks 4, 6, 8, 12
    with torch.no_grad():
        out = encoder.forward(torch.randn(1, 3, 224, 224))
    assert out.grid == (16, 16) and out.final.shape == (1, 768, 16, 16) and out.pooled.shape == (1, 768)


def test_mae_study_shuffle_is_a_seeded_permutation_of_the_patches(
    tmp_path: Path, images: torch.Tensor
) -> None:
    """The study's MAE shuffles the patch embeddings before adding the position embeddings: the
    same as plain MAE on an image whose 16 px patches were permuted, with a permutation drawn
    from the seed (the same seed gives the same features)."""
    path = save(cf.mae_file(), tmp_path / "mae.pth")

    def shuffled(seed: int):
        request = EncoderRequest(name="mae-study-shuffle", weights=path, seed=seed)
        return official.load_study_shuffle(request, geometry=SMALL)

    plain = load_official(OFFICIAL["mae"], EncoderRequest(name="mae", weights=path), geometry=SMALL)
    with torch.no_grad():
        a, again, other = (shuffled(s).forward(images) for s in (3, 3, 4))
        base = plain.forward(images)
        b, n = images.shape[0], (224 // 16) ** 2
        order = torch.rand((b, n), generator=torch.Generator().manual_seed(3)).argsort(dim=1)
        patches = images.reshape(b, 3, 14, 16, 14, 16).permute(0, 2, 4, 1, 3, 5).reshape(b, n, 3, 16, 16)
        moved = patches[torch.arange(b)[:, None], order]  # slot k holds patch order[k]
        permuted = moved.reshape(b, 14, 14, 3, 16, 16).permute(0, 3, 1, 4, 2, 5).reshape(b, 3, 224, 224)
        expected = plain.forward(permuted)
    assert torch.equal(a.final, again.final) and torch.equal(a.pooled, again.pooled)
    torch.testing.assert_close(a.final, expected.final, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.pooled, expected.pooled, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a.final, other.final, atol=1e-3)
    # Content meets other positions, so even the mean over tokens moves: not a reordering of MAE's
    # own tokens, which would leave it (and the class token) where it was.
    assert not torch.allclose(a.embedding, base.embedding, atol=1e-3)
    assert not torch.allclose(a.pooled, base.pooled, atol=1e-3)
    assert shuffled(3).describe()["version"].endswith("+study-patch-shuffle:seed=3")
