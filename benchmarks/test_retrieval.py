"""Retrieval AP at scale: speed against the implementation it replaced, and peak memory.

    pytest benchmarks/test_retrieval.py --benchmark-enable    # full size (a few minutes, 2 cores)
    pytest benchmarks/test_retrieval.py                       # scaled down, each run once (CI)

Full size is N = 20,000 x 768 for speed and 100,000 x 768 for memory; it is also chosen by
PARTBENCH_BENCH_FULL=1 (and PARTBENCH_BENCH_FULL=0 keeps the small sizes with timing on).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import numpy as np
import pytest
import torch
from conftest import full_size, record_ratio

from partbench.metrics.scores import retrieval_ap

DIM = 768
CLASSES = 15  # as many parts as CUB-200-2011 annotates


def old_retrieval_ap(features: Any, labels: Any, include_self: bool = True, chunk: int = 512) -> np.ndarray:
    """partbench's retrieval_ap before it was rewritten (the baseline, kept here only): a stable
    argsort of every chunk of float64 similarities, two gathers, cumulative sums."""
    feats = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    feats = torch.nn.functional.normalize(feats, dim=1)
    lab = torch.as_tensor(np.asarray(labels))
    n = feats.shape[0]
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        q = slice(start, min(start + chunk, n))
        sims = torch.round(feats[q] @ feats.T, decimals=9)  # (c, n)
        rel = (lab[q, None] == lab[None, :]).to(torch.float64)
        if not include_self:
            rows = torch.arange(sims.shape[0])
            sims[rows, rows + start] = -torch.inf
            rel[rows, rows + start] = 0.0
        order = torch.argsort(sims, dim=1, descending=True, stable=True)
        s_sorted = torch.gather(sims, 1, order)
        r_sorted = torch.gather(rel, 1, order)
        tp = torch.cumsum(r_sorted, dim=1)
        last = torch.ones_like(s_sorted, dtype=torch.bool)
        last[:, :-1] = s_sorted[:, 1:] != s_sorted[:, :-1]
        tp_at_ends = torch.where(last, tp, torch.zeros_like(tp))
        prev = torch.cummax(tp_at_ends, dim=1).values
        prev = torch.cat([torch.zeros_like(prev[:, :1]), prev[:, :-1]], dim=1)
        rank = torch.arange(1, n + 1, dtype=torch.float64)
        gain = torch.where(last, (tp - prev) * tp / rank, torch.zeros_like(tp))
        npos = r_sorted.sum(dim=1)
        ap = gain.sum(dim=1) / npos.clamp(min=1)
        ap[npos == 0] = torch.nan
        out[q] = ap.numpy()
    return out


def _features(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    # Float32 features, as the cache stores pooled vectors; a class signal so APs spread out,
    # and a few duplicated rows so that exact ties occur.
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n)
    feats = rng.standard_normal((n, DIM), dtype=np.float32)
    feats[np.arange(n), labels] += 6.0
    feats[1 : n // 100 + 1] = feats[0]
    labels[1 : n // 100 + 1 : 2] = labels[0]
    return feats, labels


@pytest.fixture(scope="module")
def gallery(request) -> tuple[np.ndarray, np.ndarray]:
    return _features(20_000 if full_size(request.config) else 2_000)


_BASELINE: dict[str, Any] = {}


def _run_old(feats: np.ndarray, labels: np.ndarray) -> np.ndarray:
    t0 = time.perf_counter()
    ap = old_retrieval_ap(feats, labels)
    _BASELINE.update(seconds=time.perf_counter() - t0, ap=ap)
    return ap


@pytest.mark.benchmark(group="retrieval AP, N x 768")
def test_retrieval_ap_baseline_argsort(benchmark, gallery):
    benchmark.pedantic(_run_old, args=gallery, rounds=1, iterations=1)


@pytest.mark.benchmark(group="retrieval AP, N x 768")
def test_retrieval_ap_sorted_values_searchsorted(benchmark, gallery):
    if "ap" not in _BASELINE or len(_BASELINE["ap"]) != len(gallery[1]):
        _run_old(*gallery)  # the baseline, measured in this run when its own test did not run
    ours = benchmark.pedantic(retrieval_ap, args=gallery, rounds=1, iterations=1)
    np.testing.assert_allclose(ours, _BASELINE["ap"], rtol=0, atol=1e-9)
    record_ratio(benchmark, _BASELINE["seconds"])
    if "speedup_vs_baseline" in benchmark.extra_info:
        print(
            f"\nretrieval AP, N = {len(ours)}: baseline {_BASELINE['seconds']:.1f} s, "
            f"ours {benchmark.stats.stats.min:.1f} s, {benchmark.extra_info['speedup_vs_baseline']:.2f}x"
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.benchmark(group="retrieval AP on CUDA, N x 768")
@pytest.mark.parametrize("size", ["speed", "memory"])
def test_retrieval_ap_cuda(benchmark, request, gallery, size):
    """On the GPU: time and peak GPU memory, and the same APs as on the CPU (the speed size)."""
    full = full_size(request.config)
    feats, labels = gallery if size == "speed" else _features(100_000 if full else 10_000)
    retrieval_ap(feats[:500], labels[:500], device="cuda")  # CUDA context and kernels loaded
    torch.cuda.reset_peak_memory_stats()
    ours = benchmark.pedantic(retrieval_ap, args=(feats, labels), kwargs={"device": "cuda"}, rounds=1)
    peak = torch.cuda.max_memory_allocated()
    benchmark.extra_info.update(n=len(labels), peak_cuda_gib=peak / 2**30, card=torch.cuda.get_device_name())
    print(f"\nretrieval AP on {torch.cuda.get_device_name()}, N = {len(labels)}: peak {peak / 2**30:.2f} GiB")
    if size == "speed":
        np.testing.assert_allclose(ours, retrieval_ap(feats, labels), rtol=0, atol=1e-9)


# Runs in a fresh interpreter so that the peak RSS is this computation's alone. The loop over
# query chunks stops after `chunks` of them: every chunk allocates the same work arrays, so the
# peak is reached in the first; all 100,000 queries would take a quarter of an hour on 2 cores.
_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import torch
    sys.path.insert(0, sys.argv[4])
    from test_retrieval import _features
    import partbench.metrics.scores as m

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))

    n, chunks = int(sys.argv[1]), int(sys.argv[2])
    feats, labels = _features(n)
    before = status("VmRSS")  # the interpreter, torch and the features
    try:  # start the peak (VmHWM) afresh, so that it is the retrieval's
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    calls = [0]

    class Enough(Exception):
        pass

    similarities = m._Gallery.similarities
    def counted(self, rows):
        if calls[0] == chunks:
            raise Enough
        calls[0] += 1
        calls.append(len(rows))
        return similarities(self, rows)
    m._Gallery.similarities = counted
    t0 = time.perf_counter()
    try:
        m.retrieval_ap(feats, labels, include_self=sys.argv[3] == "1")
    except Enough:
        pass
    peak = status("VmHWM")
    print(json.dumps({"peak": peak, "before": before, "features": feats.nbytes,
                      "chunk": calls[1], "chunks": calls[0], "seconds": time.perf_counter() - t0}))
    """
)


@pytest.mark.benchmark(group="retrieval peak memory, N x 768")
@pytest.mark.parametrize("include_self", [True, False])
def test_retrieval_peak_memory(benchmark, request, include_self):
    full = full_size(request.config)
    n, chunks = (100_000, 3) if full else (10_000, 1)
    here = os.path.dirname(os.path.abspath(__file__))

    def run() -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY_SCRIPT, str(n), str(chunks), str(int(include_self)), here],
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    gib = 2**30
    benchmark.extra_info.update(
        n=n,
        peak_rss_gib=result["peak"] / gib,
        features_gib=result["features"] / gib,
        above_inputs_gib=(result["peak"] - result["before"]) / gib,
        queries_per_chunk=result["chunk"],
    )
    print(
        f"\nretrieval on {n} x {DIM}: peak RSS {result['peak'] / gib:.2f} GiB (features "
        f"{result['features'] / gib:.2f} GiB; the process held {result['before'] / gib:.2f} GiB before), "
        f"{result['chunk']} queries per chunk, {result['seconds'] / result['chunks']:.1f} s per chunk"
    )
    assert result["chunks"] >= 1
    assert result["peak"] < 2 * 10**9
