"""part-seg-nn / object-seg-nn: the kNN vote against a brute-force loop on a tiny bank, patch
label distributions, and mIoU counted as part-seg counts it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import partbench.tasks.incontext as incontext
from partbench.datasets.base import IGNORE, Dataset
from partbench.features import Features
from partbench.metrics import intersection_union, miou_from_counts, score_from_items
from partbench.tasks.incontext import InContextSegmentation, knn_vote, patch_labels, reached_cells

CPU = torch.device("cpu")


def _brute_vote(queries, bank, labels, k, temperature):
    out = []
    for q in queries:
        sims = []
        for b in bank:
            sims.append(float(q @ b) / (math.sqrt(float(q @ q)) * math.sqrt(float(b @ b))))
        order = sorted(range(len(bank)), key=lambda j: -sims[j])[:k]
        exps = [math.exp(sims[j] / temperature) for j in order]
        total = sum(exps)
        out.append(sum(e / total * labels[j] for e, j in zip(exps, order, strict=True)))
    return np.array(out)


@pytest.mark.parametrize(("k", "temperature", "chunk_bytes"), [(3, 0.5, 10**9), (5, 0.02, 40), (20, 1.0, 1)])
def test_knn_vote_equals_a_brute_force_loop(k, temperature, chunk_bytes):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(12, 6))
    labels = rng.dirichlet(np.ones(4), size=12)
    queries = rng.normal(size=(7, 6))
    got = knn_vote(
        torch.as_tensor(queries, dtype=torch.float32),
        torch.nn.functional.normalize(torch.as_tensor(bank, dtype=torch.float32), dim=1),
        torch.as_tensor(labels, dtype=torch.float32),
        k=k,
        temperature=temperature,
        chunk_bytes=chunk_bytes,
    )
    np.testing.assert_allclose(
        got.numpy(), _brute_vote(queries, bank, labels, min(k, 12), temperature), atol=1e-6
    )


def test_patch_labels_count_each_patchs_labelled_pixels():
    mask = np.full((6, 4), IGNORE, dtype=np.uint8)
    mask[0, 0] = 1  # patch (0, 0) of a 3 x 2 grid: rows 0-1, columns 0-1
    mask[1, 1] = 2
    mask[5, 3] = 0  # patch (2, 1)
    got = patch_labels(mask, (3, 2), 3)
    want = np.zeros((6, 3))
    want[0, 1] = want[0, 2] = 1
    want[5, 0] = 1
    np.testing.assert_array_equal(got, want)


def _upsampled(votes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling with half-pixel centres (align_corners=False), written out."""
    h, w, _ = votes.shape
    out = np.zeros((*size, votes.shape[2]))
    for y in range(size[0]):
        for x in range(size[1]):
            v = max((y + 0.5) * h / size[0] - 0.5, 0.0)
            u = max((x + 0.5) * w / size[1] - 0.5, 0.0)
            y0, x0 = min(math.floor(v), h - 1), min(math.floor(u), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            b, a = v - y0, u - x0
            out[y, x] = (1 - b) * ((1 - a) * votes[y0, x0] + a * votes[y0, x1]) + b * (
                (1 - a) * votes[y1, x0] + a * votes[y1, x1]
            )
    return out


class _Masks(Dataset):
    name = "toy"
    part_seg_classes = ("a", "b", "c")


def _features(maps: np.ndarray, masks: list[np.ndarray]) -> Features:
    n, h, w, c = maps.shape
    tokens = np.concatenate([np.zeros((n, 1, c)), maps.reshape(n, h * w, c)], axis=1)
    return Features(
        arrays={"tokens": torch.as_tensor(tokens, dtype=torch.float16)},
        labels=np.zeros(n, dtype=np.int64),
        grid=(h, w),
        masks={"part-masks": masks},
    )


def _scene(n: int, seed: int):
    """Each patch's feature is its class's direction plus noise; masks at 4 pixels a patch."""
    rng = np.random.default_rng(seed)
    centres = np.eye(3, 8) * 4
    cls = rng.integers(0, 3, (n, 3, 3))
    maps = centres[cls] + 0.3 * rng.normal(size=(n, 3, 3, 8))
    masks = [np.kron(c, np.ones((4, 4), dtype=np.int64)).astype(np.uint8) for c in cls]
    masks[0][:2, :] = IGNORE
    return maps, masks


def test_in_context_segmentation_scores_as_part_seg_counts():
    opts = {"stage": -1, "k": 5, "temperature": 0.02, "bank": 40}
    tr, te = _scene(20, 0), _scene(6, 1)
    features = {"train": _features(*tr), "test": _features(*te)}
    res = InContextSegmentation("part-masks", opts).evaluate(features, _Masks(), device=CPU, seed=0)
    assert res.details["bank_patches"] == 40
    # The same prediction rebuilt here: the bank the task drew, votes, upsampled, counted.
    assert res.metrics["mIoU"].value > 90  # separable classes are found
    inter, union = res.items["intersection"], res.items["union"]
    assert (inter <= union).all()
    assert score_from_items("mIoU", res.items) == pytest.approx(res.metrics["mIoU"].value)
    assert res.metrics["mIoU"].value == pytest.approx(100 * miou_from_counts(inter.sum(0), union.sum(0)))
    # With one neighbour and a bank of every patch, each test patch takes its nearest
    # training patch's label: checked against numpy's counting on the same predictions.
    one = InContextSegmentation("part-masks", {**opts, "k": 1, "bank": 10**6}).evaluate(
        features, _Masks(), device=CPU, seed=0
    )
    tr_maps, tr_masks = tr
    bank = np.concatenate([tr_maps[i].reshape(9, 8) for i in range(20)]).astype(np.float16).astype(np.float64)
    labels = np.concatenate([patch_labels(m, (3, 3), 3) for m in tr_masks])
    keep = labels.sum(1) > 0
    bank, labels = bank[keep], labels[keep] / labels[keep].sum(1, keepdims=True)
    for i, (m, target) in enumerate(zip(te[0], te[1], strict=True)):
        q = m.reshape(9, 8).astype(np.float16).astype(np.float64)
        vote = _brute_vote(q, bank, labels, 1, 0.02).reshape(3, 3, 3)
        pred = _upsampled(vote, target.shape).argmax(-1)
        i_ref, u_ref = intersection_union(pred, target.astype(np.int64), 3)
        np.testing.assert_allclose(one.items["intersection"][i], i_ref, atol=1e-6)
        np.testing.assert_allclose(one.items["union"][i], u_ref, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "grid"), [((64, 64), (8, 8)), ((37, 50), (3, 7)), ((512, 683), (32, 32)), ((5, 9), (5, 9))]
)
def test_reached_cells_hold_every_cell_a_labelled_pixel_reads(size, grid):
    """Each cell's own upsampled indicator, by torch's kernel: a cell that gives a labelled
    pixel any weight must be searched; one that reaches no labelled pixel need not be."""
    rng = np.random.default_rng(1)
    mask = np.full(size, IGNORE, dtype=np.uint8)
    mask[rng.random(size) < 0.01] = 1
    mask[size[0] // 3 : size[0] // 2, : size[1] // 4] = 0
    h, w = grid
    onehot = torch.eye(h * w).reshape(1, h * w, h, w)
    weight = torch.nn.functional.interpolate(onehot, size=size, mode="bilinear", align_corners=False)[0]
    reads = (weight[:, torch.as_tensor(mask != IGNORE)] > 0).any(1).numpy()
    got = reached_cells(mask, grid)
    assert got[reads].all()
    # A superset by at most the cells beside a read one (the spare cell at a boundary).
    near = torch.nn.functional.max_pool2d(
        torch.as_tensor(reads, dtype=torch.float32).reshape(1, 1, h, w), 3, stride=1, padding=1
    )
    assert not (got & ~near.flatten().bool().numpy()).any()
    assert not reached_cells(np.full(size, IGNORE, dtype=np.uint8), grid).any()


def _search_inputs(n_bank=300, n_queries=70, dim=6, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = torch.nn.functional.normalize(torch.randn(n_bank, dim, generator=g), dim=1)
    labels = torch.rand(n_bank, classes, generator=g)
    return torch.randn(n_queries, dim, generator=g), bank, labels


def test_a_vote_limited_to_some_rows_equals_those_rows_of_the_full_vote():
    queries, bank, labels = _search_inputs()
    full = knn_vote(queries, bank, labels, k=7, temperature=0.1)
    rows = torch.zeros(len(queries), dtype=torch.bool)
    rows[[0, 3, 4, 40, 69]] = True
    part = knn_vote(queries, bank, labels, k=7, temperature=0.1, rows=rows, chunk_bytes=1)
    assert torch.equal(part[rows], full[rows])
    assert (part[~rows] == 0).all()


def test_neighbours_are_searched_once_for_the_same_bank_and_queries(monkeypatch):
    queries, bank, labels = _search_inputs()
    other_labels = torch.rand_like(labels)
    incontext.REMEMBERED.clear()
    calls = []
    topk = torch.topk
    monkeypatch.setattr(torch, "topk", lambda *a, **kw: calls.append(len(a[0])) or topk(*a, **kw))
    key = b"bank"
    half = torch.arange(len(queries)) < 35
    first = knn_vote(queries, bank, labels, k=5, temperature=0.1, rows=half, bank_key=key)
    searched = sum(calls)
    assert searched >= 35
    # Another task's labels on the same bank: the rows found are not searched again, the
    # rest are, and every vote equals one made without remembering.
    second = knn_vote(queries, bank, other_labels, k=5, temperature=0.1, bank_key=key)
    assert sum(calls) - searched <= len(queries) - 35 + incontext.MIN_ROWS
    assert torch.equal(second, knn_vote(queries, bank, other_labels, k=5, temperature=0.1))
    assert torch.equal(first[half], knn_vote(queries, bank, labels, k=5, temperature=0.1)[half])
    # A different bank is searched afresh, and what the old one found is let go.
    calls.clear()
    knn_vote(queries, bank[:200], labels[:200], k=5, temperature=0.1, bank_key=b"another")
    assert sum(calls) >= len(queries)
    assert incontext.REMEMBERED.bank == b"another" and len(incontext.REMEMBERED.found) == 1
    incontext.REMEMBERED.clear()


def test_a_short_last_chunk_is_widened_to_the_minimum_rows():
    rows = torch.arange(0, 100, 3)  # 34 rows
    chunks = incontext._row_chunks(rows, 30, 100)
    assert [len(c) for c in chunks] == [30, incontext.MIN_ROWS]
    assert torch.equal(torch.cat(chunks).unique(), rows)
    few = incontext._row_chunks(torch.tensor([5, 9]), 30, 100)
    assert len(few[0]) == incontext.MIN_ROWS and {5, 9} <= set(few[0].tolist())
    assert incontext._row_chunks(torch.tensor([1]), 30, 3)[0].tolist() == [0, 1, 2]


def test_labelling_a_few_images_at_a_time_gives_the_same_counts(monkeypatch):
    """The upsampled class scores are held a bounded number of images at a time (a coarse grid
    puts a thousand images in one search block): the counts do not depend on that bound."""
    opts = {"stage": -1, "k": 5, "temperature": 0.02, "bank": 40}
    features = {"train": _features(*_scene(20, 0)), "test": _features(*_scene(6, 1))}
    whole = InContextSegmentation("part-masks", opts).evaluate(features, _Masks(), device=CPU, seed=0)
    monkeypatch.setattr(incontext, "UPSAMPLE_BYTES", 1)  # one image at a time
    incontext.REMEMBERED.clear()
    one = InContextSegmentation("part-masks", opts).evaluate(features, _Masks(), device=CPU, seed=0)
    np.testing.assert_array_equal(one.items["intersection"], whole.items["intersection"])
    np.testing.assert_array_equal(one.items["union"], whole.items["union"])
