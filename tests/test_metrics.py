"""The metrics against scikit-learn, against their definitions computed the slow way, and
against cases worked out by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from partbench.metrics import chance, resampling, scores
from partbench.metrics.chance import chance_miou, chance_retrieval_ap, chance_top1
from partbench.metrics.items import score_from_items
from partbench.metrics.resampling import (
    bootstrap_ci,
    level_bootstrap,
    paired_bootstrap,
    paired_level_bootstrap,
)
from partbench.metrics.scores import mean_ap_per_class, miou, miou_from_counts, retrieval_ap, top1


def _cosine(f):
    f = torch.nn.functional.normalize(torch.as_tensor(f, dtype=torch.float64), dim=1)
    return (f @ f.T).numpy().round(9)  # ties are equal cosines, as retrieval_ap defines them


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_ap_equals_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    feats = rng.integers(0, 3, (60, 4)).astype(float)  # few distinct values: many tied scores
    feats[feats.sum(1) == 0] = 1
    labels = rng.integers(0, 4, 60)
    sims = _cosine(feats)
    ours = retrieval_ap(torch.tensor(feats), labels, chunk=7)
    ref = [average_precision_score(labels == labels[i], sims[i]) for i in range(60)]
    assert np.allclose(ours, ref, atol=1e-6)
    ours = retrieval_ap(feats, labels, include_self=False)
    for i in range(60):
        keep = np.arange(60) != i
        y = labels[keep] == labels[i]
        if y.any():
            assert ours[i] == pytest.approx(average_precision_score(y, sims[i][keep]), abs=1e-6)
        else:
            assert np.isnan(ours[i])


def test_retrieval_ap_by_hand():
    # Query 0 ranks: itself (pos, 1.0), item 2 (neg, 0.8), item 1 (pos, 0.6) -> AP = (1 + 2/3) / 2
    feats = np.array([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
    ap = retrieval_ap(feats, [0, 0, 1])
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    # A tie between a positive and a negative counts as one threshold: precision 1/2 there.
    tie = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert retrieval_ap(tie, [5, 5, 6], include_self=False)[0] == pytest.approx(0.5)


def test_mean_ap_per_class_weights_classes_equally():
    ap = np.array([1.0, 0.0, 0.5, np.nan])
    labels = np.array([0, 0, 1, 1])
    assert mean_ap_per_class(ap, labels) == pytest.approx((0.5 + 0.5) / 2)
    assert mean_ap_per_class(ap, labels, weights=np.array([3, 1, 1, 1])) == pytest.approx((0.75 + 0.5) / 2)


def test_top1_takes_labels_or_logits():
    assert top1([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert top1(torch.tensor([[0.1, 0.9], [2.0, 1.0]]), torch.tensor([1, 1])) == 0.5


def test_miou_by_hand_with_ignore():
    target = np.array([[0, 0, 1], [1, 255, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    # class 0: I=1, U=3 (two targets, pred at one extra place); class 1: I=2, U=3; class 2: I=0, U=2
    assert miou(pred, target, 3) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert miou(target, target, 4) == 1.0  # class 3 absent everywhere is left out


def test_bootstrap_interval_brackets_and_narrows():
    rng = np.random.default_rng(0)
    small, large = rng.normal(5, 1, 30), rng.normal(5, 1, 3000)
    lo_s, hi_s = bootstrap_ci(small, seed=1)
    lo_l, hi_l = bootstrap_ci(large, seed=1)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 4
    assert bootstrap_ci(small, seed=1) == (lo_s, hi_s)  # seeded
    counts_stat = bootstrap_ci(len(small), lambda c: float((small * c).sum() / c.sum()), seed=1)
    assert counts_stat == pytest.approx((lo_s, hi_s))
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)


# --- retrieval_ap: every path against scikit-learn -------------------------------------------


@pytest.fixture(params=["numpy", "torch", "streamed", "torch-streamed"])
def retrieval_path(request, monkeypatch):
    """The CPU path (NumPy sorts), the device-agnostic torch path that CUDA takes, run here on
    the CPU, and either with the gallery streamed in float64 blocks instead of held whole."""
    if request.param.startswith("torch"):
        monkeypatch.setattr(scores, "_NUMPY_ON_CPU", False)
    if request.param.endswith("streamed"):
        monkeypatch.setattr(scores, "_CPU_GALLERY_BUDGET", 0)
        monkeypatch.setattr(scores, "_GALLERY_BLOCK", 8 * 4 * 7)  # 7 rows of 4 features a block
    return request.param


def _tied_features(seed, n=60, d=4, classes=4):
    rng = np.random.default_rng(seed)
    feats = rng.integers(0, 3, (n, d)).astype(np.float32)  # few distinct values: many ties
    feats[feats.sum(1) == 0] = 1
    labels = rng.integers(0, classes, n)
    labels[-1] = classes  # a class of one item: no other positive
    return feats, labels


def _sklearn_ap(feats, labels, include_self):
    sims = _cosine(feats)
    n = len(labels)
    out = np.full(n, np.nan)
    for i in range(n):
        keep = np.ones(n, bool) if include_self else np.arange(n) != i
        y = labels[keep] == labels[i]
        if y.any():
            out[i] = average_precision_score(y, sims[i][keep])
    return out


@pytest.mark.parametrize("include_self", [True, False])
def test_retrieval_ap_paths_equal_scikit_learn(retrieval_path, include_self):
    feats, labels = _tied_features(0, n=40)
    ref = _sklearn_ap(feats, labels, include_self)
    ours = retrieval_ap(feats, labels, include_self)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)  # NaN exactly where sklearn has none
    for chunk in (1, 7):  # the same bits whatever the chunk
        np.testing.assert_array_equal(retrieval_ap(feats, labels, include_self, chunk=chunk), ours)
    assert np.isnan(ours[-1]) != include_self  # the single item: AP 1 with itself, else NaN


def test_retrieval_ap_does_not_depend_on_chunks_or_input_form():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, 150)
    feats = rng.normal(size=(150, 32)).astype(np.float32) + np.eye(32, dtype=np.float32)[labels]
    feats[10:20] = feats[0]  # exact duplicates: ties across classes
    whole = retrieval_ap(feats, labels)
    for chunk in (13, 150):
        assert np.array_equal(retrieval_ap(feats, labels, chunk=chunk), whole)
    assert np.array_equal(
        retrieval_ap(torch.from_numpy(feats), torch.from_numpy(labels), device="cpu"), whole
    )
    names = np.array(["wing", "beak", "tail", "eye", "leg", "back"])[labels]  # any label type
    assert np.array_equal(retrieval_ap(feats, names), whole)
    assert np.allclose(whole, _sklearn_ap(feats, labels, True), atol=1e-9)


def test_retrieval_ap_memory_budget_sets_the_chunk(monkeypatch):
    seen = []
    similarities = scores._Gallery.similarities

    def counted(self, rows):
        seen.append(len(rows))
        return similarities(self, rows)

    monkeypatch.setattr(scores._Gallery, "similarities", counted)
    feats, labels = _tied_features(0, n=80)
    retrieval_ap(feats, labels)
    assert seen == [80]  # a small problem: one chunk
    seen.clear()
    monkeypatch.setattr(scores, "_CPU_BUDGET", 80 * 8 * 20)  # room for about 20 rows of similarities
    small = retrieval_ap(feats, labels)
    assert 1 <= max(seen) <= 20 and sum(seen) == 80
    np.testing.assert_allclose(small, _sklearn_ap(feats, labels, True), atol=1e-9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("include_self", [True, False])
def test_retrieval_ap_on_cuda_equals_scikit_learn_and_the_cpu(include_self):
    feats, labels = _tied_features(0)
    ref = _sklearn_ap(feats, labels, include_self)
    for chunk in (None, 7):
        ours = retrieval_ap(feats, labels, include_self, device="cuda", chunk=chunk)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 10, 3000)
    feats = torch.from_numpy(rng.normal(size=(3000, 256)).astype(np.float32))
    feats[:30] = feats[0]
    cpu = retrieval_ap(feats, labels, include_self)
    gpu = retrieval_ap(feats, labels, include_self, device="cuda")
    np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-9)
    assert feats.device.type == "cpu"  # the features stay where they are
    on_gpu = retrieval_ap(feats.cuda(), labels, include_self)  # computed where the features are
    np.testing.assert_allclose(on_gpu, cpu, rtol=0, atol=1e-9)


def test_retrieval_ap_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="labels"):
        retrieval_ap(np.ones((3, 2)), [0, 1])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        retrieval_ap(np.ones(3), [0, 1, 2])
    assert retrieval_ap(np.ones((0, 2)), []).shape == (0,)


# --- per-item scores and bootstraps ------------------------------------------------------------


def _items(seed, n=80):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n)
    ap = rng.uniform(0, 1, n)
    ap[rng.uniform(size=n) < 0.1] = np.nan
    inter = rng.integers(0, 20, (n, 5)).astype(float)
    union = inter + rng.integers(0, 20, (n, 5))
    union[:, 4] = inter[:, 4] = 0  # a class absent everywhere
    return {
        "mAP": {"ap": ap, "label": label},
        "AP": {"ap": ap},
        "top1": {"correct": (rng.uniform(size=n) < 0.6).astype(float), "label": label},
        "mIoU": {"intersection": inter, "union": union},
    }


def test_score_from_items_is_the_task_metric():
    items = _items(0)
    counts = np.bincount(np.random.default_rng(1).integers(0, 80, 80), minlength=80)
    ap, label = items["mAP"]["ap"], items["mAP"]["label"]
    assert score_from_items("mAP", items["mAP"]) == pytest.approx(
        100 * mean_ap_per_class(ap, label), abs=1e-12
    )
    assert score_from_items("mAP", items["mAP"], counts) == pytest.approx(
        100 * mean_ap_per_class(ap, label, counts), abs=1e-12
    )
    assert score_from_items("AP", items["AP"]) == pytest.approx(100 * np.nanmean(ap), abs=1e-12)
    correct = items["top1"]["correct"]
    assert score_from_items("top1", items["top1"]) == pytest.approx(100 * correct.mean(), abs=1e-12)
    assert score_from_items("top1", items["top1"], counts) == pytest.approx(
        100 * np.sum(correct * counts) / counts.sum(), abs=1e-12
    )
    inter, union = items["mIoU"]["intersection"], items["mIoU"]["union"]
    assert score_from_items("mIoU", items["mIoU"]) == pytest.approx(
        100 * miou_from_counts(inter.sum(0), union.sum(0)), abs=1e-12
    )
    assert score_from_items("mIoU", items["mIoU"], counts) == pytest.approx(
        100 * miou_from_counts(counts @ inter, counts @ union), abs=1e-12
    )
    with pytest.raises(ValueError, match="metric"):
        score_from_items("F1", items["top1"])
    with pytest.raises(ValueError, match="label"):
        score_from_items("mAP", {"ap": ap})


def _misaligned_copy(items):
    # Copies at a different address and alignment: equal values must still give equal scores.
    out = {}
    for key, value in items.items():
        buf = np.empty(value.size + 1, dtype=value.dtype)
        buf[1:] = value.reshape(-1)
        out[key] = buf[1:].reshape(value.shape)
    return out


@pytest.mark.parametrize("metric", ["mAP", "AP", "top1", "mIoU"])
def test_paired_bootstrap_of_identical_runs_is_exactly_zero(metric):
    items = _items(2)[metric]
    assert paired_bootstrap(metric, items, _misaligned_copy(items), n_resamples=300) == (0.0, 0.0, 0.0)


def _reference_draws(tasks, n_resamples, seed):
    # The definition, one resample at a time: bootstrap_ci's draws, tasks in order.
    rng = np.random.default_rng(seed)
    total = np.zeros(n_resamples)
    for metric, items in tasks:
        n = len(next(iter(items.values())))
        for r in range(n_resamples):
            total[r] += score_from_items(metric, items, np.bincount(rng.integers(0, n, n), minlength=n))
    return total / len(tasks)


def test_level_bootstrap_draws_every_task_and_matches_the_definition():
    a, b = _items(3), _items(4, n=51)
    tasks = [("mAP", a["mAP"]), ("top1", b["top1"]), ("mIoU", a["mIoU"])]
    mean, lo, hi = level_bootstrap(tasks, n_resamples=200, seed=5)
    assert mean == pytest.approx(np.mean([score_from_items(m, i) for m, i in tasks]), abs=1e-12)
    draws = _reference_draws(tasks, 200, 5)
    assert (lo, hi) == pytest.approx((np.quantile(draws, 0.025), np.quantile(draws, 0.975)), abs=1e-9)
    assert lo < mean < hi
    assert level_bootstrap(tasks, n_resamples=200, seed=5) == (mean, lo, hi)  # seeded
    assert level_bootstrap(tasks, n_resamples=200, seed=6) != (mean, lo, hi)
    resampling._DRAW_MEMO.clear()
    one_per_batch = level_bootstrap(tasks, n_resamples=200, seed=5, draw_entries=7)  # the same draws
    assert one_per_batch == pytest.approx((mean, lo, hi), abs=1e-9)


@pytest.mark.parametrize("metric", ["mAP", "top1", "mIoU"])
def test_one_task_level_interval_is_the_tasks_own_interval(metric):
    # The tasks compute their intervals with bootstrap_ci over item counts; the same draws here.
    items = _items(6)[metric]
    n = len(next(iter(items.values())))
    lo, hi = bootstrap_ci(n, lambda c: score_from_items(metric, items, c), seed=9, n_resamples=300)
    assert level_bootstrap([(metric, items)], seed=9, n_resamples=300)[1:] == pytest.approx(
        (lo, hi), abs=1e-9
    )


def test_remembered_draws_are_the_draws_of_a_fresh_computation():
    # Runs paired in turn, tasks whose draws are all known next to ones that are not: each
    # result must be the one computed with nothing remembered, and the definition's.
    a, b, c, d = (_items(s) for s in (11, 12, 13, 14))

    def level(x, y=None):
        return [("top1", {"correct": x["top1"]["correct"]}), ("mIoU", (y or x)["mIoU"])]

    calls = [
        (level(a), level(b)),
        (level(a), level(c)),  # a's draws known, c's not, on both tasks
        (level(c), level(b)),  # everything known
        (level(a), level(b, d)),  # the first task known, the second not for one side
        (level(a)[:1], level(c)[:1]),
    ]
    resampling._DRAW_MEMO.clear()
    remembered = [paired_level_bootstrap(x, y, n_resamples=120, seed=3) for x, y in calls]
    fresh = []
    for x, y in calls:
        resampling._DRAW_MEMO.clear()
        fresh.append(paired_level_bootstrap(x, y, n_resamples=120, seed=3))
    assert remembered == fresh
    x, y = calls[3]
    draws = _reference_draws(x, 120, 3) - _reference_draws(y, 120, 3)
    interval = (np.quantile(draws, 0.025), np.quantile(draws, 0.975))
    assert remembered[3][1:] == pytest.approx(interval, abs=1e-9)


def test_paired_bootstrap_sees_a_consistent_difference():
    rng = np.random.default_rng(7)
    n = 400
    base = (rng.uniform(size=n) < 0.5).astype(float)
    better = base.copy()
    better[rng.choice(np.flatnonzero(base == 0), 20, replace=False)] = 1.0  # right on 20 more items
    a, b = {"correct": better}, {"correct": base}
    diff, lo, hi = paired_bootstrap("top1", a, b, n_resamples=500, seed=1)
    assert diff == pytest.approx(100 * 20 / n)
    assert 0 < lo < diff < hi  # paired: the interval excludes 0 ...
    lo_a, _ = bootstrap_ci(better, seed=1)
    _, hi_b = bootstrap_ci(base, seed=1)
    assert lo_a < hi_b  # ... where the two marginal intervals overlap
    flipped = paired_bootstrap("top1", b, a, n_resamples=500, seed=1)
    assert flipped == pytest.approx((-diff, -hi, -lo))


def test_paired_level_bootstrap_matches_the_definition_and_checks_pairing():
    a, b = _items(8), _items(9)
    ta = [("mAP", a["mAP"]), ("mIoU", a["mIoU"])]
    tb = [("mAP", {"ap": b["mAP"]["ap"], "label": a["mAP"]["label"]}), ("mIoU", b["mIoU"])]
    diff, lo, hi = paired_level_bootstrap(ta, tb, n_resamples=150, seed=2)
    draws = _reference_draws(ta, 150, 2) - _reference_draws(tb, 150, 2)
    assert diff == pytest.approx(level_bootstrap(ta)[0] - level_bootstrap(tb)[0], abs=1e-12)
    assert (lo, hi) == pytest.approx((np.quantile(draws, 0.025), np.quantile(draws, 0.975)), abs=1e-9)
    with pytest.raises(ValueError, match="labels"):
        paired_bootstrap("mAP", a["mAP"], b["mAP"])
    with pytest.raises(ValueError, match="items"):
        paired_bootstrap("top1", a["top1"], _items(1, n=79)["top1"])
    with pytest.raises(ValueError, match="pair"):
        paired_level_bootstrap(ta, tb[:1])
    fewer_classes = {k: v[:, :3] for k, v in b["mIoU"].items()}
    with pytest.raises(ValueError, match="classes"):
        paired_bootstrap("mIoU", a["mIoU"], fewer_classes)


# --- chance levels -----------------------------------------------------------------------------


def _enumerated_ap(n, r, self_first):
    # Every placement of the positives among the ranks, equally likely.
    ranks = range(2, n + 1) if self_first else range(1, n + 1)
    total = count = 0
    for placed in itertools.combinations(ranks, r - 1 if self_first else r):
        pos = sorted(((1,) if self_first else ()) + placed)
        total += np.mean([(k + 1) / p for k, p in enumerate(pos)])
        count += 1
    return total / count


@pytest.mark.parametrize(("n", "r"), [(1, 1), (2, 1), (2, 2), (5, 1), (5, 2), (7, 3), (8, 8), (9, 4)])
def test_expected_ap_of_a_random_ranking_is_exact(n, r):
    assert chance._expected_ap_random(n, r) == pytest.approx(_enumerated_ap(n, r, False), abs=1e-12)
    assert chance._expected_ap_self_first(n, r) == pytest.approx(_enumerated_ap(n, r, True), abs=1e-12)


@pytest.mark.parametrize("include_self", [True, False])
def test_chance_retrieval_ap_is_what_random_features_score(include_self):
    labels = np.array([0] * 6 + [1] * 4 + [2] * 3 + [3] * 2 + [4])
    rng = np.random.default_rng(11)
    trials = 400
    scores = [
        100 * mean_ap_per_class(retrieval_ap(rng.normal(size=(16, 8)), labels, include_self), labels)
        for _ in range(trials)
    ]
    chance = chance_retrieval_ap(labels, include_self)
    assert abs(np.mean(scores) - chance) < 4 * np.std(scores) / np.sqrt(trials)
    assert chance_retrieval_ap(np.array([3, 3, 3]), True) == 100.0  # every item positive


def test_chance_top1_and_miou():
    assert chance_top1([0, 0, 0, 1, 2], [0, 1, 1, 2]) == 25.0  # predicts 0: a quarter of the test
    assert chance_top1([0, 0, 1, 1], [0, 1, 1, 1]) == 50.0  # a tie: the mean of 25 and 75
    target = np.random.default_rng(0).choice([0, 1, 2, 255], size=(4, 9, 9), p=[0.5, 0.3, 0.1, 0.1])
    best = max(miou(np.full_like(target, c), target, 4) for c in range(4))  # every constant map
    pixels = np.stack([np.bincount(t[t != 255], minlength=4) for t in target])  # per image
    assert chance_miou(pixels) == pytest.approx(100 * best)
    assert chance_miou(pixels.sum(0)) == pytest.approx(100 * best)
    assert chance_miou(np.array([3, 1, 0])) == pytest.approx(100 * 0.75 / 2)


def test_each_metric_counts_the_items_its_score_is_computed_over():
    from partbench.metrics import ItemScorer

    ap = np.array([0.5, np.nan, 1.0, 0.2])
    assert ItemScorer("mAP", {"ap": ap, "label": np.array([0, 0, 1, 1])}).counted()[0] == 3
    assert ItemScorer("AP", {"ap": ap}).counted()[0] == 3
    # Keypoints of pairs 0, 2 and 5: three pairs, whatever the numbering skips.
    pck = {"correct": np.array([1.0, 0.0, 1.0, 1.0]), "pair": np.array([0, 0, 2, 5])}
    assert ItemScorer("PCK@0.10", pck).counted() == (3, "distinct values of 'pair'")
    assert ItemScorer("top1", {"correct": np.ones(7)}).counted() == (7, "rows of 'correct'")
    counts = {"intersection": np.ones((4, 2)), "union": np.ones((4, 2))}
    assert ItemScorer("mIoU", counts).counted() == (4, "rows of 'intersection'")
