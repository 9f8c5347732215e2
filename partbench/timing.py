"""Honest forward-pass timing: warm-up outside the timed work, CUDA events on a GPU (the
work is asynchronous there), a monotonic clock on a CPU, and the peak memory beside it."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


class ForwardTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.batch_seconds: list[float] = []
        self.images = 0
        self.warmed = False
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def __call__(self, fn: Callable[[], Any], n_images: int) -> Any:
        if not self.warmed:  # first call: kernels selected, caches filled, nothing recorded
            fn()
            self.warmed = True
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            torch.cuda.synchronize(self.device)
            seconds = start.elapsed_time(end) / 1000.0
        else:
            t0 = time.perf_counter()
            out = fn()
            seconds = time.perf_counter() - t0
        self.batch_seconds.append(seconds)
        self.images += n_images
        return out

    def summary(self) -> dict[str, Any]:
        total = sum(self.batch_seconds)
        out: dict[str, Any] = {
            "clock": "cuda-events" if self.cuda else "perf_counter",
            "warmup_batches": 1,
            "batches": len(self.batch_seconds),
            "images": self.images,
            "forward_seconds": total,
            "images_per_second": self.images / total if total > 0 else None,
            "median_batch_seconds": statistics.median(self.batch_seconds) if self.batch_seconds else None,
        }
        if self.cuda:
            out["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["gpu"] = torch.cuda.get_device_name(self.device)
        else:
            import resource

            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            # Linux reports kilobytes, macOS bytes; this is the whole process's peak.
            out["peak_rss_mb"] = rss / (2**20 if sys.platform == "darwin" else 2**10)
        return out


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the timings of several extractions that one task consumed."""
    if len(summaries) == 1:
        return summaries[0]
    images = sum(s["images"] for s in summaries)
    seconds = sum(s["forward_seconds"] for s in summaries)
    merged = dict(summaries[0])
    merged.update(
        images=images,
        forward_seconds=seconds,
        batches=sum(s["batches"] for s in summaries),
        images_per_second=images / seconds if seconds > 0 else None,
        median_batch_seconds=statistics.median(s["median_batch_seconds"] or 0 for s in summaries),
    )
    for key in ("peak_memory_mb", "peak_rss_mb"):
        if key in merged:
            merged[key] = max(s.get(key) or 0 for s in summaries)
    return merged
