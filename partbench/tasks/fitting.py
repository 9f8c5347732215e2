"""What the probes and the segmentation heads share about fitting a head: where its features
live during training, and whether its training loss levelled off."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

# A run has levelled off when the last tenth of its training changed the mean loss by under
# half a percent. Tenths are counted in learning rate spent, not in steps: a schedule that
# decays to zero (the probes' cosine, the AdamW head's poly decay) flattens the tail of a
# curve measured in steps whether or not the head has fitted, and would pass an underfit run.
# Half a percent, measured on SynParts part-seg: the 500-iteration AdamW head (15.1 mIoU,
# training loss 1.17 against 0.83 at L-BFGS' optimum) changes 1.7% in its last tenth and
# 2,000 iterations (loss 1.08) 0.6%, both flagged; L-BFGS passes once its mIoU stops moving.
PLATEAU_WINDOW = 0.1
PLATEAU_TOLERANCE = 0.005
# A loss near zero (a separable problem) keeps shrinking in relative terms for ever while no
# prediction changes: a change under this many nats counts as level whatever its ratio.
PLATEAU_FLOOR = 1e-4
CURVE_POINTS = 100  # a stored loss curve's length at most


def _middles(mass: np.ndarray) -> np.ndarray:
    """Where the middle of each point's learning rate falls in the whole run's (0 to 1): a
    point belongs to the window that holds its middle."""
    return (np.cumsum(mass) - mass / 2) / mass.sum()


def plateaued(
    curve: Sequence[float], spent: Sequence[float] | None = None, tolerance: float = PLATEAU_TOLERANCE
) -> bool:
    """Whether a training-loss curve has levelled off: the mean loss over the last
    PLATEAU_WINDOW of the learning rate spent differs from the mean over the window before by
    under ``tolerance`` of the latter (or under PLATEAU_FLOOR). ``spent[i]`` is the
    learning rate behind point ``i`` (a constant when omitted: windows are then shares of the
    points). A curve too short to fill both windows has not shown that it levelled off."""
    loss = np.asarray(curve, dtype=np.float64)
    mass = np.ones_like(loss) if spent is None else np.asarray(spent, dtype=np.float64)
    if len(loss) < 2 or len(mass) != len(loss) or not np.all(np.isfinite(loss)) or mass.sum() <= 0:
        return False
    middle = _middles(mass)
    last = middle > 1 - PLATEAU_WINDOW
    before = (middle > 1 - 2 * PLATEAU_WINDOW) & ~last
    if not (mass[last].sum() > 0 and mass[before].sum() > 0):
        return False
    a = float(np.average(loss[before], weights=mass[before]))
    b = float(np.average(loss[last], weights=mass[last]))
    return abs(a - b) <= max(tolerance * abs(a), PLATEAU_FLOOR)


# An SGD probe that keeps its best epoch has converged when the top-1 it chooses by stopped
# rising: its best over the last PLATEAU_WINDOW of the learning rate spent beats its best
# before that by at most this many points. The training loss is the wrong gauge there: an
# attentive head can fit all of SynParts' 2,810 training crops. mini-random's (lr 0.1, batch
# 256) fell from 0.089 to 0.045 between the last two tenths while its held-out top-1 moved by
# one item in 703.
SCORE_TOLERANCE = 0.5


def score_levelled(
    curve: Sequence[float], spent: Sequence[float], tolerance: float = SCORE_TOLERANCE
) -> bool:
    """Whether a per-epoch top-1 curve (percent) had stopped rising: its best within the last
    PLATEAU_WINDOW of the learning rate ``spent`` is at most ``tolerance`` points above its
    best before that window. A curve with no point on one side has not shown it."""
    score = np.asarray(curve, dtype=np.float64)
    mass = np.asarray(spent, dtype=np.float64)
    if len(score) < 2 or len(mass) != len(score) or mass.sum() <= 0:
        return False
    last = _middles(mass) > 1 - PLATEAU_WINDOW
    if last.all() or not last.any():
        return False
    return bool(score[last].max() - score[~last].max() <= tolerance)


def unconverged_warning(what: str, budget: int, unit: str, gauge: str = "training loss") -> str:
    """The one line a run's details carry when its head had not converged: its training loss
    had not levelled off, or (``gauge="held-out top-1"`` or ``"test top-1"``) the score that
    chose its epoch had not been seen to stop rising (fitting.score_levelled)."""
    if gauge == "training loss":
        said = f"training loss had not levelled off after {budget} {unit}"
    else:
        said = f"{gauge} had not stopped rising by the last tenth of its {budget} {unit}' learning rate"
    return f"the {what}'s {said}: the head may underfit and the score understate the features"


class _SummedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lse = torch.logsumexp(logits, 1)
        picked = logits.gather(1, labels[:, None])
        grad = torch.exp(logits - lse[:, None])
        grad.scatter_add_(1, labels[:, None], torch.full_like(picked, -1.0))
        ctx.save_for_backward(grad)
        return lse.sum() - picked.sum()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad * g, None


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits, labels, reduction="sum")`` for float32 ``logits`` (N, C),
    with its gradient (softmax minus one-hot) formed in the same pass. With few classes and
    many rows, as a segmentation head's labelled pixels are, torch's CPU kernels took 4.5 times
    as long forward and backward (150,000 pixels, 10 classes, one thread: 41 against 9 ms),
    which was the larger part of fitting the head."""
    return _SummedCrossEntropy.apply(logits, labels)


