"""Segmentation probes: the feature maps at 1/3, 1/2, 2/3 and all of the encoder's depth (a
ViT-B's blocks 4, 6, 8 and 12) on one grid, concatenated, a linear per-pixel classifier,
logits upsampled to the label map; mIoU. Training and scoring run on the run's device.

The study trains its head with AdamW for 160k iterations on augmented images. On frozen,
cached features that protocol cannot be reproduced: there is no photometric or geometric
augmentation (each image has one cached feature map), so the head sees a fixed training set.
partbench therefore departs from it openly:

- By default the head is fitted to convergence: full-batch L-BFGS on the cached training
  features, mean cross-entropy over every valid pixel plus a small ridge on the weights. A
  short AdamW run of the study's kind (``solver=adamw``: warm-up, poly decay, 500 iterations
  where the study runs 160k) underfits badly: on SynParts part-seg the 500-iteration head of
  ``mini-mae`` scores 15.1 mIoU and the converged one 26.
- Features are standardised per channel on the training set, which leaves the head a linear
  map of the raw features and conditions the problem, and L-BFGS steps in coordinates
  whitened by their second moment (fitting.WhitenedWeight): the same optimum, reached in
  31-111 iterations on SynParts where the unwhitened fit ran to its 300-iteration cap.
- The training loss is taken on label maps sampled down (nearest) to four times the patch
  grid, which costs a fraction of full resolution (on SynParts it scored the same with the
  AdamW head); evaluation is always at the label map's full resolution.

Every run stores its training-loss curve and whether it levelled off."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from partbench import windows
from partbench.datasets.base import IGNORE, Dataset
from partbench.encoders.base import Encoder
from partbench.errors import PartbenchError
from partbench.features import FULL, Features, View
from partbench.metrics.chance import chance_miou
from partbench.metrics.resampling import bootstrap_ci
from partbench.metrics.scores import miou_from_counts
from partbench.tasks.base import Task, TaskResult, percent
from partbench.tasks.fitting import (
    MOMENT_ROWS,
    Standardise,
    WhitenedWeight,
    cross_entropy_sum,
    device_copy,
    lbfgs_curve,
    plateaued,
    second_moment,
    spectrum,
    subsample_curve,
    unconverged_warning,
)

# The study reads blocks 4, 6, 8 and 12 of a 12-block ViT-B: these shares of the depth.
STUDY_DEPTHS = (4 / 12, 6 / 12, 8 / 12, 12 / 12)
LOSS_RESOLUTION = 4  # the loss reads label maps at most 4 times the feature grid
SOLVERS = ("lbfgs", "adamw")
# The ridge on the weights (not the bias), the analogue of weight decay, is what makes L-BFGS
# converge: without it, pixels a linear map separates drive the weights to grow for ever and
# the loss never levels off. On SynParts part-seg (mini-mae, standardised features) 1e-4
# levels off within 300 iterations at 26 mIoU; 1e-3 levels off sooner but scores 23.
LBFGS_L2 = 1e-4
LBFGS_HISTORY = 100  # curvature pairs kept; fewer took half as many iterations again on SynParts
LBFGS_CHUNK_BYTES = 256 * 2**20  # one chunk's working set in a full-batch evaluation
LBFGS_RESIDENT_BYTES = 2**30  # standardised training features kept in host memory, at most
SCORING_BYTES = 64 * 2**20  # the test logits at full resolution held at once, at most


def study_stages(encoder: Encoder) -> tuple[int, ...]:
    return tuple(sorted({encoder.stage_at(f) for f in STUDY_DEPTHS}))


def _logits(head: nn.Module, feats: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]):
    b = feats.shape[0]
    out = head(feats).transpose(1, 2).reshape(b, -1, *grid)
    if out.device.type == "cpu":
        # The channels-last kernel is the fast one on a CPU, and gives the same values.
        out = out.contiguous(memory_format=torch.channels_last)
    return F.interpolate(out, size=size, mode="bilinear", align_corners=False)


def mask_counts(pred: torch.Tensor, target: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class intersection and union of one label map, on the maps' device."""
    keep = target != IGNORE
    p, t = pred[keep], target[keep]
    inter = torch.bincount(t[p == t], minlength=classes)[:classes]
    area_p = torch.bincount(p, minlength=classes)[:classes]
    area_t = torch.bincount(t, minlength=classes)[:classes]
    return inter, area_p + area_t - inter


