"""Where partbench's design saves time, measured against the approach it replaces."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import record_ratio

from partbench.metrics.scores import retrieval_ap


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
    from partbench.tasks.fitting import cross_entropy_sum
    from partbench.tasks.segmentation import PixelTaps

    x, targets = seg_problem
    head = torch.nn.Linear(512, 10)
    base = baseline_seconds(lambda: _upsample_whole_maps(head, x, targets))
    taps = PixelTaps.of(targets, (8, 8))  # found once per fit, as _fit_lbfgs keeps them
    rows = x.reshape(-1, 512).index_select(0, taps.used)

    def evaluate():
        loss = cross_entropy_sum(taps.logits(head(rows)), taps.labels)
        loss.backward()
        return loss

    ours = benchmark(evaluate)
    head.zero_grad()
    ref = _upsample_whole_maps(head, x, targets)
    assert torch.allclose(ours, ref, rtol=1e-5)
    record_ratio(benchmark, base)


@pytest.fixture(scope="module")
def pixel_logits():
    """A segmentation chunk's labelled pixels: 150,000 rows of 10 classes' logits."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(150_000, 10, generator=gen), torch.randint(0, 10, (150_000,), generator=gen)


def _loss_and_gradient(loss_fn, logits, labels):
    z = logits.clone().requires_grad_()
    loss_fn(z, labels).backward()
    return z.grad


def _torch_summed_cross_entropy(z, labels):
    import torch.nn.functional as F

    return F.cross_entropy(z, labels, reduction="sum")


@pytest.mark.benchmark(group="summed cross-entropy and its gradient, 150,000 x 10")
def test_cross_entropy_baseline_torch(benchmark, pixel_logits):
    benchmark(_loss_and_gradient, _torch_summed_cross_entropy, *pixel_logits)


@pytest.mark.benchmark(group="summed cross-entropy and its gradient, 150,000 x 10")
def test_cross_entropy_with_its_gradient_in_one_pass(benchmark, pixel_logits, baseline_seconds):
    from partbench.tasks.fitting import cross_entropy_sum

    base = baseline_seconds(lambda: _loss_and_gradient(_torch_summed_cross_entropy, *pixel_logits))
    ours = benchmark(_loss_and_gradient, cross_entropy_sum, *pixel_logits)
    assert torch.allclose(ours, _loss_and_gradient(_torch_summed_cross_entropy, *pixel_logits), atol=1e-6)
    record_ratio(benchmark, base)


@pytest.fixture(scope="module")
def correlated_seg_problem(pytestconfig):
    """SynParts part-seg's shape (1,000 maps scaled to 16 when the suite runs it once) with
    its features' structure: the four stages are noisy copies of one 128-channel map, as four
    depths of one network are strongly correlated, and that map's variance decays across its
    directions; labels a linear function of it, unlabelled where their margin is small. On
    SynParts' real features the whitened fits took 1.4-8 times less time (31-111 iterations
    against up to the 300-iteration cap); this problem is harder for the plain fit."""
    from conftest import full_size

    from partbench.datasets.base import IGNORE

    n = 1000 if full_size(pytestconfig) else 16
    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(n, 64, 128, generator=gen)
    # Mixed with a decaying spectrum, as a network's features are: the labels depend on
    # directions of small variance too.
    mixing = torch.linalg.qr(torch.randn(128, 128, generator=gen))[0] / torch.arange(1, 129.0)[:, None]
    base = signal @ mixing
    x = torch.cat([base + 0.002 * torch.randn(n, 64, 128, generator=gen) for _ in range(4)], -1)
    logits = torch.nn.functional.interpolate(
        (signal @ torch.randn(128, 10, generator=gen)).transpose(1, 2).reshape(n, 10, 8, 8), size=(32, 32)
    )
    top2 = logits.topk(2, dim=1).values
    targets = logits.argmax(1)
    targets[(top2[:, 0] - top2[:, 1]) < 1.0] = IGNORE
    return x.half(), [t.numpy() for t in targets]


class _PlainWeight:
    """WhitenedWeight's interface with no change of coordinates: the fit it replaced."""

    def __init__(self, linear, spectrum, ridge=0.0):
        self.linear, self.v = linear, linear.weight

    @property
    def params(self):
        return [self.v, self.linear.bias]

    def weight(self):
        return self.v.detach().requires_grad_()

    def pull(self, w):
        self.v.grad = w.grad

    def store(self):
        pass


def _fit_seg(problem, plain: bool, monkeypatch):
    from partbench.tasks import segmentation as seg

    with monkeypatch.context() as m:
        if plain:
            m.setattr(seg, "WhitenedWeight", _PlainWeight)
        return seg.train_seg_head(*problem, (8, 8), 10, iterations=300, seed=0)


@pytest.mark.benchmark(group="segmentation head fitted by L-BFGS, correlated stages")
def test_seg_fit_baseline_in_the_features_coordinates(benchmark, correlated_seg_problem, monkeypatch):
    benchmark.pedantic(_fit_seg, args=(correlated_seg_problem, True, monkeypatch), rounds=1, iterations=1)


