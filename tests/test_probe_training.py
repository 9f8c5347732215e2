"""How the probes train and which epoch they report: an epoch chosen without the test split,
heads trained until their loss levels off, and a flag on every run that had not."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from partbench.datasets.base import IGNORE, Dataset
from partbench.features import Features
from partbench.specs import OptionError
from partbench.tasks import segmentation as seg
from partbench.tasks.builtin import _probe_options, _seg_options
from partbench.tasks.fitting import plateaued, score_levelled
from partbench.tasks.probes import (
    LBFGS_L2,
    PROBE_TOLERANCE,
    Probe,
    linear_head,
    stratified_holdout,
    train_linear_lbfgs,
    train_probe,
)

CPU = torch.device("cpu")


class Named(Dataset):
    name = "toy"
    object_classes = part_classes = ("a", "b", "c")
    part_seg_classes = object_seg_classes = ("a", "b", "c")


def _clustered(n: int, noise: float, seed: int, dim: int = 16, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    return centres[labels] + noise * torch.randn(n, dim, generator=g), labels


def _features(x: torch.Tensor, y: torch.Tensor) -> Features:
    return Features(arrays={"cls": x}, labels=y.numpy(), grid=(1, 1))


OPTS = {
    "feature": "cls",
    "epochs": 20,
    "lr": 0.1,
    "batch_size": 32,
    "report": "validation",
    "validation": 0.2,
}


class _Recorder(nn.Module):
    """Passes its input through, keeping every input it saw in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.seen.append(x.detach().clone())
        return x


def _recording_head(dim: int, classes: int):
    recorder = _Recorder()

    def make() -> nn.Module:
        return nn.Sequential(recorder, linear_head(dim, classes))

    return recorder, make


# Options --------------------------------------------------------------------------------------


def test_probe_options_name_the_epoch_choice_and_bound_the_held_out_share():
    opts = _probe_options(0.1, feature=True)
    report = opts["report"]
    assert report.default == "validation" and report.choices == ("validation", "best-on-test", "last")
    assert "study" in report.help and "test split" in report.help and "optimistic" in report.help
    share = opts["validation"]
    assert share.default == 0.2 and share.parse("0.5") == 0.5
    for bad in ("0", "-0.1", "0.51", "nan"):
        with pytest.raises(OptionError):
            share.parse(bad)
    with pytest.raises(OptionError):
        report.parse("best")
    assert _seg_options()["solver"].default == "lbfgs"
    assert _seg_options()["solver"].choices == ("lbfgs", "adamw")
    # Linear probes fit to convergence by default; the study's SGD schedule stays available.
    assert opts["solver"].default == "lbfgs" and opts["solver"].choices == ("lbfgs", "sgd")
    assert "solver" not in _probe_options(0.01, feature=False)  # the attentive probe: SGD only
    # An unqualified -o iterations=N still means the segmentation heads' budget alone.
    assert "iterations" not in opts and opts["lbfgs_iterations"].default >= 100


# The held-out share ---------------------------------------------------------------------------


def test_holdout_is_stratified_deterministic_and_never_empties_a_class():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 1 + [3] * 2)
    fit, held, kept = stratified_holdout(labels, 0.2, seed=3)
    assert np.bincount(labels[held], minlength=4).tolist() == [2, 1, 0, 0]
    assert sorted(np.concatenate([fit, held]).tolist()) == list(range(len(labels)))
    assert kept == []
    again = stratified_holdout(labels, 0.2, seed=3)
    assert np.array_equal(again[1], held)
    assert not np.array_equal(stratified_holdout(labels, 0.2, seed=4)[1], held)
    # Half of a one-item class would be that item: it stays in training, and that is said.
    fit, held, kept = stratified_holdout(labels, 0.5, seed=3)
    assert np.bincount(labels[held], minlength=4).tolist() == [5, 3, 0, 1]
    assert np.bincount(labels[fit], minlength=4).min() >= 1
    assert kept == [2]


