"""Segmentation at a chosen resolution: the study's sliding windows (positions and logit
averaging against a brute-force reference), the resolution options and their preset, and
encoders run at another input size."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from partbench import windows
from partbench.encoders.timm_adapter import TimmEncoder
from partbench.errors import PartbenchError
from partbench.plugins import registry
from partbench.tasks.segmentation import _logits, resolution_transforms, slide_logits

CPU = torch.device("cpu")


def _mmseg_corners(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """mmseg's slide_inference loop, written out as it is there."""
    h_grids = max(h - crop + stride - 1, 0) // stride + 1
    w_grids = max(w - crop + stride - 1, 0) // stride + 1
    out = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y1, x1 = h_idx * stride, w_idx * stride
            y2, x2 = min(y1 + crop, h), min(x1 + crop, w)
            out.append((max(y2 - crop, 0), max(x2 - crop, 0)))
    return out


@pytest.mark.parametrize("crop,stride", [(512, 341), (320, 213), (8, 5), (8, 8), (7, 3)])
def test_window_positions_are_mmseg_s_and_cover_every_pixel(crop: int, stride: int) -> None:
    for h in range(crop, 3 * crop + 7, max(1, crop // 7)):
        for w in (crop, crop + 1, 2 * crop - 1, 3 * crop + 5):
            corners = windows.windows(h, w, crop, stride)
            assert corners == _mmseg_corners(h, w, crop, stride)
            covered = np.zeros((h, w), dtype=int)
            for y, x in corners:
                assert y >= 0 and y + crop <= h and x >= 0 and x + crop <= w
                covered[y : y + crop, x : x + crop] += 1
            assert covered.min() >= 1


def test_study_windows_on_an_ade20k_sized_image() -> None:
    # A 683 x 512 image at short side 512: two windows across, the second pulled back to end
    # on the border (171, not 341).
    assert windows.scaled_size(512, 683, 512) == (512, 683)
    assert windows.windows(512, 683, 512, 341) == [(0, 0), (0, 171)]
    # A short side below 512 is scaled up; a very long image is held to four times 512.
    assert windows.scaled_size(256, 400, 512) == (512, 800)
    assert windows.scaled_size(100, 1000, 512) == (512, 2048)


def test_slide_logits_equal_a_per_pixel_brute_force() -> None:
    torch.manual_seed(0)
    classes, dim, grid = 3, 5, (2, 2)
    head = nn.Sequential(nn.Identity(), nn.Linear(dim, classes))
    g = windows.parse("slide-12-8-5")
    shape = (11, 17)  # the label map; resized to short side 12
    height, width = windows.scaled_size(*shape, 12)
    corners = windows.windows(height, width, 8, 5)
    feats = torch.randn(len(corners), grid[0] * grid[1], dim)
    got = slide_logits(head, feats, grid, g, shape)

    canvas = np.zeros((classes, height, width))
    for y in range(height):
        for x in range(width):
            total, n = np.zeros(classes), 0
            for k, (top, left) in enumerate(corners):
                if top <= y < top + 8 and left <= x < left + 8:
                    up = _logits(head, feats[k : k + 1], grid, (8, 8))[0]
                    total += up[:, y - top, x - left].detach().numpy()
                    n += 1
            canvas[:, y, x] = total / n
    want = F.interpolate(
        torch.as_tensor(canvas)[None].float(), size=shape, mode="bilinear", align_corners=False
    )
    assert got.shape == (classes, *shape)
    torch.testing.assert_close(got, want[0], rtol=1e-5, atol=1e-5)


def test_slide_logits_refuse_features_with_the_wrong_window_count() -> None:
    head = nn.Sequential(nn.Identity(), nn.Linear(4, 2))
    with pytest.raises(PartbenchError, match="has 2 windows"):
        slide_logits(head, torch.zeros(3, 4, 4), (2, 2), windows.parse("slide-8-8-5"), (8, 12))


def test_transforms_cut_the_windows_the_scoring_reads() -> None:
    image = np.random.default_rng(0).integers(0, 255, (30, 50, 3), dtype=np.uint8)
    g = windows.parse("slide-24-16-10")
    cut = windows.apply(image, g)
    assert len(cut) == len(windows.windows(*windows.scaled_size(30, 50, 24), 16, 10))
    assert all(c.shape == (16, 16, 3) for c in cut)
    crop = windows.parse("crop-24-16")
    assert windows.apply(image, crop)[0].shape == (16, 16, 3)
    mask = np.zeros((30, 50), dtype=np.uint8)
    mask[:, 25:] = 1  # left half 0, right half 1: the centre window straddles the middle
    cropped = windows.crop_mask(mask, crop)
    assert cropped.shape == (16, 16) and cropped[:, 0].max() == 0 and cropped[:, -1].min() == 1
    assert windows.apply(image, windows.parse("test-40"))[0].shape == (40, 40, 3)
    for bad in ("slide-8-16-4", "slide-8-8", "crop-x-8", "zoom-8"):
        with pytest.raises(ValueError):
            windows.parse(bad)


def test_resolution_options_and_the_study_preset() -> None:
    spec = registry().task("part-seg")
    defaults = spec.defaults()
    assert resolution_transforms(defaults) == ("test", "test")
    study = {**defaults, "protocol": "study"}
    assert resolution_transforms(study) == ("crop-512-512", "slide-512-512-341")
    assert resolution_transforms({**study, "window": 320}) == ("crop-320-320", "slide-320-320-213")
    assert resolution_transforms({**defaults, "input_size": 448}) == ("test-448", "test-448")
    assert resolution_transforms({**defaults, "window": 64, "input_size": 80, "stride": 32}) == (
        "crop-80-64",
        "slide-80-64-32",
    )
    with pytest.raises(PartbenchError, match="stride needs a window"):
        resolution_transforms({**defaults, "stride": 100})
    with pytest.raises(PartbenchError, match="below the window"):
        resolution_transforms({**study, "input_size": 256})
    # At their defaults the new options stay out of the configuration hash, so stored default
    # runs keep their hashes; set, they enter it.
    new = {"protocol", "input_size", "window", "stride"}
    for name in ("part-seg", "object-seg"):
        s = registry().task(name)
        assert new <= set(s.options)
        assert s.hashed_options(s.defaults()) == {k: v for k, v in s.defaults().items() if k not in new}
        assert s.hashed_options({**s.defaults(), "protocol": "study"})["protocol"] == "study"


def _vit(**kwargs) -> TimmEncoder:
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0, depth=2, **kwargs)
    return TimmEncoder(model.eval(), name="vit", family="none", weights_id="random-init:seed=0")


def test_an_encoder_at_512_reads_a_32_by_32_grid_with_resampled_position_embeddings() -> None:
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    enc = _vit()
    before = enc.model.pos_embed.detach().clone()
    big = enc.at_input_size(512)
    assert big.input_size == 512 and enc.input_size == 224 and enc.at_input_size(224) is enc
    torch.testing.assert_close(enc.model.pos_embed, before)  # the original is untouched
    want = resample_abs_pos_embed(before, new_size=(32, 32), old_size=(14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(big.model.pos_embed, want)
    with torch.inference_mode():
        out = big.forward(torch.randn(1, 3, 512, 512), stages=[0])
    assert out.grid == (32, 32) and out.stages[0].shape[-2:] == (32, 32)
    # A model built with dynamic_img_size resamples on every forward: only the size changes.
    dyn = _vit(dynamic_img_size=True).at_input_size(512)
    with torch.inference_mode():
        assert dyn.forward(torch.randn(1, 3, 512, 512)).grid == (32, 32)


def test_part_seg_runs_end_to_end_with_sliding_windows(tmp_path) -> None:
    """`partbench run -t part-seg -o window=... -o input_size=...`: the encoder runs at the
    window (position embeddings resampled), the train pass caches one window per image and
    the test pass every window, and the test images are scored whole."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "PARTBENCH_LOAD_PLUGINS"}
    env.update(PARTBENCH_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    db = f"sqlite:///{tmp_path / 'runs.db'}"

    def partbench(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "partbench", *args, "--db", db]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)

    opts = ("-o", "iterations=5", "-o", "window=64", "-o", "input_size=80")
    ran = partbench("run", "-e", "mini-random", "-t", "part-seg", "--limit", "6", *opts)
    assert ran.returncode == 0, ran.stderr + ran.stdout
    (run,) = json.loads(partbench("runs", "--format", "json").stdout)
    assert run["status"] == "done"
    views = run["config"]["views"]
    assert (views["train"]["transform"], views["test"]["transform"]) == ("crop-80-64", "slide-80-64-42")
    assert run["config"]["task"]["options"]["window"] == 64
    assert "protocol" not in run["config"]["task"]["options"]  # at its default: not hashed
    assert run["n_items"] == 6  # the test images, each scored from its four windows


def test_seg_fit_chunks_are_sized_from_free_device_memory(monkeypatch) -> None:
    """The L-BFGS chunking on a card, with its free memory faked: the features stay resident
    only when they fit half the free memory, and a chunk's images grow with the free memory,
    so that ADE20K-Part at 512 px (ViT-B/16: 32 x 32 tokens of 3,072 channels, 209 classes,
    loss maps of 128 x 128) streams in chunks of tens of images on an 80 GB card."""
    from partbench.tasks import segmentation
    from partbench.tasks.fitting import device_copy

    cuda = torch.device("cuda")
    free = {"bytes": 80 * 10**9}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * 10**9))
    values, pixels, classes = 1024 * 3072, 128 * 128, 209
    per_image = 4 * (3 * values + 12 * classes * pixels)
    chunk_bytes, keep_bytes = segmentation._lbfgs_budgets(cuda)
    assert (chunk_bytes, keep_bytes) == (free["bytes"] // 8, free["bytes"] // 4)
    chunk = segmentation.lbfgs_chunk_images(values, pixels, classes, chunk_bytes)
    assert chunk == chunk_bytes // per_image and 40 <= chunk <= 60
    free["bytes"] = 10 * 10**9  # less free memory: smaller chunks, never below the CPU budget
    small = segmentation.lbfgs_chunk_images(values, pixels, classes, segmentation._lbfgs_budgets(cuda)[0])
    assert 1 <= small < chunk and small * per_image <= free["bytes"] // 8
    free["bytes"] = 10**6
    assert segmentation._lbfgs_budgets(cuda) == (
        segmentation.LBFGS_CHUNK_BYTES,
        segmentation.LBFGS_RESIDENT_BYTES,
    )
    # 20,210 training maps of those features (127 GB in half precision) do not fit: streamed.
    features = torch.zeros(20_210, 1, 1, dtype=torch.float16).expand(20_210, 1024, 3072)
    free["bytes"] = 80 * 10**9
    assert device_copy(features, cuda) is None
    # On a CPU the chunk is the fixed budget's, whatever the machine's memory.
    cpu_chunk = segmentation.lbfgs_chunk_images(values, pixels, classes, segmentation._lbfgs_budgets(CPU)[0])
    assert cpu_chunk == 1
