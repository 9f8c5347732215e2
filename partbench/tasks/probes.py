"""Classification probes on a frozen encoder: linear (class token -> Linear) and attentive
(one learnable query cross-attends over all final-layer tokens, BatchNorm without affine,
Linear). They train on cached features; that is exact because the study's probe
transforms (resize 256 + centre crop; resize) carry no random augmentation.

The study reports the best epoch on the test split, which picks the epoch with the very
items it then scores. By default the epoch is chosen on a stratified share of the training
items held out for it, and the test split is scored once; the study's choice remains as
``report=best-on-test``. Every run records its training-loss curve and whether it levelled
off."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from partbench.datasets.base import Dataset
from partbench.encoders.base import Encoder
from partbench.features import Features, View
from partbench.metrics.chance import chance_top1
from partbench.metrics.resampling import bootstrap_ci
from partbench.tasks.base import Task, TaskResult, counts_by_class, percent
from partbench.tasks.fitting import (
    MOMENT_ROWS,
    Standardise,
    WhitenedWeight,
    cross_entropy_sum,
    device_copy,
    lbfgs_curve,
    plateaued,
    score_levelled,
    second_moment,
    spectrum,
    subsample_curve,
    unconverged_warning,
)

REPORTS = ("validation", "best-on-test", "last")
VALIDATION_SHARE = 0.2  # of each class's training items, held out to choose the epoch

# With report=last no score curve chose the epoch, so an SGD probe is judged on its training
# loss. SGD's cosine tail keeps shaving the loss as its gradient noise falls, after the
# predictions have settled: mini-mae's part-linear probe (SynParts, 640/320 images) changed
# its loss 1.7% over the last tenth while its validation top-1 stayed within a point from
# epoch 40 to 90.
PROBE_TOLERANCE = 0.02
# The linear probe's ridges (L-BFGS), tried from the largest down, each fit starting from the
# last (a large ridge converges in a few dozen iterations). On SynParts the held-out choice
# spans the grid: 1e-5 for self-supervised minis' part crops (held-out top-1 fell from 85 to
# 63 as the ridge grew to 0.1 for mini-mocov3), 1e-2 to 0.1 for supervised minis' 800 object
# images. Below 1e-5 the fits did not level off within 500 iterations. SGD's 90 epochs of
# two or three steps stopped far short of these optima (mini-random part-linear 47 against
# 61). "report=last" fits LBFGS_L2 alone.
L2_GRID = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
LBFGS_L2 = 1e-4
LBFGS_HISTORY = 50
# The float32 features one chunk of a training batch or of a prediction holds at once: a
# batch of 1,024 ViT-B token maps is 620 MB in float32, above the memory-mapped cache.
TOKEN_CHUNK_BYTES = 128 * 2**20
RESIDENT_BYTES = 512 * 2**20  # training features a CPU probe keeps in float32, at most


class AttentivePooler(nn.Module):
    """Multi-head attention of one learned query over the tokens, computed without projecting
    every token: with a single query, q.(Wk x) = (Wk^T q).x and sum_t a_t Wv x_t = Wv sum_t a_t x_t,
    so the result equals nn.MultiheadAttention at a fraction of the cost on frozen features."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.head_dim = heads, dim // heads
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        for lin in (self.q, self.k, self.v):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, _, d = tokens.shape
        h, hd = self.heads, self.head_dim
        q = self.q(self.query).view(h, hd)  # (H, hd)
        kq = torch.einsum("hc,hcd->hd", q, self.k.weight.view(h, hd, d))  # (H, D)
        kb = (q * self.k.bias.view(h, hd)).sum(-1)  # constant per head; kept for exactness
        # Heads before tokens: a softmax over the last dimension and a batched product were
        # half the time of the same sums laid out (B, T, H) on a CPU.
        scores = ((tokens @ kq.T + kb) / math.sqrt(hd)).transpose(1, 2)  # (B, H, T)
        pooled = scores.softmax(dim=-1) @ tokens  # (B, H, D)
        v = torch.einsum("bhd,hcd->bhc", pooled, self.v.weight.view(h, hd, d)) + self.v.bias.view(h, hd)
        return self.out(v.reshape(b, d))