def test_a_class_too_small_to_hold_out_is_named_in_the_details():
    x, y = _clustered(30, 0.5, 1, classes=2)
    x, y = torch.cat([x, torch.randn(1, 16)]), torch.cat([y, torch.tensor([2])])  # one item of c
    xt, yt = _clustered(30, 0.5, 2)
    res = Probe("keypoints", "linear", {**OPTS, "validation": 0.5}).evaluate(
        {"train": _features(x, y), "test": _features(xt, yt)}, Named(), device=CPU, seed=0
    )
    assert res.details["validation_note"].endswith(": c")
    assert res.details["validation_items"] == 16 and res.details["train_items"] == 15  # 8 + 8 held


# Which epoch is reported ----------------------------------------------------------------------


def test_validation_mode_scores_the_test_split_once_and_chooses_on_held_out_items():
    x, y = _clustered(90, 2.0, 1)
    xt, yt = _clustered(60, 2.0, 2)
    recorder, make = _recording_head(16, 3)
    fit = train_probe(make, x, y, xt, yt, epochs=12, base_lr=0.1, batch_size=16, seed=0)
    _, held, _ = stratified_holdout(y.numpy(), 0.2, seed=0)
    on_test = [s for s in recorder.seen if s.shape == xt.shape and torch.equal(s, xt)]
    on_held = [s for s in recorder.seen if s.shape == x[held].shape and torch.equal(s, x[held])]
    assert len(on_test) == 1 and len(on_held) == 12 and len(recorder.seen) == 13
    assert fit.validation_items == len(held) == 18 and fit.test_top1 == []
    # The first epoch with the best held-out top-1.
    assert fit.chosen_epoch == int(np.argmax(fit.validation_top1)) + 1
    assert fit.top1 == pytest.approx(fit.correct.mean())


def test_the_chosen_epoch_does_not_depend_on_the_test_labels():
    x, y = _clustered(90, 2.5, 1)
    xt, yt = _clustered(60, 2.5, 2)
    args = {"epochs": 15, "base_lr": 0.2, "batch_size": 16, "seed": 0}
    a = train_probe(lambda: linear_head(16, 3), x, y, xt, yt, **args)
    b = train_probe(lambda: linear_head(16, 3), x, y, xt, (yt + 1) % 3, **args)
    assert a.chosen_epoch == b.chosen_epoch and a.validation_top1 == b.validation_top1
    assert a.train_loss == b.train_loss
    # Same predictions, other labels: the head scored is the same one.
    assert a.top1 != b.top1
    # best-on-test picks a test epoch from the test split; the two choices can differ.
    t = train_probe(lambda: linear_head(16, 3), x, y, xt, yt, report="best-on-test", **args)
    assert len(t.test_top1) == 15 and t.top1 == max(t.test_top1)
    assert t.chosen_epoch == int(np.argmax(t.test_top1)) + 1
    assert t.validation_items == 0 and t.validation_top1 == []


@pytest.mark.parametrize(("report", "test_reads"), [("best-on-test", 7), ("last", 1)])
def test_the_other_modes_train_on_every_item(report, test_reads):
    x, y = _clustered(60, 1.0, 1)
    xt, yt = _clustered(30, 1.0, 2)
    recorder, make = _recording_head(16, 3)
    fit = train_probe(make, x, y, xt, yt, epochs=7, base_lr=0.1, batch_size=16, seed=0, report=report)
    assert len(recorder.seen) == test_reads and all(torch.equal(s, xt) for s in recorder.seen)
    assert fit.validation_items == 0 and len(fit.train_loss) == 7
    if report == "last":
        assert fit.chosen_epoch == 7


def test_probe_details_record_the_choice_the_curve_and_the_repeats():
    x, y = _clustered(90, 0.5, 1)
    xt, yt = _clustered(60, 0.5, 2)
    feats = {"train": _features(x, y), "test": _features(xt, yt)}
    res = Probe("keypoints", "linear", {**OPTS, "report": "validation"}).evaluate(
        feats, Named(), device=CPU, seed=0, repeats=2
    )
    d = res.details
    assert d["epoch_choice"] == "validation" and 1 <= d["chosen_epoch"] <= 20
    assert d["validation_items"] == 18 and d["train_items"] == 72
    assert len(d["validation_top1_per_epoch"]) == 20 and "test_top1_per_epoch" not in d
    assert len(d["train_loss_per_epoch"]) == 20 and isinstance(d["converged"], bool)
    assert len(d["chosen_epoch_repeats"]) == 2 and len(d["top1_repeats"]) == 2
    assert res.metrics["top1"].value == pytest.approx(100.0)
    assert res.items["correct"].shape == (60,) and res.chance["top1"] == pytest.approx(100 / 3)
    assert json.loads(json.dumps(d)) == d  # stored as it is
    study = Probe("keypoints", "linear", {**OPTS, "report": "best-on-test"}).evaluate(
        feats, Named(), device=CPU, seed=0
    )
    assert len(study.details["test_top1_per_epoch"]) == 20
    assert "validation_top1_per_epoch" not in study.details and study.details["validation_items"] == 0


