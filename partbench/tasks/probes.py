"""Classification probes on a frozen encoder: linear (class token -> Linear) and attentive
(one learnable query cross-attends over all final-layer tokens, BatchNorm without affine,
Linear). They train on cached features; that is exact because the study's probe
transforms (resize 256 + centre crop; resize) carry no random augmentation."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from partbench.datasets.base import Dataset
from partbench.encoders.base import Encoder
from partbench.features import Features, View
from partbench.metrics import bootstrap_ci, chance_top1
from partbench.tasks.base import Task, TaskResult, counts_by_class, percent


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
        scores = (tokens @ kq.T + kb) / math.sqrt(hd)  # (B, T, H)
        attn = scores.softmax(dim=1)
        pooled = torch.einsum("bth,btd->bhd", attn, tokens)  # (B, H, D)
        v = torch.einsum("bhd,hcd->bhc", pooled, self.v.weight.view(h, hd, d)) + self.v.bias.view(h, hd)
        return self.out(v.reshape(b, d))


def linear_head(dim: int, classes: int) -> nn.Module:
    head = nn.Linear(dim, classes)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head


def attentive_head(dim: int, classes: int, heads: int) -> nn.Module:
    return nn.Sequential(
        AttentivePooler(dim, heads), nn.BatchNorm1d(dim, affine=False), linear_head(dim, classes)
    )


def attention_heads(dim: int, wanted: int = 12) -> int:
    """The study's 12 heads where the width allows, else the largest divisor below 12."""
    return next(h for h in range(wanted, 0, -1) if dim % h == 0)


def _device_copy(x: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The features on the device, once, when they fit in half its free memory; else None,
    and batches are copied as they are drawn."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    if x.numel() * x.element_size() > free // 2:
        return None
    return x.to(device)


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
    report: str = "best",
    device: torch.device | str = "cpu",
) -> tuple[float, np.ndarray, list[float]]:
    """SGD (momentum 0.9, no weight decay), lr = base_lr * batch / 256, cosine decay per epoch.

    Trains on ``device``; features may be memory-mapped half-precision arrays on the host.
    Returns the reported top-1 (best over epochs, as the study, or the last), the per-item
    correctness at that epoch, and the top-1 of every epoch.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = make_head()
    head.to(device)
    gen = torch.Generator().manual_seed(seed)  # on the host: the same order on every device
    opt = torch.optim.SGD(head.parameters(), lr=base_lr * batch_size / 256, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    loss_fn = nn.CrossEntropyLoss()
    n = len(x_train)
    resident_train, resident_test = _device_copy(x_train, device), _device_copy(x_test, device)
    y_train_d, y_test_d = y_train.to(device), y_test.to(device)
    has_bn = any(isinstance(m, nn.BatchNorm1d) for m in head.modules())

    def rows(x: torch.Tensor, resident: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor:
        if resident is not None:
            return resident[idx.to(device)].float()
        return x[idx].to(device, non_blocking=True).float()

    curve: list[float] = []
    best_acc, best_correct = -1.0, np.zeros(len(y_test), bool)
    test_order = torch.arange(len(x_test))
    for _ in range(epochs):
        head.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i : i + batch_size]
            if len(idx) < 2 and has_bn:
                continue  # BatchNorm cannot normalise a single item
            loss = loss_fn(head(rows(x_train, resident_train, idx)), y_train_d[idx.to(device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        head.eval()
        with torch.no_grad():
            pred = torch.cat(
                [
                    head(rows(x_test, resident_test, test_order[i : i + 1024])).argmax(1)
                    for i in range(0, len(x_test), 1024)
                ]
            )
        correct = (pred == y_test_d).cpu().numpy()
        acc = float(correct.mean())
        curve.append(acc)
        if report == "last" or acc > best_acc:
            best_acc, best_correct = acc, correct
    return best_acc, best_correct, curve


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
        classes = len(names)
        x_tr, x_te = train[feat], test[feat]
        y_tr, y_te = torch.as_tensor(train.labels), torch.as_tensor(test.labels)
        dim = x_tr.shape[-1]
        details: dict[str, Any] = {"feature": feat}
        if self.kind == "attentive":
            heads = attention_heads(dim)
            details["heads"] = heads

            def make() -> nn.Module:
                return attentive_head(dim, classes, heads)
        else:

            def make() -> nn.Module:
                return linear_head(dim, classes)

        accs, correct, curves = [], [], []
        for r in range(repeats):
            acc, ok, curve = train_probe(
                make,
                x_tr,
                y_tr,
                x_te,
                y_te,
                epochs=options["epochs"],
                base_lr=options["lr"],
                batch_size=options["batch_size"],
                seed=seed + r,
                report=options["report"],
                device=device,
            )
            accs.append(acc)
            correct.append(ok)
            curves.append(curve)
        # The interval resamples test items; with repeats, each item's score is its mean
        # correctness over the repeats.
        per_item = np.mean(correct, axis=0)
        metrics = {"top1": percent(float(np.mean(accs)), bootstrap_ci(per_item, seed=seed))}
        if repeats > 1:
            details["top1_repeats"] = [100 * a for a in accs]
            details["top1_std"] = float(100 * np.std(accs, ddof=1))
        details["top1_per_epoch"] = [round(100 * a, 3) for a in curves[0]]
        details["train_items"] = len(y_tr)
        details["interval"] = "test items resampled"
        return TaskResult(
            metrics=metrics,
            n_items=len(y_te),
            items_per_class=counts_by_class(test.labels, names),
            details=details,
            items={"correct": per_item.astype(np.float64), "label": np.asarray(test.labels, dtype=np.int64)},
            chance={"top1": chance_top1(train.labels, test.labels)},
        )