def device_copy(x: torch.Tensor, device: torch.device, host_bytes: int = 0) -> torch.Tensor | None:
    """The features on the device, once, when they fit in half its free memory; on a CPU, a
    float32 copy when that takes at most ``host_bytes``. Else None, and batches are copied
    (from the cache's memory-mapped half-precision rows) as they are drawn."""
    if device.type != "cuda":
        return x.float() if x.numel() * 4 <= host_bytes else None
    free, _ = torch.cuda.mem_get_info(device)
    if x.numel() * x.element_size() > free // 2:
        return None
    return x.to(device)


class Standardise(nn.Module):
    """Per-channel standardisation with fixed statistics: a head fitted after it is still a
    linear map of the raw features, and the problem is better conditioned for L-BFGS."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# Whitening floor, as a share of the second moment's mean eigenvalue: a direction the features
# hardly vary along is scaled up at most 1 / sqrt(WHITENING_FLOOR) times as much as one of mean
# variance, so noise there is not blown up without bound. 0.001, 0.01 and 0.1 took 87-90
# iterations alike (mini-mae part-seg on SynParts).
WHITENING_FLOOR = 0.01
# A softmax's curvature along a direction of the features is a share of their second moment
# there (at most a half; this is a typical one), so a ridge l2 adds as much curvature as
# l2 / CURVATURE_SHARE of second moment. Whitening without it made the largest ridges of the
# linear probe's grid slow (mini-supervised's 1.0: 213 iterations against 37 unwhitened).
CURVATURE_SHARE = 0.25
MOMENT_ROWS = 2**17  # rows a second moment is estimated from, at most


def second_moment(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """The mean of r r^T over every row r of the (rows, D) float32 ``chunks``: each chunk's
    product in float32, their sum in float64."""
    total: torch.Tensor | None = None
    rows = 0
    for c in chunks:
        part = (c.T @ c).double()
        total = part if total is None else total + part
        rows += len(c)
    if total is None or rows == 0:
        raise ValueError("no rows to estimate a second moment from")
    return total / rows


def spectrum(moment: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eigenvalues (clamped at 0) and eigenvectors of a second moment, in float64: one
    decomposition serves every ridge of a probe's grid."""
    evals, vecs = torch.linalg.eigh(moment.double())
    return evals.clamp(min=0), vecs


class WhitenedWeight:
    """A linear head's weight W fitted in whitened coordinates: L-BFGS steps in V = W P^-1 with
    P = (M + f I)^(-1/2), M the features' second moment (given as its ``spectrum``), f a
    floor. The objective is the same function of W, so the optimum is the same head; what
    changes is how fast L-BFGS reaches it.
    On standardised features whose channels are strongly correlated (a segmentation head reads
    four depths of one network) the curvature in W spans orders of magnitude and L-BFGS crawls:
    most of SynParts' segmentation heads ran to their 300-iteration cap, while in V every one
    stopped on L-BFGS' own tolerance after 31-111, at an objective as low or lower.

    In a closure: ``w = ww.weight()`` (a leaf for this evaluation), build the loss from ``w``,
    backward, then ``ww.pull(w)``; ``ww.params`` go to the optimiser; ``ww.store()`` writes
    W back into the head."""

    def __init__(self, linear: nn.Linear, spectrum: tuple[torch.Tensor, torch.Tensor], ridge: float = 0.0):
        evals, vecs = spectrum
        evals = evals + WHITENING_FLOOR * float(evals.mean()) + ridge / CURVATURE_SHARE
        device = linear.weight.device
        self.p = ((vecs * evals.rsqrt()) @ vecs.T).float().to(device)  # symmetric
        p_inv = ((vecs * evals.sqrt()) @ vecs.T).float().to(device)
        self.linear = linear
        self.v = (linear.weight.detach() @ p_inv).requires_grad_()

    @property
    def params(self) -> list[torch.Tensor]:
        return [self.v, self.linear.bias]

    def weight(self) -> torch.Tensor:
        return (self.v.detach() @ self.p).requires_grad_()

    def pull(self, w: torch.Tensor) -> None:
        """The gradient in V from W's (P is symmetric)."""
        self.v.grad = None if w.grad is None else w.grad @ self.p

    @torch.no_grad()
    def store(self) -> None:
        self.linear.weight.copy_(self.v @ self.p)


def subsample_curve(curve: Sequence[float], points: int = CURVE_POINTS) -> list[float]:
    """Means of consecutive blocks, so a long (and, for AdamW, noisy) curve stores its shape in
    at most ``points`` values."""
    if len(curve) <= points:
        return list(curve)
    step = math.ceil(len(curve) / points)
    return [float(np.mean(curve[i : i + step])) for i in range(0, len(curve), step)]


def lbfgs_curve(
    params: list[torch.Tensor],
    closure: Callable[[], torch.Tensor],
    iterations: int,
    *,
    history: int,
    max_evals: int = 25,  # loss evaluations one line search may spend
) -> tuple[list[float], bool]:
    """Full-batch L-BFGS with a strong-Wolfe line search, one iteration per optimiser call so
    that the curve has a point per iteration (the curvature history is kept between calls).
    Returns the objective before each iteration and after the last, and whether the solver
    stopped on its own tolerances (a step that moved nothing) before ``iterations``."""
    opt = torch.optim.LBFGS(
        params, lr=1, max_iter=1, max_eval=max_evals, history_size=history, line_search_fn="strong_wolfe"
    )
    curve: list[float] = []
    for _ in range(iterations):
        before = torch.cat([p.detach().reshape(-1) for p in params])
        curve.append(float(opt.step(closure)))
        if torch.equal(before, torch.cat([p.detach().reshape(-1) for p in params])):
            return curve, True
    with torch.enable_grad():
        curve.append(float(closure()))
    return curve, False