# The linear probe by L-BFGS -----------------------------------------------------------------


def _correlated(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised features whose channels are four noisy copies of eight (as four depths of
    one network are); labels a linear function of them, a fifth of them then redrawn (so that
    no head separates them and the optimum is finite without the ridge)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 8, generator=g)
    z = torch.cat([base + 0.05 * torch.randn(n, 8, generator=g) for _ in range(4)], 1)
    z = (z - z.mean(0)) / z.std(0)
    y = (base @ torch.randn(8, 3, generator=g)).argmax(1)
    redrawn = torch.rand(n, generator=g) < 0.2
    y[redrawn] = torch.randint(0, 3, (int(redrawn.sum()),), generator=g)
    return z, y


def test_whitened_weight_is_the_same_head_with_the_gradient_of_its_coordinates():
    from partbench.tasks.fitting import WhitenedWeight, cross_entropy_sum, second_moment, spectrum

    z, y = _correlated()
    linear = nn.Linear(32, 3)
    start = linear.weight.detach().clone()
    ww = WhitenedWeight(linear, spectrum(second_moment([z])), ridge=1e-3)
    w = ww.weight()
    assert torch.allclose(w, start, atol=1e-4)  # V starts where W stood
    cross_entropy_sum(F.linear(z, w, linear.bias), y).backward()
    ww.pull(w)
    v = ww.v.detach().clone().requires_grad_()  # the same loss, differentiated through W = V P
    cross_entropy_sum(F.linear(z, v @ ww.p, linear.bias), y).backward()
    assert torch.allclose(ww.v.grad, v.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        ww.v.sub_(0.1 * ww.v.grad)
    ww.store()
    assert torch.allclose(linear.weight, ww.v.detach() @ ww.p)


def test_whitened_lbfgs_reaches_the_plain_optimum_in_fewer_iterations():
    from partbench.tasks.fitting import cross_entropy_sum, lbfgs_curve, second_moment, spectrum
    from partbench.tasks.probes import _lbfgs

    z, y = _correlated()
    l2 = 1e-4

    def objective(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return cross_entropy_sum(F.linear(z, weight, bias), y) / len(y) + 0.5 * l2 * weight.square().sum()

    plain = nn.Linear(32, 3)
    nn.init.zeros_(plain.weight)
    nn.init.zeros_(plain.bias)

    def closure() -> torch.Tensor:
        plain.zero_grad(set_to_none=True)
        loss = objective(plain.weight, plain.bias)
        loss.backward()
        return loss.detach()

    plain_curve, _ = lbfgs_curve([plain.weight, plain.bias], closure, 300, history=50)
    whitened = nn.Linear(32, 3)
    nn.init.zeros_(whitened.weight)
    nn.init.zeros_(whitened.bias)
    curve, stalled = _lbfgs(whitened, z, y, l2, 300, spectrum(second_moment([z])))
    assert stalled  # stopped on L-BFGS' own tolerance, not on the budget
    assert len(curve) < len(plain_curve) / 2  # 16 against 52 iterations when measured
    with torch.no_grad():
        reached = float(objective(whitened.weight, whitened.bias))
    assert reached == pytest.approx(curve[-1], rel=1e-5)  # the stored weight is the fitted one
    assert reached <= plain_curve[-1] + 1e-5
    with torch.no_grad():
        same = (F.linear(z, whitened.weight, whitened.bias).argmax(1) == plain(z).argmax(1)).float().mean()
    assert same > 0.99


def test_lbfgs_linear_probe_fits_further_than_sgd_and_chooses_its_ridge_without_the_test_labels():
    x, y = _clustered(150, 3.0, 1)
    xt, yt = _clustered(90, 3.0, 2)
    fit = train_linear_lbfgs(x, y, xt, yt, classes=3, iterations=200)
    assert fit.solver == "lbfgs" and fit.converged and fit.iterations_run <= 200
    assert len(fit.top1_per_l2) == len(fit.l2_grid) and fit.chosen_l2 in fit.l2_grid
    # The ridge with the best held-out top-1, the largest on ties.
    best = max(fit.top1_per_l2)
    assert fit.chosen_l2 == fit.l2_grid[fit.top1_per_l2.index(best)]
    assert fit.validation_items == 30
    # Its objective never rises (each iteration is a line search on it).
    assert all(b <= a + 1e-6 for a, b in zip(fit.train_loss, fit.train_loss[1:], strict=False))
    # The same choice and predictions whatever the test labels say.
    other = train_linear_lbfgs(x, y, xt, (yt + 1) % 3, classes=3, iterations=200)
    assert other.chosen_l2 == fit.chosen_l2 and other.top1_per_l2 == fit.top1_per_l2
    assert other.top1 != fit.top1
    # A short SGD schedule of the study's kind stops above the converged training loss.
    sgd = train_probe(lambda: linear_head(16, 3), x, y, xt, yt, epochs=3, base_lr=0.1, batch_size=64, seed=0)
    assert fit.train_loss[-1] < sgd.train_loss[-1]


def test_lbfgs_linear_probe_other_reports():
    x, y = _clustered(90, 3.0, 1)
    xt, yt = _clustered(60, 3.0, 2)
    on_test = train_linear_lbfgs(x, y, xt, yt, classes=3, iterations=200, report="best-on-test")
    assert on_test.validation_items == 0 and on_test.top1 == max(on_test.top1_per_l2)
    last = train_linear_lbfgs(x, y, xt, yt, classes=3, iterations=200, report="last")
    assert last.l2_grid == [LBFGS_L2] and last.chosen_l2 == LBFGS_L2 and last.top1_per_l2 == []
    with pytest.raises(ValueError, match="report must be one of"):
        train_linear_lbfgs(x, y, xt, yt, classes=3, iterations=5, report="best")


def test_lbfgs_probe_details_name_the_ridge_and_flag_an_unconverged_fit():
    x, y = _clustered(90, 2.0, 1)
    xt, yt = _clustered(60, 2.0, 2)
    feats = {"train": _features(x, y), "test": _features(xt, yt)}
    opts = {**OPTS, "solver": "lbfgs", "lbfgs_iterations": 200}
    res = Probe("keypoints", "linear", opts).evaluate(feats, Named(), device=CPU, seed=0, repeats=2)
    d = res.details
    assert d["solver"] == "lbfgs" and d["l2_choice"] == "validation" and d["chosen_l2"] in d["l2_grid"]
    assert len(d["validation_top1_per_l2"]) == len(d["l2_grid"]) and "chosen_epoch" not in d
    assert d["converged"] is True and "warning" not in d and d["top1_std"] == 0.0
    assert 2 <= len(d["train_loss_curve"]) <= 100
    assert json.loads(json.dumps(d)) == d
    short = Probe("keypoints", "linear", {**opts, "lbfgs_iterations": 1}).evaluate(
        feats, Named(), device=CPU, seed=0
    )
    assert short.details["converged"] is False and "1 L-BFGS iterations" in short.details["warning"]
    # One item per class: nothing can be held out, so no ridge is chosen, and the run says so.
    one_each = {"train": _features(x[:3], y[:3]), "test": _features(xt, yt)}
    res = Probe("keypoints", "linear", opts).evaluate(one_each, Named(), device=CPU, seed=0)
    assert res.details["l2_grid"] == [LBFGS_L2] and "validation_top1_per_l2" not in res.details
    assert res.details["validation_note"] == f"no item could be held out: the ridge {LBFGS_L2:g} is used"


# Has the training loss levelled off? ----------------------------------------------------------


def test_a_batch_of_token_maps_larger_than_a_chunk_trains_the_same_attentive_probe(monkeypatch):
    """Pooling a large batch in checkpointed chunks (to bound host memory) changes no value:
    the same losses, the same chosen epoch, the same test predictions."""
    from partbench.tasks import probes
    from partbench.tasks.probes import attentive_head

    gen = torch.Generator().manual_seed(0)
    y = torch.arange(120) % 3
    x = (torch.randn(120, 9, 24, generator=gen) + F.one_hot(y, 24)[:, None, :] * 2).half()

    def fit():
        return train_probe(
            lambda: attentive_head(24, 3, 4), x[40:], y[40:], x[:40], y[:40],
            epochs=4, base_lr=0.1, batch_size=64, seed=0,
        )  # fmt: skip

    whole = fit()
    monkeypatch.setattr(probes, "TOKEN_CHUNK_BYTES", 4 * 9 * 24 * 10)  # ten items per chunk
    chunked = fit()
    assert np.allclose(whole.train_loss, chunked.train_loss, rtol=1e-5)
    assert whole.chosen_epoch == chunked.chosen_epoch
    assert np.array_equal(whole.correct, chunked.correct)


def test_plateau_rule_counts_the_learning_rate_spent_not_the_steps():
    assert not plateaued([2.0]) and not plateaued([])
    assert plateaued([1.0] * 20)
    assert not plateaued(np.linspace(2.0, 1.0, 100))
    # Loss falling at a steady rate per unit of learning rate, under a schedule that decays
    # to zero: flat in steps at the end, still falling in what the optimiser spent.
    lr = (1 - np.arange(200) / 200) ** 2
    loss = 2.0 - np.cumsum(lr) / lr.sum()
    assert plateaued(loss)
    assert not plateaued(loss, lr)


def test_score_rule_asks_whether_the_choosing_top1_still_rose_in_the_last_tenth_of_the_lr():
    lr = 0.5 * (1 + np.cos(np.pi * np.arange(90) / 90))  # the probes' cosine, per epoch
    rising = np.linspace(60.0, 90.0, 90)
    assert not score_levelled(rising, lr)
    # The last tenth of the learning rate is epochs 55-90 of this cosine: a curve that peaked
    # at epoch 50 has levelled, as has one that gains half a point after it.
    peaked = np.minimum(np.linspace(60.0, 95.0, 90), 80.0)
    assert score_levelled(peaked, lr)
    assert score_levelled(np.where(np.arange(90) >= 60, 80.5, peaked), lr)
    assert not score_levelled(np.where(np.arange(90) >= 60, 80.6, peaked), lr)
    # Too short to have a point on both sides of the window, or nothing spent.
    assert not score_levelled([50.0], [1.0]) and not score_levelled([50.0, 50.0], [0.0, 0.0])


def test_an_sgd_probe_is_judged_on_the_curve_that_chose_its_epoch():
    x, y = _clustered(120, 6.0, 1)
    xt, yt = _clustered(60, 6.0, 2)

    def fit(report, epochs):
        return train_probe(
            lambda: linear_head(16, 3), x, y, xt, yt, epochs=epochs, base_lr=0.1, batch_size=64, seed=0,
            report=report,
        )  # fmt: skip

    held, on_test, last = fit("validation", 30), fit("best-on-test", 30), fit("last", 30)
    assert (held.gauge, on_test.gauge, last.gauge) == ("held-out top-1", "test top-1", "training loss")
    lr = 0.5 * (1 + np.cos(np.pi * np.arange(30) / 30))
    assert held.converged == score_levelled([100 * a for a in held.validation_top1], lr)
    assert on_test.converged == score_levelled([100 * a for a in on_test.test_top1], lr)
    assert last.converged == plateaued(last.train_loss, lr, PROBE_TOLERANCE)
    # Two epochs leave no point after the last tenth of the learning rate began (cosine:
    # 1 and 0.5), so the run cannot show that its score stopped rising; the warning says so.
    feats = {"train": _features(x, y), "test": _features(xt, yt)}
    probe = Probe("keypoints", "linear", {**OPTS, "solver": "sgd", "epochs": 2})
    d = probe.evaluate(feats, Named(), device=CPU, seed=0).details
    assert d["converged_on"] == "held-out top-1" and d["converged"] is False
    assert d["warning"].startswith("the probe's held-out top-1 had not stopped rising by the last tenth")


def test_a_schedule_that_did_not_level_off_is_trained_again_twice_as_long_within_max_epochs():
    x, y = _clustered(120, 6.0, 1)
    xt, yt = _clustered(60, 6.0, 2)
    feats = {"train": _features(x, y), "test": _features(xt, yt)}
    opts = {**OPTS, "solver": "sgd", "epochs": 2, "max_epochs": 16}
    res = Probe("keypoints", "linear", opts).evaluate(feats, Named(), device=CPU, seed=0)
    d = res.details
    # Two epochs cannot show a level curve; the first schedule that does is the one scored.
    tried = d.get("unconverged_schedules", [])
    assert tried[:1] == [2] and all(b == 2 * a for a, b in zip(tried, [*tried[1:], d["epochs"]], strict=True))
    assert d["epochs"] <= 16 and len(d["validation_top1_per_epoch"]) == d["epochs"]
    assert d["converged"] or d["epochs"] == 16
    # A fresh schedule of that length, not a continuation: the same fit trained directly.
    alone = train_probe(
        lambda: linear_head(16, 3), x, y, xt, yt, epochs=d["epochs"], base_lr=0.1, batch_size=32, seed=0
    )
    assert res.metrics["top1"].value == pytest.approx(100 * alone.top1)
    assert d["chosen_epoch"] == alone.chosen_epoch
    # max_epochs below twice the epochs keeps the study's single schedule, and says so.
    once = Probe("keypoints", "linear", {**opts, "max_epochs": 3})
    once = once.evaluate(feats, Named(), device=CPU, seed=0)
    assert once.details["epochs"] == 2 and "unconverged_schedules" not in once.details
    assert "by the last tenth of its 2 epochs' learning rate" in once.details["warning"]


def test_one_epoch_on_a_hard_problem_is_flagged_and_a_long_easy_run_is_not():
    x, y = _clustered(120, 6.0, 1)
    xt, yt = _clustered(60, 6.0, 2)
    feats = {"train": _features(x, y), "test": _features(xt, yt)}
    short = Probe("keypoints", "linear", {**OPTS, "epochs": 1}).evaluate(feats, Named(), device=CPU, seed=0)
    assert short.details["converged"] is False
    assert "warning" in short.details and "\n" not in short.details["warning"]
    x, y = _clustered(120, 0.1, 1)
    xt, yt = _clustered(60, 0.1, 2)
    feats = {"train": _features(x, y), "test": _features(xt, yt)}
    long = Probe("keypoints", "linear", {**OPTS, "epochs": 60, "lr": 0.5}).evaluate(
        feats, Named(), device=CPU, seed=0
    )
    assert long.details["converged"] is True and "warning" not in long.details


# Segmentation heads ---------------------------------------------------------------------------


def test_summed_cross_entropy_and_its_gradient_are_torchs():
    from partbench.tasks.fitting import cross_entropy_sum

    gen = torch.Generator().manual_seed(0)
    logits = (5 * torch.randn(300, 7, generator=gen, dtype=torch.float64)).requires_grad_()
    labels = torch.randint(0, 7, (300,), generator=gen)
    ours = cross_entropy_sum(logits, labels)
    (grad,) = torch.autograd.grad(2.5 * ours, logits)
    ref = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    (ref_grad,) = torch.autograd.grad(2.5 * ref, logits)
    assert torch.allclose(ours, ref) and torch.allclose(grad, ref_grad)
    assert torch.autograd.gradcheck(cross_entropy_sum, (logits[:12].detach().requires_grad_(), labels[:12]))


def _seg_features(n: int, noise: float, seed: int, sizes: tuple[int, ...] = (16,)) -> Features:
    """3 classes on a 4 x 4 patch grid, the class of each patch in its one-hot feature plus
    noise; label maps upsampled to one of ``sizes`` with a band of ignored pixels."""
    rng = np.random.default_rng(seed)
    grids = rng.integers(0, 3, (n, 4, 4))
    masks = []
    for i, g in enumerate(grids):
        s = sizes[i % len(sizes)] // 4
        m = np.kron(g, np.ones((s, s), int)).astype(np.uint8)
        m[:2] = IGNORE
        masks.append(m)
    x = F.one_hot(torch.as_tensor(grids.reshape(n, 16)), 3).float()
    x = torch.cat([x, torch.zeros(n, 16, 5)], -1)
    x = x + noise * torch.as_tensor(rng.standard_normal(x.shape), dtype=torch.float32)
    return Features({"stages": x.half()}, np.zeros(n), (4, 4), masks={"part-masks": masks})


def _train_loss(head: nn.Module, feats: Features) -> float:
    """Mean cross-entropy over every valid training pixel at the loss resolution."""
    total, count = 0.0, 0
    with torch.no_grad():
        for i, m in enumerate(feats.masks["part-masks"]):
            target = seg._loss_target(torch.as_tensor(m.astype(np.int64)), feats.grid)
            logits = seg._logits(head, feats["stages"][i : i + 1].float(), feats.grid, tuple(target.shape))
            total += float(F.cross_entropy(logits, target[None], ignore_index=IGNORE, reduction="sum"))
            count += int((target != IGNORE).sum())
    return total / count


def test_lbfgs_fits_further_than_a_short_adamw_run_and_says_it_converged():
    feats = _seg_features(40, 0.8, 0)
    args = (feats["stages"], feats.masks["part-masks"], feats.grid, 3)
    lbfgs = seg.train_seg_head(*args, iterations=100, seed=0, solver="lbfgs")
    adamw = seg.train_seg_head(*args, iterations=50, seed=0, solver="adamw", lr=4e-4, batch_size=8)
    assert _train_loss(lbfgs.head, feats) < _train_loss(adamw.head, feats) - 0.1
    assert lbfgs.converged and not adamw.converged
    assert len(adamw.loss_curve) == 50
    # The curve is the objective L-BFGS minimised: it never rises.
    assert all(b <= a + 1e-6 for a, b in zip(lbfgs.loss_curve, lbfgs.loss_curve[1:], strict=False))
    one = seg.train_seg_head(*args, iterations=1, seed=0, solver="lbfgs")
    assert not one.converged and len(one.loss_curve) == 2


def test_lbfgs_in_chunks_matches_one_pass_and_handles_maps_of_several_sizes(monkeypatch):
    feats = _seg_features(24, 0.8, 1, sizes=(16, 20))
    args = (feats["stages"], feats.masks["part-masks"], feats.grid, 3)
    whole = seg.train_seg_head(*args, iterations=6, seed=0)  # still falling: no early stop
    monkeypatch.setattr(seg, "LBFGS_CHUNK_BYTES", 1)  # one image per chunk,
    monkeypatch.setattr(seg, "LBFGS_RESIDENT_BYTES", 0)  # read from the cache at each evaluation
    chunked = seg.train_seg_head(*args, iterations=6, seed=0)
    assert np.allclose(whole.loss_curve, chunked.loss_curve, rtol=1e-4)
    assert torch.allclose(whole.head[1].weight, chunked.head[1].weight, atol=1e-3)


def test_lbfgs_chunks_on_a_gpu_are_sized_from_its_free_memory(monkeypatch):
    """At ADE20K-Part's size the CPU's chunk budget gave 6 images a chunk, 3,368 chunks an
    evaluation; on a GPU the budgets grow with the memory left free, never below the CPU's."""
    cpu = seg._lbfgs_budgets(torch.device("cpu"))
    assert cpu == (seg.LBFGS_CHUNK_BYTES, seg.LBFGS_RESIDENT_BYTES)
    free = {"bytes": 50 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 80 * 2**30))
    chunk, keep = seg._lbfgs_budgets(torch.device("cuda"))
    assert (chunk, keep) == (50 * 2**30 // 8, 50 * 2**30 // 4)
    per_image = 4 * (3 * 196 * 3072 + 12 * 209 * 56 * 56)  # ViT-B's four stages, 209 classes
    assert chunk // per_image >= 100  # hundreds of images a chunk, not 6
    free["bytes"] = 2**30  # a nearly full card: the CPU's budgets still hold
    assert seg._lbfgs_budgets(torch.device("cuda")) == cpu


@pytest.mark.parametrize(
    ("grid", "sizes"),
    [((4, 4), [(16, 16)] * 3), ((3, 5), [(7, 11), (3, 5), (2, 9), (40, 13)])],
)
def test_the_loss_at_labelled_pixels_equals_upsampling_whole_maps(grid, sizes):
    """The head's loss read through PixelTaps is the loss of upsampling every logit map and
    ignoring unlabelled pixels: same value and gradient, for maps larger and smaller than
    the grid, several at once or of several sizes."""
    gen = torch.Generator().manual_seed(0)
    head = nn.Linear(6, 4)
    x = torch.randn(len(sizes), grid[0] * grid[1], 6, generator=gen)
    targets = []
    for size in sizes:
        t = torch.randint(0, 4, size, generator=gen)
        t[torch.rand(size, generator=gen) < 0.4] = IGNORE
        targets.append(t)
    whole = sum(
        F.cross_entropy(
            seg._logits(head, x[k : k + 1], grid, tuple(t.shape)),
            t[None],
            ignore_index=IGNORE,
            reduction="sum",
        )
        for k, t in enumerate(targets)
    )
    taps = seg.PixelTaps.of(targets, grid)
    token_logits = head(x).reshape(-1, 4).index_select(0, taps.used)
    read = F.cross_entropy(taps.logits(token_logits), taps.labels, reduction="sum")
    assert len(taps.labels) == sum(int((t != IGNORE).sum()) for t in targets)
    assert torch.allclose(read, whole, rtol=1e-5)
    g_whole = torch.autograd.grad(whole, head.weight)[0]
    g_read = torch.autograd.grad(read, head.weight)[0]
    assert torch.allclose(g_read, g_whole, rtol=1e-4, atol=1e-5)


def test_the_test_split_is_scored_in_spans_of_one_size_within_the_budget(monkeypatch):
    masks = [np.zeros((8, 8))] * 5 + [np.zeros((4, 6))] * 2 + [np.zeros((8, 8))]
    assert seg._same_size_runs(masks, 3) == [(0, 5), (5, 7), (7, 8)]
    monkeypatch.setattr(seg, "SCORING_BYTES", 2 * 4 * 3 * 64)  # two 8 x 8 maps of 3 classes
    assert seg._same_size_runs(masks, 3) == [(0, 2), (2, 4), (4, 5), (5, 7), (7, 8)]
    monkeypatch.setattr(seg, "SCORING_BYTES", 1)  # a map larger than the budget is scored alone
    assert seg._same_size_runs(masks[:2], 3) == [(0, 1), (1, 2)]
    # Scores do not depend on the spans.
    train, test = _seg_features(30, 0.8, 0, sizes=(16, 20)), _seg_features(12, 0.8, 1, sizes=(16, 20, 20))
    opts = {"solver": "lbfgs", "iterations": 20, "lr": 4e-4, "batch_size": 8}
    one_by_one = seg.Segmentation("part-masks", opts).evaluate(
        {"train": train, "test": test}, Named(), device=CPU, seed=0
    )
    monkeypatch.setattr(seg, "SCORING_BYTES", 2**30)
    spans = seg.Segmentation("part-masks", opts).evaluate(
        {"train": train, "test": test}, Named(), device=CPU, seed=0
    )
    assert np.array_equal(one_by_one.items["intersection"], spans.items["intersection"])
    assert np.array_equal(one_by_one.items["union"], spans.items["union"])


def test_segmentation_details_carry_the_curve_and_a_warning_when_unconverged():
    train, test = _seg_features(40, 0.8, 0), _seg_features(20, 0.8, 1)
    opts = {"solver": "adamw", "iterations": 250, "lr": 4e-4, "batch_size": 8}
    res = seg.Segmentation("part-masks", opts).evaluate(
        {"train": train, "test": test}, Named(), device=CPU, seed=0
    )
    d = res.details
    assert d["solver"] == "adamw" and len(d["train_loss_curve"]) <= 100
    assert d["converged"] is False and "AdamW" in d["warning"]
    underfit = res.metrics["mIoU"].value
    res = seg.Segmentation("part-masks", {**opts, "solver": "lbfgs", "iterations": 100}).evaluate(
        {"train": train, "test": test}, Named(), device=CPU, seed=0
    )
    d = res.details
    assert d["solver"] == "lbfgs" and d["converged"] is True and "warning" not in d
    assert d["train_loss_curve"][-1] < d["train_loss_curve"][0]
    assert res.metrics["mIoU"].value > underfit + 5
    assert json.loads(json.dumps(d)) == d