def channel_stats(
    x: torch.Tensor, chunk: int = 256, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over items and tokens, in float64, a chunk at a time (the
    cached features may be too large to copy whole into float32)."""
    total = torch.zeros(x.shape[-1], dtype=torch.float64, device=device)
    squares = torch.zeros_like(total)
    for i in range(0, len(x), chunk):
        part = x[i : i + chunk].to(device).double().flatten(0, -2)
        total += part.sum(0)
        squares += (part * part).sum(0)
    n = x.shape[0] * x.shape[1]
    mean = total / n
    std = (squares / n - mean * mean).clamp(min=0).sqrt().clamp(min=1e-6)
    return mean.float().cpu(), std.float().cpu()


def _loss_target(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    size = (min(mask.shape[0], 4 * grid[0]), min(mask.shape[1], 4 * grid[1]))
    if size == tuple(mask.shape):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest")[0, 0].long()


@dataclass
class SegFit:
    """A trained segmentation head and its training-loss curve."""

    head: nn.Module
    loss_curve: list[float]  # L-BFGS: the objective before each iteration and at the end; AdamW: per batch
    converged: bool
    iterations_run: int


def train_seg_head(
    x: torch.Tensor,
    masks: list[np.ndarray],
    grid: tuple[int, int],
    classes: int,
    *,
    iterations: int,
    lr: float = 4e-4,
    batch_size: int = 16,
    seed: int,
    solver: str = "lbfgs",
    device: torch.device | str = "cpu",
) -> SegFit:
    """A per-channel standardisation (fixed buffers) then a linear map, trained on ``x`` (may be
    half precision, the cache's; the head computes in float32) against ``masks`` read at the
    loss resolution. ``solver`` is ``"lbfgs"`` (full batch; ``lr`` and ``batch_size`` unused) or
    ``"adamw"``."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got '{solver}'")
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Sequential(Standardise(*channel_stats(x, device=device)), nn.Linear(x.shape[-1], classes))
    head.to(device)
    targets = [_loss_target(torch.as_tensor(m.astype(np.int64)), grid).to(device) for m in masks]
    if solver == "lbfgs":
        # The line search compares losses and gradients finely; TF32 matmuls (which the runner
        # turns on for fp32 runs on a GPU) would make the objective too coarse for it.
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            curve, stalled = _fit_lbfgs(head, x, targets, grid, iterations, device)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        done = max(0, len(curve) - 1)
        converged = bool(curve) and (stalled or plateaued(curve))
    else:
        curve, spent = _fit_adamw(head, x, targets, grid, iterations, lr, batch_size, seed, device)
        done, converged = iterations, plateaued(curve, spent)
    return SegFit(head.eval(), curve, converged, done)


def _fit_adamw(
    head: nn.Sequential,
    x: torch.Tensor,
    targets: list[torch.Tensor],
    grid: tuple[int, int],
    iterations: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> tuple[list[float], list[float]]:
    """AdamW (weight decay 0.05), linear warm-up over the study's share of iterations (1,500
    of 160k), then poly decay to zero; random batches of images. Returns each batch's loss and
    learning rate."""
    gen = torch.Generator().manual_seed(seed)  # on the host: the same draws on every device
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, round(iterations * 1500 / 160_000))

    def factor(it: int) -> float:
        return (it + 1) / warmup if it < warmup else (1 - (it - warmup) / max(1, iterations - warmup))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    same_size = len({tuple(t.shape) for t in targets}) == 1
    stacked = torch.stack(targets) if same_size else None
    curve: list[float] = []
    spent: list[float] = []
    for _ in range(iterations):
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=gen)
        if stacked is not None:
            logits = _logits(head, x[idx].to(device).float(), grid, tuple(stacked.shape[-2:]))
            loss = F.cross_entropy(logits, stacked[idx.to(device)], ignore_index=IGNORE)
        else:  # label maps of different sizes: one upsampling per image
            losses = [
                F.cross_entropy(
                    _logits(head, x[i : i + 1].to(device).float(), grid, tuple(targets[i].shape)),
                    targets[i][None],
                    ignore_index=IGNORE,
                    reduction="sum",
                )
                for i in idx.tolist()
            ]
            valid = sum(int((targets[i] != IGNORE).sum()) for i in idx.tolist())
            loss = torch.stack(losses).sum() / max(valid, 1)
        if not torch.isfinite(loss):  # a batch with only ignored pixels
            sched.step()
            continue
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        spent.append(sched.get_last_lr()[0])
        sched.step()
        curve.append(loss.item())
    return curve, spent


