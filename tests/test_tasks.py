"""Each task scores features the way the protocol says: checked on features whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from partbench.datasets.base import IGNORE, Dataset
from partbench.errors import PartbenchError
from partbench.features import Features
from partbench.metrics.items import score_from_items
from partbench.tasks.probes import AttentivePooler, Probe, attention_heads
from partbench.tasks.retrieval import Retrieval
from partbench.tasks.segmentation import Segmentation, study_stages

CPU = torch.device("cpu")


class Named(Dataset):
    name = "toy"
    object_classes = part_classes = ("a", "b", "c")
    part_seg_classes = object_seg_classes = ("a", "b", "c")


def _clustered(n: int, classes: int, noise: float, seed: int, dim: int = 16):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    return centres[labels] + noise * torch.randn(n, dim, generator=g), labels.numpy()


def _features(x, labels, **extra):
    return Features(arrays={"cls": x, "embedding": x, **extra}, labels=labels, grid=(1, 1))


def test_retrieval_scores_separable_features_perfectly_and_noise_lower():
    opts = {"feature": "embedding", "include_self": True}
    task, ds = Retrieval("keypoints", opts), Named()
    x, y = _clustered(60, 3, 0.1, 0)
    res = task.evaluate({"gallery": _features(x, y)}, ds, device=CPU, seed=0)
    assert res.metrics["mAP"].value == pytest.approx(100.0)
    assert res.n_items == 60 and res.items_per_class == {"a": 20, "b": 20, "c": 20}
    # Per-item results recompute the headline score; chance is that of random features.
    assert score_from_items("mAP", res.items) == pytest.approx(res.metrics["mAP"].value)
    assert res.items["ap"].shape == (60,) and 0 < res.chance["mAP"] < 50
    noisy = task.evaluate({"gallery": _features(*_clustered(60, 3, 8.0, 0))}, ds, device=CPU, seed=0)
    m = noisy.metrics["mAP"]
    assert m.value < 90 and m.ci_low < m.value < m.ci_high
    # Leaving the query out of its gallery can only lower AP when positives are scarce.
    out = Retrieval("keypoints", {**opts, "include_self": False}).evaluate(
        {"gallery": _features(*_clustered(60, 3, 8.0, 0))}, ds, device=CPU, seed=0
    )
    assert out.metrics["mAP"].value < m.value
    assert out.chance["mAP"] < res.chance["mAP"]


def test_retrieval_with_no_positive_anywhere_is_an_error_not_a_nan():
    x, y = _clustered(3, 3, 0.1, 0)
    task = Retrieval("keypoints", {"feature": "embedding", "include_self": False})
    with pytest.raises(PartbenchError, match="no query has a positive"):
        task.evaluate({"gallery": _features(x, y)}, Named(), device=CPU, seed=0)


def test_attentive_pooler_equals_multihead_attention():
    torch.manual_seed(0)
    dim, heads = 24, 4
    pool = AttentivePooler(dim, heads)
    ref = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([pool.q.weight, pool.k.weight, pool.v.weight]))
        for lin in (pool.q, pool.k, pool.v, pool.out):
            lin.bias.normal_()
        ref.in_proj_bias.copy_(torch.cat([pool.q.bias, pool.k.bias, pool.v.bias]))
        ref.out_proj.weight.copy_(pool.out.weight)
        ref.out_proj.bias.copy_(pool.out.bias)
    tokens = torch.randn(5, 7, dim)
    query = pool.query.expand(5, 1, dim)
    expected = ref(query, tokens, tokens, need_weights=False)[0][:, 0]
    assert torch.allclose(pool(tokens), expected, atol=1e-5)
    assert attention_heads(768) == 12 and attention_heads(128) == 8


PROBE_OPTS = {"feature": "cls", "epochs": 30, "lr": 0.1, "batch_size": 64, "report": "best-on-test"}


def test_linear_probe_learns_separable_features_and_repeats_report_spread():
    x, y = _clustered(90, 3, 0.5, 1)
    xt, yt = _clustered(60, 3, 0.5, 2)
    task = Probe("keypoints", "linear", PROBE_OPTS)
    feats = {"train": _features(x, y), "test": _features(xt, yt)}
    res = task.evaluate(feats, Named(), device=CPU, seed=0, repeats=3)
    assert res.metrics["top1"].value == pytest.approx(100.0)
    assert len(res.details["top1_repeats"]) == 3 and "top1_std" in res.details
    assert score_from_items("top1", res.items) == pytest.approx(100.0)
    assert res.chance["top1"] == pytest.approx(100 / 3)
    # Labels unrelated to the features: near chance, with an interval that says so.
    shuffled = {"train": _features(x, np.random.default_rng(0).permutation(y)), "test": _features(xt, yt)}
    last = Probe("keypoints", "linear", {**PROBE_OPTS, "report": "last"})
    res = last.evaluate(shuffled, Named(), device=CPU, seed=0)
    assert res.metrics["top1"].value < 75
    assert res.metrics["top1"].ci_high - res.metrics["top1"].ci_low > 5


def test_attentive_probe_finds_the_token_that_carries_the_class():
    # The class lives in one token out of eight, at a random place; the rest is noise.
    def tokens(n, seed):
        g = torch.Generator().manual_seed(seed)
        x, y = _clustered(n, 3, 0.3, seed)
        t = torch.randn(n, 8, 16, generator=g)
        where = torch.randint(0, 8, (n,), generator=g)
        t[torch.arange(n), where] = x
        return t, y

    (tr, ytr), (te, yte) = tokens(300, 3), tokens(90, 4)
    feats = {"train": Features({"tokens": tr}, ytr, (1, 1)), "test": Features({"tokens": te}, yte, (1, 1))}
    opts = {"epochs": 40, "lr": 0.05, "batch_size": 64, "report": "best-on-test"}
    res = Probe("keypoints", "attentive", opts).evaluate(feats, Named(), device=CPU, seed=0)
    assert res.metrics["top1"].value > 85
    assert res.details["heads"] == 8


def test_segmentation_probe_maps_patch_features_to_pixels_and_ignores_255():
    rng = np.random.default_rng(0)

    def make(n):
        grids = rng.integers(0, 3, (n, 4, 4))
        masks = [np.kron(g, np.ones((4, 4), int)).astype(np.uint8) for g in grids]  # 16 x 16
        for m in masks:
            m[:2] = IGNORE
        x = torch.nn.functional.one_hot(torch.as_tensor(grids.reshape(n, 16)), 3).float()
        return Features(
            {"stages": x + 0.05 * torch.randn_like(x)}, np.zeros(n), (4, 4), masks={"part-masks": masks}
        )

    opts = {"iterations": 200, "lr": 0.05, "batch_size": 8}
    task = Segmentation("part-masks", opts)
    res = task.evaluate({"train": make(40), "test": make(20)}, Named(), device=CPU, seed=0)
    m = res.metrics["mIoU"]
    assert m.value > 80 and m.ci_low <= m.value <= m.ci_high
    assert res.n_items == 20 and set(res.items_per_class) == {"a", "b", "c"}
    assert res.items["intersection"].shape == (20, 3) == res.items["union"].shape
    assert score_from_items("mIoU", res.items) == pytest.approx(m.value)
    assert 0 < res.chance["mIoU"] < m.value


def test_channel_stats_match_torch_on_half_precision_features():
    from partbench.tasks.segmentation import channel_stats

    x = (torch.randn(37, 9, 5) * torch.arange(1, 6) + 3).half()
    mean, std = channel_stats(x, chunk=4)
    ref = x.float().flatten(0, 1)
    assert torch.allclose(mean, ref.mean(0), atol=1e-4)
    assert torch.allclose(std, ref.std(0, unbiased=False), atol=1e-4)


class _Staged:
    def __init__(self, depth: int):
        self.stages = tuple(range(depth))

    def stage_at(self, fraction: float) -> int:
        return max(0, round(fraction * len(self.stages)) - 1)


def test_segmentation_reads_the_study_blocks_as_shares_of_the_depth():
    # Blocks 4, 6, 8, 12 of a ViT-B (0-based 3, 5, 7, 11); 2, 3, 4, 6 of the 6-block mini.
    assert study_stages(_Staged(12)) == (3, 5, 7, 11)
    assert study_stages(_Staged(6)) == (1, 2, 3, 5)
    assert study_stages(_Staged(1)) == (0,)


def test_upsampling_channels_last_gives_the_same_values():
    from partbench.tasks.segmentation import _logits

    head = nn.Linear(8, 5)
    x = torch.randn(2, 16, 8)
    plain = torch.nn.functional.interpolate(
        head(x).transpose(1, 2).reshape(2, 5, 4, 4), size=(37, 29), mode="bilinear", align_corners=False
    )
    assert torch.equal(_logits(head, x, (4, 4), (37, 29)), plain)