def _linear(dim: int, classes: int) -> nn.Linear:
    head = nn.Linear(dim, classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def linear_head(dim: int, classes: int) -> nn.Module:
    """BatchNorm without affine, then Linear (MAE's linear-probe protocol): still a linear map
    of the features at test time. Without the normalisation SGD at lr 0.4 on un-normalised
    class tokens swung between losses of 20 and 67 for 30 epochs (mini-mae, SynParts parts)."""
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), _linear(dim, classes))


def attentive_head(dim: int, classes: int, heads: int) -> nn.Module:
    return nn.Sequential(
        AttentivePooler(dim, heads), nn.BatchNorm1d(dim, affine=False), _linear(dim, classes)
    )


def attention_heads(dim: int, wanted: int = 12) -> int:
    """The study's 12 heads where the width allows, else the largest divisor below 12."""
    return next(h for h in range(wanted, 0, -1) if dim % h == 0)


def stratified_holdout(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Indices to train on and to hold out: ``fraction`` of each class (rounded to the nearest
    item), drawn with ``seed``. A class is never left without a training item; the classes
    that would have been are returned third."""
    rng = np.random.default_rng(seed)
    fit, held, kept = [], [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = math.floor(fraction * len(idx) + 0.5)  # half up: round() would round 0.5 to 0
        if k >= len(idx):
            k = len(idx) - 1
            kept.append(int(c))
        held.append(idx[:k])
        fit.append(idx[k:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held)), kept


@dataclass
class ProbeFit:
    """One trained probe: its test score at the chosen epoch and how it got there."""

    top1: float
    correct: np.ndarray  # per test item, at the chosen epoch
    epoch_choice: str
    chosen_epoch: int  # 1-based
    train_loss: list[float]  # mean training loss of each epoch
    converged: bool
    gauge: str = "training loss"  # what converged was judged on: or "held-out top-1", "test top-1"
    validation_items: int = 0
    validation_top1: list[float] = field(default_factory=list)  # per epoch, validation mode only
    test_top1: list[float] = field(default_factory=list)  # per epoch, best-on-test mode only
    kept_whole: list[int] = field(default_factory=list)  # classes too small to hold an item out
    solver: str = "sgd"
    l2_grid: list[float] = field(default_factory=list)  # L-BFGS: the ridges tried, largest first
    chosen_l2: float | None = None
    top1_per_l2: list[float] = field(default_factory=list)  # on held-out items, or on the test split
    iterations_run: int = 0
    epochs: int = 0  # SGD: the schedule's length
    unconverged_schedules: list[int] = field(default_factory=list)  # SGD: shorter ones tried first


def _holdout(
    labels: np.ndarray, report: str, validation: float, seed: int
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Training and held-out indices, and the classes kept whole: only ``report="validation"``
    holds items out; the other reports train on every item."""
    if report == "validation":
        return stratified_holdout(labels, validation, seed)
    return np.arange(len(labels)), np.zeros(0, dtype=np.int64), []


class _HeadOnFeatures:
    """A head and the features it reads, gathered by index a batch at a time: from a device copy
    where one fits, else from the (possibly memory-mapped, half-precision) arrays themselves."""

    def __init__(self, head: nn.Module, x_train: torch.Tensor, x_test: torch.Tensor, device: torch.device):
        self.head, self.device = head, device
        self.x_train, self.x_test = x_train, x_test
        # Drawn from every epoch's batches: gathering half-precision rows by index and widening
        # them was a quarter of an attentive probe's time on a CPU (mini-mae, SynParts parts).
        self.resident_train = device_copy(x_train, device, host_bytes=RESIDENT_BYTES)
        self.resident_test = device_copy(x_test, device)
        # Items whose float32 features fit TOKEN_CHUNK_BYTES: a training batch of token maps
        # larger than that is pooled a chunk at a time, and prediction goes a chunk at a time.
        self.per_chunk = max(1, TOKEN_CHUNK_BYTES // (4 * max(1, x_train[0].numel())))
        first = head[0] if isinstance(head, nn.Sequential) else None
        self.pooler = first if isinstance(first, AttentivePooler) else None

    def rows(self, x: torch.Tensor, resident: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        if resident is not None:
            return resident.index_select(0, idx.to(self.device)).float()
        return x[idx].to(self.device, non_blocking=True).float()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """The head's output on training items ``idx``, with gradients."""
        pooler = self.pooler
        if pooler is None or self.resident_train is not None or len(idx) <= self.per_chunk:
            return self.head(self.rows(self.x_train, self.resident_train, idx))
        # Checkpointed chunks keep only their indices for the backward pass, which reads the
        # rows again: a batch's float32 tokens (and the attention's inputs) are never held
        # whole, so host memory stays near the memory-mapped cache. Same values: every item
        # is pooled on its own.
        pooled = [
            checkpoint(
                lambda part: pooler(self.rows(self.x_train, None, part)),
                idx[i : i + self.per_chunk],
                use_reentrant=False,
            )
            for i in range(0, len(idx), self.per_chunk)
        ]
        return self.head[1:](torch.cat(pooled))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, resident: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        self.head.eval()
        step = min(1024, self.per_chunk)
        return torch.cat(
            [self.head(self.rows(x, resident, idx[i : i + step])).argmax(1) for i in range(0, len(idx), step)]
        )

    def predict_train(self, idx: torch.Tensor) -> torch.Tensor:
        return self.predict(self.x_train, self.resident_train, idx)

    def predict_test(self) -> torch.Tensor:
        return self.predict(self.x_test, self.resident_test, torch.arange(len(self.x_test)))


def _sgd_epoch(
    model: _HeadOnFeatures,
    opt: torch.optim.Optimizer,
    perm: torch.Tensor,
    y_train: torch.Tensor,
    batch_size: int,
    has_bn: bool,
) -> float:
    """One pass over ``perm`` in batches; returns the epoch's mean training loss."""
    model.head.train()
    loss_fn = nn.CrossEntropyLoss()
    total, seen = torch.zeros((), device=model.device), 0
    for i in range(0, len(perm), batch_size):
        idx = perm[i : i + batch_size]
        if len(idx) < 2 and has_bn:
            continue  # BatchNorm cannot normalise a single item
        loss = loss_fn(model.forward(idx), y_train[idx.to(model.device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.detach() * len(idx)
        seen += len(idx)
    return float(total) / max(seen, 1)


@dataclass
class _EpochChoice:
    """The epoch ``report`` picks, kept up to date as training goes: the head of the best
    held-out epoch (restored at the end), or the test predictions of the best test epoch; the
    first on ties. With neither, the last epoch."""

    epoch: int
    correct: np.ndarray
    score: float = -1.0
    state: dict[str, torch.Tensor] | None = None
    val_curve: list[float] = field(default_factory=list)
    test_curve: list[float] = field(default_factory=list)

    def held_out(self, epoch: int, acc: float, head: nn.Module) -> None:
        self.val_curve.append(acc)
        if acc > self.score:
            self.score, self.epoch = acc, epoch
            self.state = {k: v.detach().clone() for k, v in head.state_dict().items()}

    def on_test(self, epoch: int, correct: np.ndarray) -> None:
        self.test_curve.append(float(correct.mean()))
        if self.test_curve[-1] > self.score:
            self.score, self.epoch, self.correct = self.test_curve[-1], epoch, correct

    def convergence(self, losses: list[float], spent: list[float]) -> tuple[str, bool]:
        """What convergence is judged on, and its verdict: the curve that chose the epoch where
        there is one (fitting.SCORE_TOLERANCE), else the training loss."""
        chooser = self.val_curve or self.test_curve
        if chooser:
            gauge = "held-out top-1" if self.val_curve else "test top-1"
            return gauge, score_levelled([100 * a for a in chooser], spent)
        return "training loss", plateaued(losses, spent, PROBE_TOLERANCE)


def _seeded_head(make_head: Callable[[], nn.Module], seed: int, device: torch.device) -> nn.Module:
    """A fresh head initialised from ``seed``, leaving the caller's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = make_head()
    return head.to(device)


def train_probe(
    make_head: Callable[[], nn.Module],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    epochs: int,
    base_lr: float,
    batch_size: int,
    seed: int,
    report: str = "validation",
    validation: float = VALIDATION_SHARE,
    split_seed: int | None = None,
    device: torch.device | str = "cpu",
) -> ProbeFit:
    """SGD (momentum 0.9, no weight decay), lr = base_lr * batch / 256, cosine decay per epoch.

    ``report`` picks the epoch whose head is scored: ``"validation"`` holds out a stratified
    ``validation`` share of the training items (drawn with ``split_seed``, else ``seed``),
    keeps the head of the epoch with the best held-out top-1 (the first, on ties) and scores
    the test split once with it; ``"best-on-test"`` scores the test split after every epoch
    and reports the best (the study's choice, optimistic); ``"last"`` scores the last epoch.
    Trains on ``device``; features may be memory-mapped half-precision arrays on the host,
    read by index a batch at a time (a held-out share is never copied out).
    """
    if report not in REPORTS:
        raise ValueError(f"report must be one of {REPORTS}, got '{report}'")
    device = torch.device(device)
    head = _seeded_head(make_head, seed, device)
    gen = torch.Generator().manual_seed(seed)  # on the host: the same order on every device
    opt = torch.optim.SGD(head.parameters(), lr=base_lr * batch_size / 256, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    split = seed if split_seed is None else split_seed
    fit_np, held_np, kept = _holdout(np.asarray(y_train), report, validation, split)
    fit_idx, held_idx = torch.as_tensor(fit_np, dtype=torch.long), torch.as_tensor(held_np, dtype=torch.long)
    model = _HeadOnFeatures(head, x_train, x_test, device)
    y_train_d, y_test_d = y_train.to(device), y_test.to(device)
    has_bn = any(isinstance(m, nn.BatchNorm1d) for m in head.modules())
    choice = _EpochChoice(epoch=epochs, correct=np.zeros(len(y_test), bool))
    losses: list[float] = []
    spent: list[float] = []  # each epoch's learning rate
    for epoch in range(1, epochs + 1):
        perm = fit_idx[torch.randperm(len(fit_idx), generator=gen)]
        losses.append(_sgd_epoch(model, opt, perm, y_train_d, batch_size, has_bn))
        spent.append(sched.get_last_lr()[0])
        sched.step()
        if report == "validation" and len(held_idx):
            held_top1 = (model.predict_train(held_idx) == y_train_d[held_idx.to(device)]).float().mean()
            choice.held_out(epoch, float(held_top1), head)
        elif report == "best-on-test":
            choice.on_test(epoch, (model.predict_test() == y_test_d).cpu().numpy())
    if report != "best-on-test":
        if choice.state is not None:
            head.load_state_dict(choice.state)
        choice.correct = (model.predict_test() == y_test_d).cpu().numpy()
    gauge, converged = choice.convergence(losses, spent)
    return ProbeFit(
        top1=float(choice.correct.mean()),
        correct=choice.correct,
        epoch_choice=report,
        chosen_epoch=choice.epoch,
        train_loss=losses,
        converged=converged,
        gauge=gauge,
        validation_items=len(held_idx),
        validation_top1=choice.val_curve,
        test_top1=choice.test_curve,
        kept_whole=kept,
        epochs=epochs,
    )


def _standardised(x_fit: torch.Tensor, device: torch.device) -> tuple[Standardise, torch.Tensor]:
    """The standardisation fitted on the training items (moments in float64), and those items
    standardised."""
    x_fit = x_fit.to(device).double()
    mean, std = x_fit.mean(0), x_fit.std(0, unbiased=False).clamp(min=1e-6)
    scale = Standardise(mean.float(), std.float()).to(device)
    return scale, scale(x_fit.float())


@torch.no_grad()
def _predict_linear(
    linear: nn.Linear, scale: Standardise, x: torch.Tensor, device: torch.device
) -> torch.Tensor:
    return torch.cat(
        [linear(scale(x[i : i + 4096].to(device).float())).argmax(1) for i in range(0, len(x), 4096)]
    )


def train_linear_lbfgs(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    classes: int,
    iterations: int,
    report: str = "validation",
    validation: float = VALIDATION_SHARE,
    split_seed: int = 0,
    device: torch.device | str = "cpu",
) -> ProbeFit:
    """A linear probe fitted to convergence: features standardised on the training items, then
    multinomial logistic regression by full-batch L-BFGS, mean cross-entropy plus l2 / 2 * |W|^2.

    The ridge plays the role the SGD probe's epoch plays, and is chosen the same way by
    ``report``: ``"validation"`` fits each of L2_GRID on the training items less a stratified
    held-out share and keeps the ridge with the best held-out top-1 (the largest, on ties);
    ``"best-on-test"`` fits on every item and keeps the best on the test split (optimistic);
    ``"last"`` makes no choice: every item, the ridge LBFGS_L2 (as does ``"validation"``
    when no item can be held out). Ridges are fitted from the
    largest down, each starting from the last solution."""
    if report not in REPORTS:
        raise ValueError(f"report must be one of {REPORTS}, got '{report}'")
    device = torch.device(device)
    labels = np.asarray(y_train)
    fit_np, held_np, kept = _holdout(labels, report, validation, split_seed)
    # Nothing to choose with: no choice is made, as for "last".
    grid = [LBFGS_L2] if report == "last" or (report == "validation" and not len(held_np)) else list(L2_GRID)
    scale, z_fit = _standardised(x_train[torch.as_tensor(fit_np)], device)
    y_fit = torch.as_tensor(labels[fit_np], dtype=torch.long, device=device)
    whitening = spectrum(second_moment(z_fit[i : i + MOMENT_ROWS] for i in range(0, len(z_fit), MOMENT_ROWS)))
    linear = nn.Linear(z_fit.shape[1], classes).to(device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    y_test_d = torch.as_tensor(np.asarray(y_test), dtype=torch.long, device=device)
    judge: tuple[torch.Tensor, torch.Tensor] | None = None  # the items each ridge is scored on
    if report == "validation" and len(held_np):
        y_held = torch.as_tensor(labels[held_np], dtype=torch.long, device=device)
        judge = (x_train[torch.as_tensor(held_np)], y_held)
    elif report == "best-on-test":
        judge = (x_test, y_test_d)
    ridges = _ridge_path(linear, scale, z_fit, y_fit, grid, iterations, whitening, judge)
    scores, (chosen, state, curve, stalled) = ridges
    linear.load_state_dict(state)
    correct = (_predict_linear(linear, scale, x_test, device) == y_test_d).cpu().numpy()
    return ProbeFit(
        top1=float(correct.mean()),
        correct=correct,
        epoch_choice=report,
        chosen_epoch=0,
        train_loss=curve,
        converged=bool(curve) and (stalled or plateaued(curve)),
        validation_items=len(held_np),
        kept_whole=kept,
        solver="lbfgs",
        l2_grid=grid,
        chosen_l2=chosen,
        top1_per_l2=scores if len(grid) > 1 else [],
        iterations_run=max(0, len(curve) - 1),
    )


def _ridge_path(
    linear: nn.Linear,
    scale: Standardise,
    z_fit: torch.Tensor,
    y_fit: torch.Tensor,
    grid: list[float],
    iterations: int,
    whitening: tuple[torch.Tensor, torch.Tensor],
    judge: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[list[float], tuple[float, dict[str, torch.Tensor], list[float], bool]]:
    """Fit each ridge of ``grid`` in turn, each from the last solution, and score it on
    ``judge`` (0 without). Returns every ridge's score and the first best: its ridge, weights,
    objective curve and whether L-BFGS stopped on its own tolerances."""
    best: tuple[float, float, dict, list[float], bool] | None = None
    scores: list[float] = []
    # The line search compares losses and gradients finely: no TF32 (see segmentation).
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for l2 in grid:
            curve, stalled = _lbfgs(linear, z_fit, y_fit, l2, iterations, whitening)
            score = 0.0
            if judge is not None:
                x, y = judge
                score = float((_predict_linear(linear, scale, x, z_fit.device) == y).float().mean())
            scores.append(score)
            if best is None or score > best[0]:
                state = {k: v.detach().clone() for k, v in linear.state_dict().items()}
                best = (score, l2, state, curve, stalled)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    assert best is not None
    return scores, best[1:]


def _lbfgs(
    linear: nn.Linear,
    z: torch.Tensor,
    y: torch.Tensor,
    l2: float,
    iterations: int,
    whitening: tuple[torch.Tensor, torch.Tensor],
) -> tuple[list[float], bool]:
    """Fit ``linear`` in place from where it stands, stepping in coordinates whitened by the
    second moment of ``z`` (its ``whitening`` spectrum; fitting.WhitenedWeight). Returns the
    objective before each iteration and after the last, and whether L-BFGS stopped on its own
    tolerances."""
    whitened = WhitenedWeight(linear, whitening, ridge=l2)

    def closure() -> torch.Tensor:
        for p in whitened.params:
            p.grad = None
        w = whitened.weight()
        loss = cross_entropy_sum(F.linear(z, w, linear.bias), y) / len(y) + 0.5 * l2 * w.square().sum()
        loss.backward()
        whitened.pull(w)
        return loss.detach()

    curve = lbfgs_curve(whitened.params, closure, iterations, history=LBFGS_HISTORY)
    whitened.store()
    return curve


def _repeat_details(fits: list[ProbeFit], lbfgs: bool) -> dict[str, Any]:
    """How the repeats spread (none with a single fit)."""
    if len(fits) < 2:
        return {}
    accs = [f.top1 for f in fits]
    details: dict[str, Any] = {
        "top1_repeats": [100 * a for a in accs],
        "top1_std": float(100 * np.std(accs, ddof=1)),
        "chosen_epoch_repeats": [f.chosen_epoch for f in fits],
    }
    if not lbfgs:
        details["epochs_repeats"] = [f.epochs for f in fits]
    return details


def _lbfgs_details(fit: ProbeFit) -> dict[str, Any]:
    """How an L-BFGS fit chose its ridge, and its objective."""
    details: dict[str, Any] = {
        "l2_choice": fit.epoch_choice,
        "l2_grid": fit.l2_grid,
        "chosen_l2": fit.chosen_l2,
    }
    if fit.top1_per_l2:
        on = "validation" if fit.epoch_choice == "validation" else "test"
        details[f"{on}_top1_per_l2"] = [round(100 * a, 3) for a in fit.top1_per_l2]
    details["iterations_run"] = fit.iterations_run
    details["train_loss_curve"] = [round(v, 6) for v in subsample_curve(fit.train_loss)]
    return details


def _sgd_details(fit: ProbeFit) -> dict[str, Any]:
    """How an SGD fit chose its epoch, its curves, and what its convergence was judged on."""
    details: dict[str, Any] = {"epoch_choice": fit.epoch_choice, "epochs": fit.epochs}
    if fit.unconverged_schedules:
        details["unconverged_schedules"] = fit.unconverged_schedules
    details["chosen_epoch"] = fit.chosen_epoch
    if fit.validation_top1:
        details["validation_top1_per_epoch"] = [round(100 * a, 3) for a in fit.validation_top1]
    if fit.test_top1:
        details["test_top1_per_epoch"] = [round(100 * a, 3) for a in fit.test_top1]
    details["train_loss_per_epoch"] = [round(v, 6) for v in fit.train_loss]
    details["converged_on"] = fit.gauge
    return details


def _notes(fits: list[ProbeFit], lbfgs: bool, iterations: int | None, names: Sequence[str]) -> dict[str, Any]:
    """Whether every fit converged (with a warning if not) and what the held-out share lacked."""
    first = fits[0]
    details: dict[str, Any] = {"converged": all(f.converged for f in fits)}
    if not details["converged"]:
        longest = max(f.epochs for f in fits)
        budget = (iterations, "L-BFGS iterations") if lbfgs else (longest, "epochs")
        details["warning"] = unconverged_warning("probe", *budget, gauge=first.gauge)
    if first.kept_whole:
        details["validation_note"] = "kept whole in training, too small to hold an item out: " + ", ".join(
            names[c] if 0 <= c < len(names) else str(c) for c in first.kept_whole
        )
    if first.epoch_choice == "validation" and not first.validation_items:
        fallback = f"the ridge {LBFGS_L2:g} is used" if lbfgs else "the last epoch is reported"
        details["validation_note"] = f"no item could be held out: {fallback}"
    return details


def _sgd_fits(
    options: Mapping[str, Any],
    make: Callable[[], nn.Module],
    x_tr: torch.Tensor,
    y_tr: torch.Tensor,
    x_te: torch.Tensor,
    y_te: torch.Tensor,
    seed: int,
    repeats: int,
    device: torch.device,
) -> list[ProbeFit]:
    """One SGD fit per repeat. A fit that had not converged is trained again from the start with
    twice the epochs (a cosine schedule cannot be extended), while that stays within
    ``max_epochs``; the last schedule tried is the one scored. The decision reads only the
    curve that chose the epoch, so with the default report the test split stays unseen."""
    most = options.get("max_epochs", options["epochs"])
    fits = []
    for r in range(repeats):
        epochs, tried = options["epochs"], []
        while True:
            fit = train_probe(
                make,
                x_tr,
                y_tr,
                x_te,
                y_te,
                epochs=epochs,
                base_lr=options["lr"],
                batch_size=options["batch_size"],
                seed=seed + r,
                report=options["report"],
                validation=options.get("validation", VALIDATION_SHARE),
                # One held-out share for every repeat: their spread is that of training alone.
                split_seed=seed,
                device=device,
            )
            if fit.converged or 2 * epochs > most:
                break
            tried.append(epochs)
            epochs *= 2
        fit.unconverged_schedules = tried
        fits.append(fit)
    return fits


class Probe(Task):
    """A classifier trained on the train split's features and scored on the test split's."""

    def __init__(self, source: str, kind: str, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.source, self.kind = source, kind  # kind: "linear" or "attentive"

    def _feature(self) -> str:
        return "tokens" if self.kind == "attentive" else self.options["feature"]

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        out = frozenset({self._feature()})
        return {
            "train": View(self.source, "train", "train", out),
            "test": View(self.source, "test", "test", out),
        }

    def _head_maker(self, dim: int, classes: int, details: dict[str, Any]) -> Callable[[], nn.Module]:
        """What builds a fresh head (recording the attentive head's number of heads)."""
        if self.kind == "attentive":
            heads = attention_heads(dim)
            details["heads"] = heads
            return lambda: attentive_head(dim, classes, heads)
        return lambda: linear_head(dim, classes)

    def evaluate(
        self,
        features: Mapping[str, Features],
        dataset: Dataset,
        *,
        device: torch.device,
        seed: int,
        repeats: int = 1,
    ) -> TaskResult:
        options = self.options
        feat = self._feature()
        train, test = features["train"], features["test"]
        names = dataset.classes_for(self.source)
        x_tr, x_te = train[feat], test[feat]
        y_tr, y_te = torch.as_tensor(train.labels), torch.as_tensor(test.labels)
        details: dict[str, Any] = {"feature": feat}
        make = self._head_maker(x_tr.shape[-1], len(names), details)
        lbfgs = self.kind == "linear" and options.get("solver", "sgd") == "lbfgs"
        if lbfgs:
            # Deterministic (zero initialisation, full batch): repeats would all be equal.
            fit = train_linear_lbfgs(
                x_tr,
                y_tr,
                x_te,
                y_te,
                classes=len(names),
                iterations=options["lbfgs_iterations"],
                report=options["report"],
                validation=options.get("validation", VALIDATION_SHARE),
                split_seed=seed,
                device=device,
            )
            fits = [fit] * repeats
        else:
            fits = _sgd_fits(options, make, x_tr, y_tr, x_te, y_te, seed, repeats, device)
        # The interval resamples test items; with repeats, each item's score is its mean
        # correctness over the repeats.
        per_item = np.mean([f.correct for f in fits], axis=0)
        metrics = {"top1": percent(float(np.mean([f.top1 for f in fits])), bootstrap_ci(per_item, seed=seed))}
        first = fits[0]
        details.update(_repeat_details(fits, lbfgs))
        details["solver"] = first.solver
        details["train_items"] = len(y_tr) - first.validation_items
        details["validation_items"] = first.validation_items
        details.update(_lbfgs_details(first) if lbfgs else _sgd_details(first))
        details.update(_notes(fits, lbfgs, options.get("lbfgs_iterations"), names))
        details["interval"] = "test items resampled"
        return TaskResult(
            metrics=metrics,
            n_items=len(y_te),
            items_per_class=counts_by_class(test.labels, names),
            details=details,
            items={"correct": per_item.astype(np.float64), "label": np.asarray(test.labels, dtype=np.int64)},
            chance={"top1": chance_top1(train.labels, test.labels)},
        )