def _axis_taps(out: int, inp: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Along one axis of bilinear upsampling (``align_corners=False``) from ``inp`` to ``out``
    points: each output point's two source indices and the second one's weight, computed as
    ``F.interpolate`` computes them (source coordinate clamped at 0; at the far edge both taps
    land on the last point)."""
    src = ((torch.arange(out, dtype=torch.float64) + 0.5) * (inp / out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=inp - 1)
    return lo, (lo + 1).clamp(max=inp - 1), (src - lo).float()


class _Mix(torch.autograd.Function):
    """``matrix @ values`` whose gradient uses a transpose built once: autograd would rebuild
    it on every backward pass, which cost more than the product itself."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, matrix: torch.Tensor, transposed: torch.Tensor) -> torch.Tensor:
        ctx.transposed = transposed
        return matrix @ values

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return ctx.transposed @ grad, None, None


def _csr(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    # Duplicate entries (both taps on one edge token) are summed by coalescing. CSR products
    # were 10x faster than COO ones on a CPU; torch warns that its CSR support is in beta.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # The indices are built in range here; checking them would cost a pass for nothing.
        coo = torch.sparse_coo_tensor(indices, values, shape, check_invariants=False)
        return coo.coalesce().to_sparse_csr()


@dataclass
class PixelTaps:
    """The labelled pixels of a chunk of label maps: the sparse matrix that mixes the grid
    tokens' logits into each pixel's upsampled logits, and each pixel's label. Tokens that no
    labelled pixel reads are left out; ``used`` numbers the rest across the chunk."""

    used: torch.Tensor  # (U,) int64, token numbers across the chunk (image * tokens + token)
    mix: torch.Tensor  # (P, U) sparse CSR, four bilinear weights per row
    mix_t: torch.Tensor  # (U, P) its transpose, for the gradient
    labels: torch.Tensor  # (P,) int64

    @classmethod
    def of(cls, targets: list[torch.Tensor], grid: tuple[int, int]) -> PixelTaps:
        h, w = grid
        found = []
        sizes = {tuple(t.shape) for t in targets}
        # Maps of one size (the usual case) are handled together, one at a time otherwise.
        groups = [torch.stack(targets)] if len(sizes) == 1 else [t[None] for t in targets]
        first = 0
        for maps in groups:
            device = maps.device
            ys, yy, wy = (a.to(device) for a in _axis_taps(maps.shape[1], h))
            xs, xx, wx = (a.to(device) for a in _axis_taps(maps.shape[2], w))
            k, y, x = (maps != IGNORE).nonzero(as_tuple=True)
            top, bottom = (k + first) * (h * w) + ys[y] * w, (k + first) * (h * w) + yy[y] * w
            tokens = torch.stack([top + xs[x], top + xx[x], bottom + xs[x], bottom + xx[x]], dim=1)
            a, b = wy[y], wx[x]
            weights = torch.stack([(1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b], dim=1)
            found.append((tokens, weights, maps[k, y, x]))
            first += len(maps)
        tokens, weights, labels = (torch.cat(parts) for parts in zip(*found, strict=True))
        used, positions = torch.unique(tokens, return_inverse=True)
        pixels = torch.arange(len(labels), device=labels.device).repeat_interleave(4)
        flat = positions.reshape(-1)
        mix = _csr(torch.stack([pixels, flat]), weights.reshape(-1), (len(labels), len(used)))
        mix_t = _csr(torch.stack([flat, pixels]), weights.reshape(-1), (len(used), len(labels)))
        return cls(used, mix, mix_t, labels)

    def logits(self, token_logits: torch.Tensor) -> torch.Tensor:
        """Each labelled pixel's upsampled logits from the used tokens' logits (U, C): the
        same sums ``F.interpolate`` forms, for the pixels the loss reads only."""
        return _Mix.apply(token_logits, self.mix, self.mix_t)

    def nbytes(self) -> int:
        parts = [self.used, self.labels]
        for m in (self.mix, self.mix_t):
            parts += [m.crow_indices(), m.col_indices(), m.values()]
        return sum(t.numel() * t.element_size() for t in parts)


def _lbfgs_budgets(device: torch.device) -> tuple[int, int]:
    """Bytes one chunk of a full-batch evaluation may use, and bytes of prepared chunks kept
    between evaluations. On a CPU both are fixed (a chunk's working set near the caches, the
    kept rows within host memory). On a GPU they are shares of the memory left free once the
    features are placed: at ADE20K-Part's size (20,210 maps, 209 classes, ViT-B) the CPU's
    budgets gave chunks of 6 images, 3,368 of them to an evaluation, each rebuilding its taps,
    and on an H100 the head had not finished after six minutes; chunks of hundreds of images
    leave an evaluation its arithmetic."""
    if device.type != "cuda":
        return LBFGS_CHUNK_BYTES, LBFGS_RESIDENT_BYTES
    free, _ = torch.cuda.mem_get_info(device)
    return max(LBFGS_CHUNK_BYTES, free // 8), max(LBFGS_RESIDENT_BYTES, free // 4)


def lbfgs_chunk_images(values: int, pixels: int, classes: int, chunk_bytes: int) -> int:
    """Images per chunk of a full-batch evaluation: an image's float32 features (``values`` of
    them: read, standardised, their gradient) and its labelled pixels' mixing weights, logits
    and gradients stay within ``chunk_bytes`` together, whatever the size of the training set."""
    per_image = 4 * (3 * values + 12 * classes * pixels)
    return max(1, chunk_bytes // per_image)


def _fit_lbfgs(
    head: nn.Sequential,
    x: torch.Tensor,
    targets: list[torch.Tensor],
    grid: tuple[int, int],
    iterations: int,
    device: torch.device,
) -> tuple[list[float], bool]:
    """Full-batch L-BFGS with a strong-Wolfe line search on mean cross-entropy over every valid
    training pixel plus LBFGS_L2 / 2 * |W|^2. Returns the objective before each iteration and
    after the last, and whether the solver stopped on its own tolerance before ``iterations``.

    The loss is the one of upsampling every logit map and ignoring unlabelled pixels, computed
    at the labelled pixels only: bilinear upsampling is linear, so a pixel's logits are a
    weighted sum of four tokens' logits. On SynParts, where the background is unlabelled,
    that is a fraction of the work of upsampling whole maps."""
    linear = head[1]
    valid = sum(int((t != IGNORE).sum()) for t in targets)
    if valid == 0:
        return [], False
    resident = device_copy(x, device)
    chunk_bytes, keep_bytes = _lbfgs_budgets(device)
    chunk = lbfgs_chunk_images(
        x[0].numel(), max(t.numel() for t in targets), linear.out_features, chunk_bytes
    )
    spans = [(i, min(i + chunk, len(targets))) for i in range(0, len(targets), chunk)]
    classes = linear.out_features
    # A chunk's taps, and on a CPU the standardised float32 rows of the tokens they read, are
    # prepared once and kept while they fit keep_bytes (standardising on every evaluation was
    # over a third of an evaluation's time); beyond that, on every evaluation.
    kept: dict[int, tuple[PixelTaps, torch.Tensor | None]] = {}
    kept_bytes = 0

    def prepare(n: int) -> tuple[PixelTaps, torch.Tensor | None]:
        nonlocal kept_bytes
        if n in kept:
            return kept[n]
        i, j = spans[n]
        taps = PixelTaps.of(targets[i:j], grid)
        rows = None
        if resident is None and device.type == "cpu":
            with torch.no_grad():
                flat = x[i:j].reshape(-1, x.shape[-1])
                rows = head[0](flat.index_select(0, taps.used).float())
        size = taps.nbytes() + (0 if rows is None else rows.numel() * 4)
        if kept_bytes + size <= keep_bytes:
            kept[n], kept_bytes = (taps, rows), kept_bytes + size
        return taps, rows

    def chunk_loss(n: int, w: torch.Tensor) -> torch.Tensor:
        taps, rows = prepare(n)
        if rows is not None:
            token_logits = F.linear(rows, w, linear.bias)
        else:
            i, j = spans[n]
            feats = head[0]((x if resident is None else resident)[i:j].to(device).float())
            token_logits = F.linear(feats, w, linear.bias).reshape(-1, classes).index_select(0, taps.used)
        return cross_entropy_sum(taps.logits(token_logits), taps.labels)

    def moment_rows():
        # The tokens the loss reads, standardised: from every span, or evenly spaced spans
        # when there are more than fitting.MOMENT_ROWS tokens in all.
        for n in range(0, len(spans), max(1, math.ceil(len(x) * x.shape[1] / MOMENT_ROWS))):
            taps, rows = prepare(n)
            if rows is None:
                i, j = spans[n]
                flat = (x if resident is None else resident)[i:j].reshape(-1, x.shape[-1])
                rows = head[0](flat.index_select(0, taps.used.to(flat.device)).to(device).float())
            yield rows

    with torch.no_grad():
        whitened = WhitenedWeight(linear, spectrum(second_moment(moment_rows())))
    params = whitened.params
    # The line search may end on a point it evaluated last, and the next iteration starts by
    # evaluating it again: a full pass over the data that the memo answers instead.
    memo: dict[str, Any] = {}

    def closure() -> torch.Tensor:
        flat = torch.cat([p.detach().reshape(-1) for p in params])
        if memo and torch.equal(flat, memo["at"]):
            for p, g in zip(params, memo["grads"], strict=True):
                p.grad = g.clone()
            return memo["loss"]
        for p in params:
            p.grad = None
        w = whitened.weight()
        total = torch.zeros((), device=device)
        for n in range(len(spans)):
            loss = chunk_loss(n, w) / valid
            loss.backward()  # gradients accumulate over the chunks
            total += loss.detach()
        penalty = 0.5 * LBFGS_L2 * w.square().sum()
        penalty.backward()
        total += penalty.detach()
        whitened.pull(w)
        memo.update(at=flat, loss=total, grads=[p.grad.detach().clone() for p in params])
        return total

    curve = lbfgs_curve(params, closure, iterations, history=LBFGS_HISTORY)
    whitened.store()
    return curve


def _same_size_runs(masks: list[np.ndarray], classes: int) -> list[tuple[int, int]]:
    """Spans of consecutive label maps of one size whose logits at full resolution stay
    within SCORING_BYTES together (one map alone may exceed it): the test split is scored a
    span at a time."""
    spans: list[tuple[int, int]] = []
    start = 0
    for k in range(1, len(masks) + 1):
        full = 4 * classes * int(np.prod(np.shape(masks[start]))) * (k + 1 - start)
        if k == len(masks) or np.shape(masks[k]) != np.shape(masks[start]) or full > SCORING_BYTES:
            spans.append((start, k))
            start = k
    return spans


STUDY_WINDOW = 512  # the study's mmseg configs: crop 512 x 512 (LIP: 320), test stride 341


def resolution_transforms(options: Mapping[str, Any]) -> tuple[str, str]:
    """The train and test transforms the resolution options ask for (see partbench/windows.py):
    ("test", "test") at the defaults, so default runs read the passes they always read."""
    size, window, stride = (int(options.get(k, 0)) for k in ("input_size", "window", "stride"))
    if options.get("protocol", "default") == "study":
        window = window or STUDY_WINDOW
    if window == 0:
        if stride:
            raise PartbenchError("task option stride needs a window (window > 0 or protocol=study)")
        return ("test", "test") if size == 0 else (f"test-{size}", f"test-{size}")
    size = size or window
    if size < window:
        raise PartbenchError(f"task option input_size ({size}) is below the window ({window})")
    # Two thirds of the window, as the study's 341 of 512.
    stride = stride or max(1, math.floor(window * 2 / 3))
    return f"crop-{size}-{window}", f"slide-{size}-{window}-{stride}"


def _window_spans(sample_index: np.ndarray | None, samples: int) -> list[tuple[int, int]]:
    """Each test image's run of consecutive windows (a pass writes them in sample order)."""
    if sample_index is None:
        raise PartbenchError("sliding-window features carry no sample index")
    bounds = np.searchsorted(sample_index, np.arange(samples + 1))
    spans = [(int(bounds[k]), int(bounds[k + 1])) for k in range(samples)]
    if len(sample_index) != bounds[-1] or any(i == j for i, j in spans):
        raise PartbenchError("sliding-window features do not give every test image its windows")
    return spans


def slide_logits(
    head: nn.Module,
    feats: torch.Tensor,
    grid: tuple[int, int],
    g: windows.Geometry,
    shape: tuple[int, int],
) -> torch.Tensor:
    """One image's (C, H, W) logits at its label map's ``shape`` from its windows' features
    (n, tokens, D), as mmseg's ``slide_inference`` forms them: each window's logits upsampled
    (bilinear) to the window, added into a canvas of the resized image, divided by how many
    windows covered each pixel, the canvas resized (bilinear) to the label map."""
    height, width = windows.scaled_size(shape[0], shape[1], g.size)
    corners = windows.windows(height, width, g.window, g.stride)
    if len(corners) != len(feats):
        raise PartbenchError(
            f"a {shape[0]} x {shape[1]} label map has {len(corners)} windows at {g.name}, "
            f"but its features have {len(feats)}"
        )
    canvas = count = None
    for k, (y, x) in enumerate(corners):
        # One window's upsampled logits at a time: with the canvas, what scoring holds at once
        # (at 512 px, 209 classes: 219 MB a window, 292 MB the canvas of a 512 x 683 image).
        logit = _logits(head, feats[k : k + 1], grid, (g.window, g.window))[0]
        if canvas is None:
            canvas = torch.zeros(logit.shape[0], height, width, device=logit.device)
            count = torch.zeros(1, height, width, device=logit.device)
        canvas[:, y : y + g.window, x : x + g.window] += logit
        count[:, y : y + g.window, x : x + g.window] += 1
    assert canvas is not None and count is not None  # every image has a window
    canvas /= count
    if (height, width) == tuple(shape):
        return canvas
    return F.interpolate(canvas[None], size=tuple(shape), mode="bilinear", align_corners=False)[0]


class Segmentation(Task):
    def __init__(self, source: str, options: Mapping[str, Any] | None = None):
        super().__init__(options)
        self.source = source  # "part-masks" or "object-masks"

    def views(self, dataset: Dataset, encoder: Encoder) -> dict[str, View]:
        stages = study_stages(encoder)
        out = frozenset({"stages"})
        train, test = resolution_transforms(self.options)
        return {
            "train": View(self.source, "train", train, out, stages, masks=LOSS_RESOLUTION),
            "test": View(self.source, "test", test, out, stages, masks=FULL),
        }

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
        train, test = features["train"], features["test"]
        names = dataset.classes_for(self.source)
        classes = len(names)
        x_tr, x_te = train["stages"], test["stages"]
        masks_te = test.masks[self.source]
        inter = np.zeros((repeats, len(masks_te), classes))
        union = np.zeros_like(inter)
        scores, fits = [], []
        solver = options.get("solver", "lbfgs")
        sliding = windows.parse(resolution_transforms(options)[1])
        sliding = sliding if sliding is not None and sliding.kind == "slide" else None
        for r in range(repeats):
            fit = train_seg_head(
                x_tr,
                train.masks[self.source],
                train.grid,
                classes,
                iterations=options["iterations"],
                lr=options["lr"],
                batch_size=options["batch_size"],
                seed=seed + r,
                solver=solver,
                device=device,
            )
            fits.append(fit)
            head = fit.head
            if sliding is not None:
                with torch.no_grad():
                    for k, (i, j) in enumerate(_window_spans(test.sample_index, len(masks_te))):
                        target = torch.as_tensor(np.asarray(masks_te[k], dtype=np.int64), device=device)
                        logits = slide_logits(
                            head, x_te[i:j].to(device).float(), test.grid, sliding, target.shape
                        )
                        i_c, u_c = mask_counts(logits.argmax(0), target, classes)
                        inter[r, k], union[r, k] = i_c.cpu().numpy(), u_c.cpu().numpy()
                scores.append(miou_from_counts(inter[r].sum(0), union[r].sum(0)))
                continue
            with torch.no_grad():
                for i, j in _same_size_runs(masks_te, classes):
                    shape = np.shape(masks_te[i])
                    preds = _logits(head, x_te[i:j].to(device).float(), test.grid, shape).argmax(1)
                    for k in range(i, j):
                        target = torch.as_tensor(np.asarray(masks_te[k], dtype=np.int64), device=device)
                        i_c, u_c = mask_counts(preds[k - i], target, classes)
                        inter[r, k], union[r, k] = i_c.cpu().numpy(), u_c.cpu().numpy()
            scores.append(miou_from_counts(inter[r].sum(0), union[r].sum(0)))
        # Resampling images: each image's counts averaged over repeats, then summed.
        i_mean, u_mean = inter.mean(0), union.mean(0)

        def stat(counts: np.ndarray) -> float:
            return miou_from_counts(counts @ i_mean, counts @ u_mean)

        iou = np.divide(i_mean.sum(0), u_mean.sum(0), out=np.full(classes, np.nan), where=u_mean.sum(0) > 0)
        details: dict[str, Any] = {
            "per_class_iou": {names[c]: 100 * float(iou[c]) for c in range(classes) if not np.isnan(iou[c])},
            "train_images": len(train.masks[self.source]),
            "interval": "test images resampled",
        }
        if repeats > 1:
            details["mIoU_repeats"] = [100 * s for s in scores]
            details["mIoU_std"] = float(100 * np.std(scores, ddof=1))
        details["solver"] = solver
        details["iterations_run"] = fits[0].iterations_run
        details["train_loss_curve"] = [round(v, 6) for v in subsample_curve(fits[0].loss_curve)]
        details["converged"] = all(f.converged for f in fits)
        if not details["converged"]:
            details["warning"] = unconverged_warning(
                "head", options["iterations"], ("L-BFGS" if solver == "lbfgs" else "AdamW") + " iterations"
            )
        pixels = np.zeros(classes, dtype=np.int64)
        for m in masks_te:
            m = np.asarray(m)
            pixels += np.bincount(m[m != IGNORE].ravel(), minlength=classes)[:classes]
        return TaskResult(
            metrics={"mIoU": percent(float(np.mean(scores)), bootstrap_ci(len(masks_te), stat, seed=seed))},
            n_items=len(masks_te),
            items_per_class={names[c]: int(pixels[c]) for c in range(classes) if pixels[c]},
            details=details,
            items={"intersection": i_mean, "union": u_mean},
            chance={"mIoU": chance_miou(pixels)},
        )
