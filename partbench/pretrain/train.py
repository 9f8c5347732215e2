"""The loop every recipe shares: seeded data order and augmentations, AdamW with warm-up and
cosine decay, an optional cosine weight-decay ramp, the EMA teacher's momentum schedule, a
progress bar, and the weights plus a loss log written side by side."""

from __future__ import annotations

import importlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from partbench.pretrain.backbone import no_weight_decay
from partbench.pretrain.data import PretrainImages, load_pretrain_images

# method -> (module, class); imported on demand so that one recipe's bug cannot break another.
METHODS: dict[str, tuple[str, str]] = {
    "supervised": ("partbench.pretrain.supervised", "SupervisedRecipe"),
    "supervised-cnn": ("partbench.pretrain.supervised", "SupervisedCNNRecipe"),
    "mocov3": ("partbench.pretrain.mocov3", "MoCoV3Recipe"),
    "dino": ("partbench.pretrain.dino", "DINORecipe"),
    "mae": ("partbench.pretrain.mae", "MAERecipe"),
    "ibot": ("partbench.pretrain.ibot", "IBOTRecipe"),
}


@dataclass(frozen=True)
class Hyper:
    """A recipe's optimisation settings. Learning rates are higher than the methods' ImageNet
    values (about 1e-4 per 256 images) because these runs last a few hundred steps on a small
    model; the shape of each schedule is the method's own."""

    batch_size: int
    lr: float
    weight_decay: float
    weight_decay_end: float | None = None  # DINO / iBOT ramp weight decay up along a cosine
    warmup: float = 0.1  # fraction of the steps
    betas: tuple[float, float] = (0.9, 0.999)
    clip: float | None = None
    momentum: float | None = None  # EMA teacher momentum at step 0; cosine ramp to 1


