"""The metrics against scikit-learn and against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from partbench.metrics import bootstrap_ci, mean_ap_per_class, miou, retrieval_ap, top1


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
