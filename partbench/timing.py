"""Honest timing of an encoder pass.

The first batch is the warm-up (kernels chosen, caches filled, a compiled graph built): its
output is kept, its time is reported apart. On a GPU every later forward is bracketed by CUDA
events and the device is synchronised once, at the end, so timing does not stall the
pipeline; on a CPU a monotonic clock brackets the (synchronous) forward. Two rates are
stored: forward-only images per second (the encoder's own speed) and end-to-end images per
second (the wall clock of the whole pass: decoding, transfers, writing included), and their
ratio, the share of the pass the device spent computing.
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch


def peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return rss / (2**20 if sys.platform == "darwin" else 2**10)


class PassTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.events: list[tuple[Any, Any]] = []
        self.cpu_seconds: list[float] = []
        self.images = 0  # timed images (warm-up excluded)
        self.total_images = 0
        self.warmup_seconds: float | None = None
        self._t0: float | None = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def forward(self, fn: Callable[[], Any], n_images: int) -> Any:
        self.total_images += n_images
        if self.warmup_seconds is None:
            t0 = time.perf_counter()
            out = fn()
            if self.cuda:
                torch.cuda.synchronize(self.device)
            self.warmup_seconds = time.perf_counter() - t0
            return out
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            self.events.append((start, end))
        else:
            t0 = time.perf_counter()
            out = fn()
            self.cpu_seconds.append(time.perf_counter() - t0)
        self.images += n_images
        return out

    def summary(self) -> dict[str, Any]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            batch_seconds = [s.elapsed_time(e) / 1000.0 for s, e in self.events]
        else:
            batch_seconds = self.cpu_seconds
        wall = time.perf_counter() - (self._t0 or time.perf_counter())
        forward = sum(batch_seconds)
        out: dict[str, Any] = {
            "clock": "cuda-events" if self.cuda else "perf_counter",
            "warmup_batches": 1 if self.warmup_seconds is not None else 0,
            "warmup_seconds": self.warmup_seconds,
            "batches": len(batch_seconds),
            "images": self.total_images,
            "forward_seconds": forward,
            "images_per_second": self.images / forward if forward > 0 else None,
            "median_batch_seconds": statistics.median(batch_seconds) if batch_seconds else None,
            "wall_seconds": wall,
            "end_to_end_images_per_second": self.total_images / wall if wall > 0 else None,
            # The timed forwards' share of the wall clock (the warm-up counts as busy too).
            "device_busy_share": (forward + (self.warmup_seconds or 0)) / wall if wall > 0 else None,
            "encoder_passes": 1,
        }
        if self.cuda:
            out["peak_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["gpu"] = torch.cuda.get_device_name(self.device)
        out["peak_rss_mb"] = peak_rss_mb()
        return out


def merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the timings of the passes one task consumed (cached ones count no pass)."""
    fresh = [s for s in summaries if s.get("encoder_passes")]
    if not fresh:
        return {"encoder_passes": 0, "cached": True, **_peaks(summaries)}
    if len(fresh) == 1 and len(summaries) == 1:
        return {**fresh[0], "passes": _per_pass(fresh)}
    images = sum(s["images"] for s in fresh)
    timed = sum((s["images_per_second"] or 0) * s["forward_seconds"] for s in fresh)
    forward = sum(s["forward_seconds"] for s in fresh)
    wall = sum(s["wall_seconds"] for s in fresh)
    merged = dict(fresh[0])
    merged.update(
        images=images,
        forward_seconds=forward,
        wall_seconds=wall,
        batches=sum(s["batches"] for s in fresh),
        warmup_seconds=sum(s.get("warmup_seconds") or 0 for s in fresh),
        images_per_second=timed / forward if forward > 0 else None,
        end_to_end_images_per_second=images / wall if wall > 0 else None,
        median_batch_seconds=statistics.median(s["median_batch_seconds"] or 0 for s in fresh),
        encoder_passes=len(fresh),
        passes=_per_pass(fresh),
        cached=len(fresh) < len(summaries),
        **_peaks(summaries),
    )
    for key in STALLS:
        merged[key] = sum(s.get(key) or 0 for s in fresh)
    busy = sum((s.get("device_busy_share") or 0) * s["wall_seconds"] for s in fresh)
    merged["device_busy_share"] = busy / wall if wall > 0 else None
    return merged


# Where a pass's wall clock went besides the forward (see extraction.files.Writer); summed over passes.
STALLS = (
    "loader_wait_seconds", "device_wait_seconds", "writer_wait_seconds", "device_to_host_seconds",
    "write_seconds", "written_mb",
)  # fmt: skip
PER_PASS = ("images", "wall_seconds", "forward_seconds", "images_per_second", "device_busy_share", *STALLS)


def _per_pass(fresh: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each pass's own figures, by name: runs that share a pass can then be summed without
    counting it twice."""
    return {str(s.get("pass")): {k: s.get(k) for k in PER_PASS} for s in fresh}


def _peaks(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for key in ("peak_memory_mb", "peak_rss_mb"):
        values = [s[key] for s in summaries if s.get(key) is not None]
        if values:
            out[key] = max(values)
    return out
