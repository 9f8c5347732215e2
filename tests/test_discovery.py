"""part-discovery: NMI and ARI against scikit-learn, the Hungarian matching against every
permutation, the task's mIoU against a pixel loop on planted features, and its chance level
against every random partition of a small case."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from partbench.datasets.base import IGNORE, Dataset
from partbench.features import Features
from partbench.metrics import score_from_items
from partbench.metrics.chance import chance_miou
from partbench.store.values import encode_items
from partbench.tasks.discovery import (
    PartDiscovery,
    ari,
    chance_partition_miou,
    kmeans,
    match_clusters,
    nmi,
)

CPU = torch.device("cpu")


@pytest.mark.parametrize("seed", range(8))
def test_nmi_and_ari_equal_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    a = rng.integers(0, int(rng.integers(1, 6)), n)
    b = rng.integers(0, int(rng.integers(1, 6)), n) * 7  # label values need not be 0..k-1
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-6)
    assert ari(a, b) == pytest.approx(adjusted_rand_score(a, b), abs=1e-6)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([0, 0, 0], [1, 1, 1]),
        ([0, 1, 2], [5, 6, 7]),
        ([0, 0, 1, 1], [0, 1, 0, 1]),
        ([3], [4]),
        ([0, 0, 1], [2, 2, 2]),
    ],
)
def test_nmi_and_ari_edge_cases_match_scikit_learn(a, b):
    assert nmi(np.array(a), np.array(b)) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-6)
    assert ari(np.array(a), np.array(b)) == pytest.approx(adjusted_rand_score(a, b), abs=1e-6)


@pytest.mark.parametrize("shape", [(3, 3), (2, 4), (4, 2), (5, 5)])
def test_hungarian_matching_maximises_overlap_over_every_permutation(shape):
    rng = np.random.default_rng(sum(shape))
    overlap = rng.integers(0, 50, shape).astype(float)
    got = match_clusters(overlap)
    assert len(got) == min(shape) and len(set(got.values())) == len(got)
    best = 0.0
    rows, cols = shape
    for chosen in itertools.permutations(range(cols), min(rows, cols)) if rows <= cols else []:
        best = max(best, sum(overlap[r, c] for r, c in enumerate(chosen)))
    for chosen in itertools.permutations(range(rows), cols) if rows > cols else []:
        best = max(best, sum(overlap[r, c] for c, r in enumerate(chosen)))
    assert sum(overlap[r, c] for r, c in got.items()) == pytest.approx(best, abs=1e-6)


def test_kmeans_separates_separable_points_deterministically():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.05, (10, 2)) for c in ([0, 0], [5, 0], [0, 5])])
    one = kmeans(x, 3, np.random.default_rng(1))
    assert len(set(one[:10])) == len(set(one[10:20])) == len(set(one[20:])) == 1 and len(set(one)) == 3
    np.testing.assert_array_equal(one, kmeans(x, 3, np.random.default_rng(1)))


class _Parts(Dataset):
    name = "toy"
    part_seg_classes = ("body", "head", "tail", "wing")


def _planted(n: int, seed: int):
    """Each object patch's feature is its part's direction; masks at 3 pixels a patch, with
    a background of ignored pixels and a stray pixel of another part in some patches."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for _ in range(n):
        cls = rng.integers(0, 3, (4, 4))
        fmap = np.eye(4, 6)[cls] * 3 + 0.01 * rng.normal(size=(4, 4, 6))
        mask = np.kron(cls, np.ones((3, 3), dtype=np.int64))
        mask[:3, :3] = IGNORE  # patch (0, 0) is background: not clustered
        mask[5, 5] = 3  # a "wing" pixel no cluster owns
        maps.append(fmap)
        masks.append(mask.astype(np.uint8))
    return np.stack(maps), masks


def _features(maps, masks):
    n, h, w, c = maps.shape
    tokens = np.concatenate([np.zeros((n, 2, c)), maps.reshape(n, h * w, c)], axis=1)
    return Features(
        arrays={"tokens": torch.as_tensor(tokens, dtype=torch.float32)},
        labels=np.zeros(n, dtype=np.int64),
        grid=(h, w),
        masks={"part-masks": masks},
    )