@pytest.mark.benchmark(group="segmentation head fitted by L-BFGS, correlated stages")
def test_seg_fit_in_whitened_coordinates(benchmark, correlated_seg_problem, monkeypatch):
    start = time.perf_counter()
    plain = _fit_seg(correlated_seg_problem, True, monkeypatch)
    base = time.perf_counter() - start
    args = (correlated_seg_problem, False, monkeypatch)
    ours = benchmark.pedantic(_fit_seg, args=args, rounds=1, iterations=1)
    # The same objective, at least as far down, in fewer iterations.
    assert ours.loss_curve[-1] <= plain.loss_curve[-1] + 1e-4
    assert ours.iterations_run < plain.iterations_run
    benchmark.extra_info["iterations"] = ours.iterations_run
    benchmark.extra_info["baseline_iterations"] = plain.iterations_run
    record_ratio(benchmark, base)


def _render_some(n: int) -> list:
    from partbench.datasets.synparts import render

    return [render(0, "test", i) for i in range(n)]


def _whole_grid(monkeypatch) -> None:
    from partbench.datasets import synparts

    monkeypatch.setattr(synparts, "_window", lambda x, y, radius, n, ss: (slice(0, n), slice(0, n)))


@pytest.mark.benchmark(group="SynParts, 64 samples")
def test_render_baseline_shapes_on_the_whole_grid(benchmark, monkeypatch):
    _whole_grid(monkeypatch)
    benchmark.pedantic(_render_some, args=(64,), rounds=1, iterations=1)


@pytest.mark.benchmark(group="SynParts, 64 samples")
def test_render_shapes_on_their_windows(benchmark, monkeypatch, baseline_seconds):
    ours = benchmark(_render_some, 64)
    with monkeypatch.context() as m:
        _whole_grid(m)
        base = baseline_seconds(lambda: _render_some(64), 1)
        whole = _render_some(64)
    for a, b in zip(ours, whole, strict=True):  # the same samples, pixel for pixel
        assert np.array_equal(a.image, b.image) and np.array_equal(a.part_mask, b.part_mask)
    record_ratio(benchmark, base)


def _runs_for_pairing(k: int = 7):
    # k encoders' per-item results on a study-sized level: 1,600 images, 5,625 part crops.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 1600)
    crops = rng.integers(0, 9, 5625)
    runs = []
    for _ in range(k):
        inter = rng.integers(0, 50, (1600, 10)).astype(float)
        runs.append(
            [
                ("top1", {"correct": (rng.uniform(size=1600) < 0.5).astype(float)}),
                ("mAP", {"ap": rng.uniform(size=5625), "label": crops}),
                ("mIoU", {"intersection": inter, "union": inter + rng.integers(0, 50, (1600, 10))}),
                ("mAP", {"ap": rng.uniform(size=1600), "label": labels}),
            ]
        )
    return runs


def _pair_all(runs, forget: bool) -> list:
    from partbench.metrics import resampling

    out = []
    for i in range(len(runs)):
        for j in range(len(runs)):
            if i != j:
                if forget:
                    resampling._DRAW_MEMO.clear()
                out.append(resampling.paired_level_bootstrap(runs[i], runs[j], n_resamples=200))
    return out


@pytest.mark.benchmark(group="paired level bootstraps, every pair of 7 runs")
def test_pairing_baseline_drawing_every_pair_afresh(benchmark):
    runs = _runs_for_pairing()
    benchmark.pedantic(_pair_all, args=(runs, True), rounds=1, iterations=1)


@pytest.mark.benchmark(group="paired level bootstraps, every pair of 7 runs")
def test_pairing_with_remembered_draws(benchmark, baseline_seconds):
    from partbench.metrics import resampling

    runs = _runs_for_pairing()
    base = baseline_seconds(lambda: _pair_all(runs, True), 1)
    fresh = _pair_all(runs, True)

    def remembered() -> list:
        resampling._DRAW_MEMO.clear()  # each round starts from nothing, as a study does
        return _pair_all(runs, False)

    assert benchmark(remembered) == fresh
    record_ratio(benchmark, base)


def _map_scorer_and_draws():
    from partbench.metrics.items import ItemScorer
    from partbench.metrics.resampling import count_batches

    rng = np.random.default_rng(0)
    scorer = ItemScorer("mAP", {"ap": rng.uniform(size=5625), "label": rng.integers(0, 20, 5625)})
    counts = next(count_batches(np.random.default_rng(1), 5625, 1000, entries=10**8))
    return scorer, counts


def _map_by_fancy_indexing(scorer, c) -> np.ndarray:
    """The draws' mAP as the columns were gathered before: c[:, valid], then a product."""
    from partbench.metrics.items import _mean_present

    w = c[:, scorer.valid]
    num = np.add.reduceat(w * scorer.values, scorer.starts, axis=1)
    den = np.add.reduceat(w, scorer.starts, axis=1)
    return 100 * _mean_present(num / np.where(den > 0, den, 1), den > 0)


@pytest.mark.benchmark(group="mAP of 1,000 bootstrap draws, 5,625 queries")
def test_map_draws_baseline_fancy_indexing(benchmark):
    scorer, counts = _map_scorer_and_draws()
    benchmark(_map_by_fancy_indexing, scorer, counts)


@pytest.mark.benchmark(group="mAP of 1,000 bootstrap draws, 5,625 queries")
def test_map_draws_gathered_with_take(benchmark, baseline_seconds):
    scorer, counts = _map_scorer_and_draws()
    base = baseline_seconds(lambda: _map_by_fancy_indexing(scorer, counts), 3)
    got = benchmark(scorer.scores, counts)
    np.testing.assert_array_equal(got, _map_by_fancy_indexing(scorer, counts))
    record_ratio(benchmark, base)
