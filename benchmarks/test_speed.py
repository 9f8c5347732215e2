"""Where partbench's design saves time, measured against the approach it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import record_ratio

from partbench.metrics import retrieval_ap


@pytest.fixture(scope="module")
def gallery():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 9, 1200)
    feats = rng.normal(size=(1200, 128)) + 2 * np.eye(128)[labels]
    return feats.astype(np.float32), labels


def _per_query_sklearn(feats, labels):
    # The study's approach: one scikit-learn call per query.
    from sklearn.metrics import average_precision_score

    f = feats.astype(np.float64)
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    sims = (f @ f.T).round(9)  # retrieval_ap's definition of a tie
    return np.array([average_precision_score(labels == labels[i], sims[i]) for i in range(len(f))])


@pytest.mark.benchmark(group="retrieval AP, 1200 queries")
def test_retrieval_baseline_sklearn_per_query(benchmark, gallery):
    benchmark.pedantic(_per_query_sklearn, args=gallery, rounds=1, iterations=1)


@pytest.mark.benchmark(group="retrieval AP, 1200 queries")
def test_retrieval_batched(benchmark, gallery, baseline_seconds):
    base = baseline_seconds(lambda: _per_query_sklearn(*gallery), 1)
    ours = benchmark(retrieval_ap, *gallery)
    assert np.allclose(ours, _per_query_sklearn(*gallery), atol=1e-6)
    record_ratio(benchmark, base)


@pytest.fixture(scope="module")
def tokens():
    torch.manual_seed(0)
    return torch.randn(512, 197, 192)


@pytest.mark.benchmark(group="attentive probe step, 512 x 197 tokens")
def test_attentive_baseline_multihead_attention(benchmark, tokens):
    mha = torch.nn.MultiheadAttention(192, 12, batch_first=True)
    query = torch.zeros(1, 1, 192, requires_grad=True)

    def step():
        out = mha(query.expand(len(tokens), 1, 192), tokens, tokens, need_weights=False)[0]
        out.sum().backward()

    benchmark(step)


@pytest.mark.benchmark(group="attentive probe step, 512 x 197 tokens")
def test_attentive_pooler(benchmark, tokens, baseline_seconds):
    from partbench.tasks.probes import AttentivePooler

    mha = torch.nn.MultiheadAttention(192, 12, batch_first=True)
    query = torch.zeros(1, 1, 192, requires_grad=True)
    base = baseline_seconds(
        lambda: mha(query.expand(len(tokens), 1, 192), tokens, tokens, need_weights=False)[0].sum().backward()
    )
    pool = AttentivePooler(192, 12)
    benchmark(lambda: pool(tokens).sum().backward())
    record_ratio(benchmark, base)


@pytest.fixture(scope="module")
def seg_problem():
    """SynParts part-seg's shape: 1,000 training maps at 32 x 32 (the loss resolution of an
    8 x 8 grid), about 60% of pixels unlabelled, 512 channels (4 stages), 10 classes."""
    gen = torch.Generator().manual_seed(0)
    from partbench.datasets.base import IGNORE

    x = torch.randn(1000, 64, 512, generator=gen)
    targets = torch.randint(0, 10, (1000, 32, 32), generator=gen)
    targets[torch.rand(1000, 32, 32, generator=gen) < 0.6] = IGNORE
    return x, list(targets)


def _upsample_whole_maps(head, x, targets):
    # The approach it replaces: upsample every logit map, then ignore unlabelled pixels.
    import torch.nn.functional as F

    from partbench.datasets.base import IGNORE
    from partbench.tasks.segmentation import _logits

    logits = _logits(head, x, (8, 8), (32, 32))
    loss = F.cross_entropy(logits, torch.stack(targets), ignore_index=IGNORE, reduction="sum")
    loss.backward()
    return loss


@pytest.mark.benchmark(group="segmentation head loss and gradient, 1,000 maps")
def test_seg_loss_baseline_upsample_whole_maps(benchmark, seg_problem):
    head = torch.nn.Linear(512, 10)
    benchmark(_upsample_whole_maps, head, *seg_problem)


@pytest.mark.benchmark(group="segmentation head loss and gradient, 1,000 maps")
def test_seg_loss_at_labelled_pixels(benchmark, seg_problem, baseline_seconds):
    import torch.nn.functional as F

    from partbench.tasks.segmentation import PixelTaps

    x, targets = seg_problem
    head = torch.nn.Linear(512, 10)
    base = baseline_seconds(lambda: _upsample_whole_maps(head, x, targets))
    taps = PixelTaps.of(targets, (8, 8))  # found once per fit, as _fit_lbfgs keeps them
    rows = x.reshape(-1, 512).index_select(0, taps.used)

    def evaluate():
        loss = F.cross_entropy(taps.logits(head(rows)), taps.labels, reduction="sum")
        loss.backward()
        return loss

    ours = benchmark(evaluate)
    head.zero_grad()
    ref = _upsample_whole_maps(head, x, targets)
    assert torch.allclose(ours, ref, rtol=1e-5)
    record_ratio(benchmark, base)