class Recipe(nn.Module):
    """One pretraining method. Teachers are registered as submodules with gradients off."""

    method: str
    family: str
    head_kind: str | None = None  # what heads.head_from_state rebuilds from the shipped keys
    hyper: Hyper

    def __init__(self, seed: int, steps: int):
        super().__init__()
        self.seed, self.steps = seed, steps

    def loss(
        self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator, step: int
    ) -> torch.Tensor:
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(teacher, student) modules whose parameters the teacher tracks."""
        return []

    def after_backward(self, step: int) -> None:
        """Hook between backward and the optimiser step (DINO freezes its last layer early)."""

    def shipped(self) -> dict[str, torch.Tensor]:
        """Backbone keys exactly as ``build_mini_vit()`` has them, plus ``head.*``."""
        raise NotImplementedError

    def trainable(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    @torch.no_grad()
    def update_teachers(self, momentum: float) -> None:
        for teacher, student in self.ema_pairs():
            for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
                t.mul_(momentum).add_(s.detach(), alpha=1 - momentum)


def make_recipe(method: str, seed: int, steps: int) -> Recipe:
    if method not in METHODS:
        raise ValueError(f"unknown method '{method}'; choose from {sorted(METHODS)}")
    module, cls = METHODS[method]
    return getattr(importlib.import_module(module), cls)(seed=seed, steps=steps)


def cosine(step: int, total: int, start: float, end: float) -> float:
    t = min(max(step / max(total, 1), 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def learning_rate(step: int, steps: int, peak: float, warmup: float) -> float:
    n_warm = max(1, round(warmup * steps))
    if step < n_warm:
        return peak * (step + 1) / n_warm
    return cosine(step - n_warm, steps - n_warm, peak, peak * 1e-2)


@dataclass
class PretrainResult:
    method: str
    weights: Path
    log: Path
    losses: list[float]
    seconds: float  # the training loop only, without rendering the images
    steps: int
    seed: int
    batch_size: int
    extra: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean of the last 5% of steps: one step's loss is noisy."""
        tail = self.losses[-max(1, len(self.losses) // 20) :]
        return float(sum(tail) / len(tail))


def _batches(n: int, batch: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches over shuffled epochs; the last partial batch of an epoch is dropped so
    every step sees the same batch size (BatchNorm and InfoNCE depend on it)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch + 1, batch):
            yield perm[i : i + batch]


def _adamw(recipe: Recipe, hyper: Hyper, peak_lr: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; biases and norms (no_weight_decay) are never decayed,
    and only the ``decay`` group follows a weight-decay ramp."""
    decay, no_decay = [], []
    for name, p in recipe.trainable():
        (no_decay if no_weight_decay(name, p) else decay).append(p)
    return torch.optim.AdamW(
        [{"params": decay, "decay": True}, {"params": no_decay, "weight_decay": 0.0}],
        lr=peak_lr,
        betas=hyper.betas,
        weight_decay=hyper.weight_decay,
    )


def _schedule(opt: torch.optim.Optimizer, hyper: Hyper, step: int, steps: int, peak_lr: float) -> float:
    """Set this step's learning rate (and weight decay, where it ramps); returns the rate."""
    step_lr = learning_rate(step, steps, peak_lr, hyper.warmup)
    wd = hyper.weight_decay
    if hyper.weight_decay_end is not None:
        wd = cosine(step, steps, hyper.weight_decay, hyper.weight_decay_end)
    for group in opt.param_groups:
        group["lr"] = step_lr
        if group.get("decay"):
            group["weight_decay"] = wd
    return step_lr


def _train_step(
    method: str,
    recipe: Recipe,
    opt: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    gen: torch.Generator,
    step: int,
    steps: int,
) -> float:
    """One optimiser step on one batch, then the teachers' EMA update; returns the loss."""
    hyper = recipe.hyper
    loss = recipe.loss(images, labels, gen, step)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{method}: loss became {loss.item()} at step {step}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    recipe.after_backward(step)
    if hyper.clip is not None:
        nn.utils.clip_grad_norm_([p for _, p in recipe.trainable()], hyper.clip)
    opt.step()
    if hyper.momentum is not None:
        recipe.update_teachers(cosine(step, steps, hyper.momentum, 1.0))
    return float(loss.item())


def pretrain(
    method: str,
    *,
    steps: int,
    seed: int = 0,
    out_dir: Path | None = None,
    device: str = "cpu",
    batch_size: int | None = None,
    lr: float | None = None,
    progress: bool = True,
    images: int = 4096,
    data_seed: int = 0,
    threads: int | None = None,
    data: PretrainImages | None = None,
) -> PretrainResult:
    """Pretrain the mini ViT with ``method`` for ``steps`` optimiser steps.

    Writes ``mini-<method>.safetensors`` (backbone keys as ``build_mini_vit()`` has them,
    projection head under ``head.``) and ``mini-<method>.log.json`` (per-step loss, lr) to
    ``out_dir``. The run is a function of ``seed`` (initialisation, batch order, views,
    masks); bit-identical repeats need the same torch build, device and thread count.
    """
    if steps < 1:
        raise ValueError("steps must be at least 1")
    if threads is not None:
        torch.set_num_threads(threads)
    if out_dir is None:
        from partbench import paths

        out_dir = paths.home() / "pretrain"
    out_dir = Path(out_dir)
    if data is None:
        data = load_pretrain_images(images, data_seed=data_seed)

    # fork_rng keeps the caller's global RNG as it was; everything inside is seeded.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        recipe = make_recipe(method, seed, steps)
        hyper = recipe.hyper
        batch = batch_size or hyper.batch_size
        peak_lr = lr or hyper.lr
        if batch > len(data):
            raise ValueError(f"batch size {batch} exceeds the {len(data)} pretraining images")
        recipe.to(device).train()
        opt = _adamw(recipe, hyper, peak_lr)
        gen = torch.Generator().manual_seed(seed)
        order = _batches(len(data), batch, gen)
        losses: list[float] = []
        lrs: list[float] = []
        bar = _progress(progress, method, steps)
        start = time.perf_counter()
        with bar:
            task = bar.add_task(method, total=steps, loss=float("nan"))
            for step in range(steps):
                step_lr = _schedule(opt, hyper, step, steps, peak_lr)
                idx = next(order)
                labels = data.labels[idx].to(device)
                losses.append(_train_step(method, recipe, opt, data.images[idx], labels, gen, step, steps))
                lrs.append(step_lr)
                bar.update(task, advance=1, loss=losses[-1])
        seconds = time.perf_counter() - start
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in recipe.shipped().items()}

    weights, log = out_dir / f"mini-{method}.safetensors", out_dir / f"mini-{method}.log.json"
    result = PretrainResult(method, weights, log, losses, seconds, steps, seed, batch)
    _write_run(state, result, _log_record(result, recipe, peak_lr, len(data), data_seed, lrs))
    return result


def _write_run(state: dict[str, torch.Tensor], result: PretrainResult, record: dict) -> None:
    """The weights, then the log beside them."""
    result.weights.parent.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    # No metadata: safetensors writes it in hash order, which would change the sha256 between
    # identical runs; the manifest and the log carry what metadata would.
    save_file(state, str(result.weights))
    result.log.write_text(json.dumps(record, indent=1))


def _log_record(
    result: PretrainResult, recipe: Recipe, peak_lr: float, images: int, data_seed: int, lrs: list[float]
) -> dict:
    """What ``mini-<method>.log.json`` holds: the run's settings, where it ran, and its curves."""
    return {
        "method": result.method,
        "family": recipe.family,
        "seed": result.seed,
        "steps": result.steps,
        "batch_size": result.batch_size,
        "peak_lr": peak_lr,
        "images": images,
        "data_seed": data_seed,
        "hyper": {k: v for k, v in vars(recipe.hyper).items()},
        "seconds": round(result.seconds, 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "final_loss": result.final_loss,
        "loss": result.losses,
        "lr": lrs,
    }


def _progress(enabled: bool, method: str, steps: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
