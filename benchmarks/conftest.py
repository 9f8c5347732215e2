"""Benchmarks run as plain tests (once each) in the test suite, and as timed benchmarks with

    pytest benchmarks --benchmark-enable

Each group pairs partbench's way with a baseline measured in the same run; pytest-benchmark's
table shows their ratio, and each candidate stores it as extra_info["speedup_vs_baseline"]."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest


@pytest.fixture
def baseline_seconds() -> Callable[[Callable[[], object], int], float]:
    def measure(fn: Callable[[], object], repeats: int = 3) -> float:
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
        return best

    return measure


def record_ratio(benchmark, baseline: float) -> None:
    """Store baseline / candidate, when timing is on (stats exist only then)."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None and stats.stats.min > 0:
        benchmark.extra_info["baseline_seconds"] = baseline
        benchmark.extra_info["speedup_vs_baseline"] = baseline / stats.stats.min


def full_size(config: pytest.Config) -> bool:
    """Benchmarks run at full size when timing is on (--benchmark-enable), scaled down when
    the test suite runs them once; PARTBENCH_BENCH_FULL=1 or 0 overrides."""
    env = os.environ.get("PARTBENCH_BENCH_FULL")
    if env is not None:
        return env == "1"
    return not (config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"))
