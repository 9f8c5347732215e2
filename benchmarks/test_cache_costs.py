"""What the feature cache's checks and dataset content fingerprints cost (issue 31).

- verification on a warm run: the same warm run with every read checked (record, size,
  sampled block digests, finite values) and with the content checks off, in one process;
- checking one large map array: every block (``partbench cache verify``) against the sample a
  read checks, which is a fixed 64 MiB per array whatever its size;
- float16 maps that overflow: bfloat16, float16 with a per-item scale and a float32 fallback,
  by bytes, time and error;
- content fingerprints on a CUB-size tree (11,788 image files): the size-only listing they
  replace, a cold start (every file hashed) and a warm one (stat index only).

Figures are printed as one JSON line each (run with -s)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from conftest import full_size

from partbench import cache as cache_mod


def _warm_run(limit: int | None, cold: bool = False) -> float:
    from partbench.plugins import registry
    from partbench.runner import RunOptions, run
    from partbench.store import Store

    store = Store("sqlite://")
    opts = RunOptions(limit=limit, workers=0, options=("epochs=1",), force=True)
    t0 = time.perf_counter()
    outcomes = run(
        registry(),
        store,
        ["mini-random"],
        ["part-retrieval", "part-linear", "part-seg"],
        opts,
        say=lambda _: None,
    )
    seconds = time.perf_counter() - t0
    assert all(o.status == "done" and (cold or o.cached) for o in outcomes), outcomes
    return seconds


def test_verification_cost_on_a_warm_run(request, monkeypatch):
    limit = None if full_size(request.config) else 200
    torch.set_num_threads(1)
    _warm_run(limit, cold=True)  # fills the cache
    real = cache_mod.sample_blocks
    checked, unchecked = [], []
    for _ in range(3):  # interleaved, best of three: the machine is shared
        monkeypatch.setattr(cache_mod, "sample_blocks", real)
        checked.append(_warm_run(limit))
        monkeypatch.setattr(cache_mod, "sample_blocks", lambda n, count=0: [])  # content unread
        unchecked.append(_warm_run(limit))
    root = cache_mod.cache_root()
    cached = sum(e.size_bytes() for e in cache_mod.FeatureCache(root).entries())
    figures = {
        "what": "warm run, mini-random, part-retrieval + part-linear + part-seg on SynParts",
        "limit": limit,
        "cache_mb": round(cached / 2**20, 1),
        "checked_seconds": round(min(checked), 3),
        "unchecked_seconds": round(min(unchecked), 3),
        "ratio": round(min(checked) / min(unchecked), 4),
    }
    print(json.dumps(figures))


def test_checking_one_large_map_array_full_and_sampled(tmp_path, monkeypatch):
    rows = 1024  # 1024 x 197 x 768 float16 = 296 MiB
    rng = np.random.default_rng(0)
    block = rng.normal(size=(64, 197, 768)).astype(np.float16)

    def write(folder):
        w = cache_mod.ArrayWriter(folder, "tokens")
        t0 = time.perf_counter()
        for _ in range(rows // 64):
            w.append(block)
        written = w.close()
        return written, time.perf_counter() - t0

    with monkeypatch.context() as m:
        m.setattr(cache_mod._Blocks, "update", lambda self, data: None)
        plain, no_digest_seconds = write(tmp_path / "plain")
        plain.path.unlink()
    entry = cache_mod.Entry(tmp_path / "e")
    written, write_seconds = write(entry.folder)
    files = {"tokens": written}
    entry.commit(files, {})
    nbytes = rows * 197 * 768 * 2
    t0 = time.perf_counter()
    entry.check(full=True)
    full = time.perf_counter() - t0
    entry._checked = None
    t0 = time.perf_counter()
    entry.check(full=False)
    sampled = time.perf_counter() - t0
    figures = {
        "array_mb": round(nbytes / 2**20),
        "write_with_digest_seconds": round(write_seconds, 3),
        "write_without_digest_seconds": round(no_digest_seconds, 3),
        "full_check_seconds": round(full, 3),
        "full_check_mb_per_s": round(nbytes / 2**20 / full),
        "sampled_check_seconds": round(sampled, 3),
        "sampled_mb": cache_mod.SAMPLE_BLOCKS * cache_mod.BLOCK // 2**20,
    }
    print(json.dumps(figures))


def test_float16_map_formats():
    from partbench.extraction import fit_float16

    torch.manual_seed(0)
    n, tokens, width = 64, 197, 768
    maps = torch.randn(n, tokens, width)
    # High-norm tokens as in large ViTs: a few channels of a few tokens far beyond float16.
    maps[::4, 5, :8] = 2e5
    over = (maps.abs().flatten(1).amax(1) > 65504).numpy()
    results = {}

    def relative(got: torch.Tensor) -> tuple[float, float]:
        err = ((got.float() - maps).norm(dim=(1, 2)) / maps.norm(dim=(1, 2))).numpy()
        return float(err[~over].max()), float(err[over].max())

    t0 = time.perf_counter()
    bf = maps.to(torch.bfloat16)
    results["bfloat16"] = (time.perf_counter() - t0, 2, *relative(bf))
    t0 = time.perf_counter()
    fitted, scale = fit_float16(maps)
    half = fitted.to(torch.float16)
    seconds = time.perf_counter() - t0
    restored = half.float() * scale.view(-1, 1, 1)
    results["float16+scale"] = (seconds, 2 + 4 / (tokens * width), *relative(restored))
    t0 = time.perf_counter()
    wide = maps.clone()  # an array with any overflowing item kept whole in float32
    results["float32 fallback"] = (time.perf_counter() - t0, 4, *relative(wide))
    plain = maps.to(torch.float16)
    fit_rows = torch.from_numpy(~over)
    assert torch.equal(half[fit_rows], plain[fit_rows])  # items that fit: float16's own bytes
    for name, (secs, per_value, fit_err, over_err) in results.items():
        print(
            json.dumps(
                {
                    "format": name,
                    "bytes_per_value": round(per_value, 5),
                    "convert_seconds": round(secs, 4),
                    "worst_relative_error_fitting_items": fit_err,
                    "worst_relative_error_overflowing_items": over_err,
                }
            )
        )


@pytest.mark.parametrize("files", [11_788])
def test_content_fingerprint_of_a_cub_size_tree(tmp_path, monkeypatch, files):
    import hashlib
    import os

    from partbench.datasets import fingerprints

    monkeypatch.setenv("PARTBENCH_HOME", str(tmp_path / "home"))
    root = tmp_path / "CUB_200_2011"
    rng = np.random.default_rng(0)
    payload = rng.integers(0, 256, 4096 + 200, dtype=np.uint8).tobytes()
    for k in range(files):
        folder = root / "images" / f"{k % 200:03d}.Class"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"Bird_{k:05d}.jpg").write_bytes(payload[k % 200 : k % 200 + 4096])
    (root / "images.txt").write_text("".join(f"{k} x\n" for k in range(files)))

    def size_listing() -> str:  # the fingerprint this replaces: names and sizes only
        digest = hashlib.sha256()
        entries = []
        for dirpath, dirnames, names in os.walk(root / "images"):
            dirnames.sort()
            entries += [f"{dirpath}/{n}\t{os.stat(os.path.join(dirpath, n)).st_size}" for n in names]
        digest.update("\n".join(sorted(entries)).encode())
        return digest.hexdigest()

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    listing = min(timed(size_listing) for _ in range(3))

    def content() -> str:
        return fingerprints.fingerprint(root, [root / "images.txt"], [root / "images"], "cub200")

    cold = timed(content)
    first = content()
    warm = min(timed(content) for _ in range(3))
    index = fingerprints.StatIndex(root)
    print(
        json.dumps(
            {
                "files": files,
                "size_listing_seconds": round(listing, 3),
                "content_cold_seconds": round(cold, 3),
                "content_warm_seconds": round(warm, 3),
                "index_bytes": index.path.stat().st_size,
            }
        )
    )
    assert content() == first
