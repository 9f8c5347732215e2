"""Segmentation at ADE20K size on a CPU: how the head's fit grows with images, and what the
study's resolution costs.

    python benchmarks/seg_scale.py scale --sizes 250 500 1000
    python benchmarks/seg_scale.py fit --sizes 250 500 1000
    python benchmarks/seg_scale.py resolution --train 8 --val 4

``scale``: an ADE20K-Part tree in the study's layout (benchmarks/study_scale.py builds it: 512
x 384 JPEGs, label maps of 209 part classes) at each training size, each run as its own
``partbench run --task part-seg`` process on the same encoder with a fixed number of L-BFGS
iterations (so that the work per iteration, not where the solver stops, is what grows). It
prints, per size, the head's fit-and-score time (the run's scoring seconds), that time per
training image, the extraction time, and the peak host memory of the process and its workers
(anonymous memory; the memory-mapped feature cache is page cache and printed apart).

``fit``: the head's fit alone, in this process, on random features of the same shapes:
seconds per L-BFGS iteration against images, and the process's peak resident memory.

``resolution``: one small tree, run at the default setting and at ``-o protocol=study`` (512 x
512 windows at stride 341) and, for a patch-8 encoder, at ``-o window=256`` (which gives the
32 x 32 grid a ViT-B/16 reads at 512): the feature cache's bytes per training and per test
image, the windows per test image, and the head's fit-and-score time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from study_scale import build_ade_part, partbench, stored_runs


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def _run(scratch: Path, tag: str, tree: Path, encoder: str, options: list[str], extra: list[str]) -> dict:
    home = scratch / f"home-{tag}"
    env = {**os.environ, "PARTBENCH_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("PARTBENCH_CACHE", None)
    db = f"sqlite:///{scratch / f'runs-{tag}.db'}"
    args = ["run", "-e", encoder, "-t", "part-seg", "--dataset", "ade20k-part", "--data-root", str(tree)]
    args += [x for o in options for x in ("-o", o)] + extra + ["--db", db]
    proc = partbench(args, env)
    (run,) = stored_runs(db, env)
    timing = run["timing"] or {}
    passes = timing.get("passes") or {}
    cache = home / "cache"
    return {
        "tag": tag,
        "options": options,
        "status": run["status"],
        "score": run["score"],
        "exit_code": proc["exit_code"],
        "wall_seconds": proc["wall"],
        "scoring_seconds": timing.get("scoring_seconds"),
        "extraction_seconds": sum(p["wall_seconds"] for p in passes.values()),
        "items_encoded": sum(p["images"] for p in passes.values()),
        "peak_host_gib": proc["host_gib"],
        "peak_mapped_cache_gib": proc["cache_gib"],
        "cache_bytes": _folder_bytes(cache),
        "iterations_run": (run.get("details") or {}).get("iterations_run"),
    }


def scale(args: argparse.Namespace, scratch: Path) -> list[dict]:
    rows = []
    for n in args.sizes:
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            tree = build_ade_part(scratch / f"ade-{n}", n, args.val, pool)
        options = [f"iterations={args.iterations}"]
        row = _run(scratch, f"scale-{n}", tree, args.encoder, options, ["--batch-size", str(args.batch_size)])
        row["train_images"] = n
        row["fit_seconds_per_train_image"] = (row["scoring_seconds"] or 0) / n
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| train images | fit + score s | per train image ms | extraction s | peak host GiB"
        " | mapped cache GiB |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['train_images']} | {r['scoring_seconds']:.1f} | "
            f"{1000 * r['fit_seconds_per_train_image']:.1f} | "
            f"{r['extraction_seconds']:.1f} | {r['peak_host_gib']:.2f} | {r['peak_mapped_cache_gib']:.2f} |"
        )
    if len(rows) >= 2:
        # A straight line through (images, seconds): the slope is the cost per image, the
        # intercept what every run pays once (imports, the whitening's spectrum, scoring).
        n = [r["train_images"] for r in rows]
        t = [r["scoring_seconds"] or 0.0 for r in rows]
        slope, intercept = (float(v) for v in np.polyfit(n, t, 1))
        worst = max(abs(slope * a + intercept - b) / b for a, b in zip(n, t, strict=True) if b)
        print(
            f"\nfit + score = {intercept:.1f} s + {1000 * slope:.1f} ms x images "
            f"(largest departure from the line: {worst:.0%}); peak host memory "
            f"{min(r['peak_host_gib'] for r in rows):.2f}-{max(r['peak_host_gib'] for r in rows):.2f} GiB"
        )
    return rows


def fit(args: argparse.Namespace, scratch: Path) -> list[dict]:
    """The head's fit alone, in this process, on features and label maps of an ADE20K-Part run's
    shapes (the mini encoder's 8 x 8 grid of 4 x 128 channels, loss maps of 32 x 32, 209
    classes; random, so the solver's path differs little between sizes): seconds per L-BFGS
    iteration against images, and the peak resident memory the fit added."""
    import resource

    import torch

    from partbench.tasks import segmentation
    from partbench.tasks.segmentation import train_seg_head

    # Full-batch evaluations are what grows with images; L-BFGS' line search spends a varying
    # number of them per iteration, so they are counted (one loss call per chunk).
    calls = {"n": 0}
    loss = segmentation.cross_entropy_sum

    def counted(*a, **k):
        calls["n"] += 1
        return loss(*a, **k)

    segmentation.cross_entropy_sum = counted
    rows = []
    for n in args.sizes:
        calls["n"] = 0
        rng = np.random.default_rng(0)
        x = torch.from_numpy(rng.standard_normal((n, 64, 512), dtype=np.float32)).half()
        masks = [rng.integers(0, 209, (32, 32)).astype(np.uint8) for _ in range(n)]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        result = train_seg_head(x, masks, (8, 8), 209, iterations=args.iterations, seed=0)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        chunk = segmentation.lbfgs_chunk_images(64 * 512, 32 * 32, 209, segmentation.LBFGS_CHUNK_BYTES)
        evaluations = calls["n"] / -(-n // chunk)
        row = {
            "evaluations": evaluations,
            "ms_per_evaluation_and_image": 1000 * seconds / max(1.0, evaluations) / n,
            "train_images": n,
            "fit_seconds": seconds,
            "iterations_run": result.iterations_run,
            "seconds_per_iteration": seconds / max(1, result.iterations_run),
            "peak_rss_gib": peak / 2**20,
            "rss_growth_mib": (peak - before) / 2**10,
            "load": os.getloadavg()[0],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| train images | fit s | iterations | s per iteration | ms per iteration and image"
        " | peak RSS GiB |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['train_images']} | {r['fit_seconds']:.1f} | {r['iterations_run']} "
            f"({r['evaluations']:.0f} evaluations, "
            f"{r['ms_per_evaluation_and_image']:.2f} ms each an image) | "
            f"{r['seconds_per_iteration']:.2f} | "
            f"{1000 * r['seconds_per_iteration'] / r['train_images']:.2f} | "
            f"{r['peak_rss_gib']:.2f} |"
        )
    return rows


def resolution(args: argparse.Namespace, scratch: Path) -> list[dict]:
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        tree = build_ade_part(scratch / "ade-res", args.train, args.val, pool)
    settings = [("default", []), ("study", ["protocol=study"])] + [
        (f"window={w}", [f"window={w}"]) for w in args.windows
    ]
    rows = []
    for tag, options in settings:
        row = _run(
            scratch, tag, tree, args.encoder, [f"iterations={args.iterations}", *options],
            ["--batch-size", str(args.batch_size)],
        )  # fmt: skip
        row["cache_bytes_per_image"] = row["cache_bytes"] / (args.train + args.val)
        row["items_per_image"] = row["items_encoded"] / (args.train + args.val)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(
        "\n| setting | encoder inputs per image | cache bytes per image | extraction s | fit + score s"
        " | peak host GiB |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['tag']} | {r['items_per_image']:.2f} | {r['cache_bytes_per_image'] / 2**20:.2f} MiB | "
            f"{r['extraction_seconds']:.1f} | {r['scoring_seconds']:.1f} | {r['peak_host_gib']:.2f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("scale")
    s.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    s.add_argument("--val", type=int, default=50)
    f = sub.add_parser("fit")
    f.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    r = sub.add_parser("resolution")
    r.add_argument("--train", type=int, default=8)
    r.add_argument("--val", type=int, default=4)
    r.add_argument("--windows", type=int, nargs="*", default=[256])
    for p in (s, f, r):
        p.add_argument("--encoder", default="mini-random")
        p.add_argument("--iterations", type=int, default=20, help="L-BFGS iterations (fixed work)")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--work-dir", type=Path)
        p.add_argument("--out", type=Path)
    args = parser.parse_args()
    scratch = args.work_dir or Path(tempfile.mkdtemp(prefix="partbench-seg-scale-"))
    t0 = time.perf_counter()
    rows = {"scale": scale, "fit": fit, "resolution": resolution}[args.mode](args, scratch)
    print(f"\n{time.perf_counter() - t0:.0f} s in all; load average {os.getloadavg()}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