def test_discovery_miou_equals_a_pixel_loop_on_planted_parts():
    maps, masks = _planted(5, 0)
    res = PartDiscovery({"stage": -1, "clusters": 0}).evaluate(
        {"test": _features(maps, masks)}, _Parts(), device=CPU, seed=0
    )
    # Patches are pure parts, so the clusters are the parts: every labelled pixel of a
    # clustered patch is right except the stray wing pixel, and the background patch's
    # pixels (ignored) count nowhere.
    inter = np.zeros(4)
    union = np.zeros(4)
    for m, fmap in zip(masks, maps, strict=True):
        part_of_patch = fmap[..., :4].argmax(-1)
        for y in range(12):
            for x in range(12):
                t = int(m[y, x])
                if t == IGNORE:
                    continue
                p = int(part_of_patch[y // 3, x // 3]) if (y // 3, x // 3) != (0, 0) else -1
                if p == t:
                    inter[t] += 1
                    union[t] += 1
                else:
                    union[t] += 1
                    if p >= 0:
                        union[p] += 1
    present = union > 0
    want = 100 * float(np.mean(inter[present] / union[present]))
    assert res.metrics["mIoU"].value == pytest.approx(want, abs=1e-6)
    assert score_from_items("mIoU", res.items) == pytest.approx(want, abs=1e-6)
    assert res.metrics["NMI"].value == pytest.approx(100.0) and res.metrics["ARI"].value == pytest.approx(
        100.0
    )
    assert 0 < res.chance["mIoU"] < want
    encode_items(res.items)  # the store takes these names and types


def test_a_fixed_k_splits_parts_and_lowers_the_score():
    maps, masks = _planted(5, 1)
    f = {"test": _features(maps, masks)}
    free = PartDiscovery({"stage": -1, "clusters": 0}).evaluate(f, _Parts(), device=CPU, seed=0)
    one = PartDiscovery({"stage": -1, "clusters": 1}).evaluate(f, _Parts(), device=CPU, seed=0)
    assert one.metrics["mIoU"].value < free.metrics["mIoU"].value
    assert one.metrics["ARI"].value == pytest.approx(0.0)  # one cluster against several parts


def _pixel_miou(cells: list[np.ndarray], assigns: list[np.ndarray]) -> float:
    """mIoU over images, pixel by pixel: a patch of counts (c0, c1, ...) holds c0 pixels of
    class 0 and so on; clusters matched to classes by scipy's assignment."""
    classes = cells[0].shape[1]
    inter, union = np.zeros(classes), np.zeros(classes)
    for counts, assign in zip(cells, assigns, strict=True):
        overlap = np.zeros((assign.max() + 1, classes))
        for patch, cluster in enumerate(assign):
            overlap[cluster] += counts[patch]
        rows, cols = linear_sum_assignment(overlap, maximize=True)
        matched = dict(zip(rows.tolist(), cols.tolist(), strict=True))
        for patch, cluster in enumerate(assign):
            for truth in range(classes):
                for _ in range(int(counts[patch, truth])):
                    pred = matched.get(int(cluster), -1)
                    inter[truth] += pred == truth
                    union[truth] += 1
                    if pred >= 0 and pred != truth:
                        union[pred] += 1
    present = union > 0
    return 100 * float(np.mean(inter[present] / union[present]))


def test_the_chance_level_is_the_mean_over_every_random_partition():
    # Two images, object patches with pixel counts per part class; k = 2 and 3 clusters.
    cells = [
        np.array([[4.0, 0, 0], [3, 1, 0], [0, 5, 0]]),
        np.array([[2.0, 0, 2], [0, 0, 6], [1, 4, 0], [0, 3, 1]]),
    ]
    ks = [2, 3]
    scores = [
        _pixel_miou(cells, [np.array(a), np.array(b)])
        for a in itertools.product(range(2), repeat=3)
        for b in itertools.product(range(3), repeat=4)
    ]
    exact, spread = float(np.mean(scores)), float(np.std(scores))
    draws = 4000
    level = chance_partition_miou(cells, ks, seed=0, draws=draws)
    assert level == pytest.approx(exact, abs=4 * spread / np.sqrt(draws))
    assert chance_partition_miou(cells, ks, seed=0, draws=50) == chance_partition_miou(
        cells, ks, seed=0, draws=50
    )  # seeded: a run's level is fixed
    # Above the best constant label map, which the Hungarian step lets random clusters beat.
    assert level > chance_miou(sum(c.sum(0) for c in cells))
